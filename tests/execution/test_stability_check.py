"""The client's stability check before it pays (``Client.submit(check_stability=True)``, on by
default in ``mesh job submit``): a tolerance no honest worker can meet is refused, a program
whose audits would be void is warned about, a stable one goes through. The program runs in the
real job runner (our setup, the verifiers' alternate setup, a one-ulp change of the inputs)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from meshcompute.client import Client, UnstableProgramWarning, check_stability_of
from meshcompute.core.audit_draw import NEVER, VerifierSeat
from meshcompute.core.spec import sha256_hex
from meshcompute.errors import BadInput
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.mesh.models import build_model, example_inputs


class FracScaled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.frac(x * 65536.0)


class FakeMarket:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.specs: list[object] = []

    def put_blob(self, data: bytes) -> str:
        self.blobs.append(bytes(data))
        return sha256_hex(data)

    def put_blobs(self, items: list[bytes]) -> list[str]:
        return [self.put_blob(d) for d in items]

    def put_specs(self, specs: list[object]) -> None:
        self.specs.extend(specs)

    def info(self) -> object:
        return SimpleNamespace(extra={"min_job_reward_wei": str(10**15)})


def offline_client() -> Client:
    """A Client whose market and chain are stand-ins: submit runs up to posting."""
    client = Client.__new__(Client)
    client.market = FakeMarket()  # type: ignore[assignment]
    client.actor = SimpleNamespace(  # type: ignore[assignment]
        balance_of=lambda _address: 10**30, registry_terms=lambda: (10**21, 0),
        verifier_seats=lambda: [VerifierSeat("0x" + a * 20, 1_000, 0, NEVER) for a in ("22", "33")])
    client.account = SimpleNamespace(address="0x" + "11" * 20)  # type: ignore[assignment]
    client._post = lambda submission, specs: list(range(1, len(specs) + 1))  # type: ignore
    return client


@pytest.fixture(scope="module")
def mlp() -> tuple[bytes, tuple[torch.Tensor, ...]]:
    inputs = example_inputs("mlp", 8, 3)
    return export_program(build_model("mlp", 2), inputs), inputs


def test_exact_on_float_outputs_is_refused_before_anything_is_uploaded(mlp) -> None:
    program, inputs = mlp
    client = offline_client()
    with pytest.raises(BadInput, match="'exact' on floating outputs"):
        client.submit(program, inputs, shards=2, tolerance="exact", check_stability=True)
    assert client.market.blobs == []  # type: ignore[attr-defined]


def test_an_unstable_program_is_warned_about_and_still_posted() -> None:
    x = (torch.randn(8, 16, generator=torch.Generator().manual_seed(2)),)
    program = export_program(FracScaled(), x)
    client = offline_client()
    with pytest.warns(UnstableProgramWarning, match="unstable under its tolerance") as caught:
        submission = client.submit(program, x, tolerance="allclose", check_stability=True)
    assert "one-ulp change of the inputs" in str(caught[0].message)
    assert submission.job_ids == [1]
    assert client.market.blobs[0] == program  # type: ignore[attr-defined]


def test_a_stable_program_passes_quietly_and_the_report_says_how_much_margin(mlp) -> None:
    program, inputs = mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnstableProgramWarning)
        report = check_stability_of(program, save_tensors(list(inputs)),
                                    {"kind": "allclose", "rtol": 1e-4, "atol": 0.0})
    assert report.stable and report.refused is None, report.reason
    assert report.perturbed_used is not None and report.perturbed_used < 0.25
    assert report.alternate_used is not None and report.alternate_used < 0.25
    doc = report.to_json()
    assert doc["effective"]["raised"] is True  # atol 0 is raised to the floor, rtol kept
    assert doc["effective"]["outputs"][0]["rtol"] == 1e-4


def test_without_the_check_nothing_runs_before_uploading(mlp, monkeypatch) -> None:
    from meshcompute.execution import stability

    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the stability probe ran")

    monkeypatch.setattr(stability, "probe_stability", boom)
    program, inputs = mlp
    submission = offline_client().submit(program, inputs, tolerance="exact")
    assert submission.job_ids == [1]


def test_mesh_job_submit_checks_by_default_and_can_skip_it(tmp_path: Path, monkeypatch) -> None:
    import meshcompute.mesh.cli.job as job_cli

    seen: list[bool] = []

    class Recorder:
        def submit(self, *_args: object, **kwargs: object) -> object:
            seen.append(bool(kwargs["check_stability"]))
            return SimpleNamespace(name="7", job_ids=[7], group=None)

    monkeypatch.setattr(job_cli, "_client", Recorder)
    monkeypatch.setattr(job_cli, "save_submission", lambda _s: tmp_path / "7.json")
    program, inputs = tmp_path / "p.pt2", tmp_path / "in.safetensors"
    program.write_bytes(b"p")
    inputs.write_bytes(b"i")
    base = ["submit", str(program), "--inputs", str(inputs), "--no-wait", "--json"]
    for extra, expected in (([], True), (["--no-stability-check"], False),
                            (["--stability-check"], True)):
        result = CliRunner().invoke(job_cli.app, [*base, *extra])
        assert result.exit_code == 0, result.output
        assert seen[-1] is expected
