"""``Client.submit`` (and ``mesh job submit``, which calls it) checks a job as the workers would
before it uploads anything or escrows a wei: a job every worker refuses is a BadInput naming the
problem while the market and the chain are untouched; an ordinary ``torch.export.save`` archive
is posted with its pickled example inputs emptied."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from meshcompute.client import Client
from meshcompute.core.audit_draw import NEVER, VerifierSeat
from meshcompute.core.spec import sha256_hex
from meshcompute.errors import BadInput
from meshcompute.execution.archive import example_inputs_member, validate_program
from meshcompute.execution.programs import save_tensors


class Untouchable:
    """A market, chain or actor that fails the test when anything is asked of it."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{self._what}.{name} was called before the checks refused the job")


class RecordingMarket:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.specs: list[Any] = []

    def put_blob(self, data: bytes) -> str:
        self.blobs.append(bytes(data))
        return sha256_hex(data)

    def put_blobs(self, items: list[bytes]) -> list[str]:
        return [self.put_blob(d) for d in items]

    def put_specs(self, specs: list[Any]) -> None:
        self.specs.extend(specs)

    def info(self) -> Any:
        return SimpleNamespace(extra={"min_job_reward_wei": str(self.min_reward)})

    min_reward = 10**15


def untouchable_client() -> Client:
    client = Client.__new__(Client)
    client.market = Untouchable("market")  # type: ignore[assignment]
    client.actor = Untouchable("chain actor")  # type: ignore[assignment]
    client.connection = Untouchable("chain connection")  # type: ignore[assignment]
    client.account = SimpleNamespace(address="0x" + "11" * 20)  # type: ignore[assignment]
    return client


def offline_client() -> Client:
    client = untouchable_client()
    client.market = RecordingMarket()  # type: ignore[assignment]
    client.actor = SimpleNamespace(  # type: ignore[assignment]
        balance_of=lambda _address: 10**30, registry_terms=lambda: (10**21, 0),
        verifier_seats=lambda: [VerifierSeat("0x" + a * 20, 1_000, 0, NEVER) for a in ("22", "33")])
    client._post = lambda submission, specs: list(range(1, len(specs) + 1))  # type: ignore
    return client


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def saved(dynamic: bool = True, model: nn.Module | None = None) -> bytes:
    """torch.export.export + torch.export.save, as a user would (example inputs pickled)."""
    shapes = ({0: torch.export.Dim("batch", max=1 << 20)},) if dynamic else None
    program = torch.export.export(model or mlp(), (torch.randn(4, 8),), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ordinary() -> bytes:
    return saved()


def test_ordinary_archive_is_stripped_and_posted(ordinary: bytes, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(ordinary)
    client = offline_client()
    with caplog.at_level(logging.WARNING, logger="meshcompute.client"):
        submission = client.submit(path, (torch.randn(10, 8),), shards=3)
    program = client.market.blobs[0]  # type: ignore[attr-defined]
    assert program != ordinary and example_inputs_member(program) is None
    validate_program(program)
    assert submission.program == sha256_hex(program)
    assert submission.job_ids == [1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "meshcompute.client"]
    assert len(lines) == 1 and "pickled example inputs" in lines[0] and str(path) in lines[0]


def test_a_program_workers_accept_is_posted_as_is(ordinary: bytes) -> None:
    from meshcompute.execution.programs import export_program

    program = export_program(mlp(), (torch.randn(4, 8),))
    client = offline_client()
    client.submit(program, (torch.randn(6, 8),), shards=2)
    assert client.market.blobs[0] == program  # type: ignore[attr-defined]


def test_a_shard_no_verifier_seat_covers_is_refused_before_anything_is_paid() -> None:
    """The registry assigns a job only to seats whose deposit covers its reward plus
    collateral: a shard beyond every seat would be void when drawn, so it is not posted."""
    client = offline_client()
    client.actor.verifier_seats = lambda: [  # type: ignore[attr-defined]
        VerifierSeat("0x" + "22" * 20, 2, 0, NEVER),  # covers 2 * 10**21 wei = 2,000 MESH
        VerifierSeat("0x" + "44" * 20, 3, 0, NEVER),
        VerifierSeat("0x" + "11" * 20, 9, 0, NEVER),  # the client's own: not counted
        VerifierSeat("0x" + "33" * 20, 9, 0, 5)]  # has left: covers nothing new
    with pytest.raises(BadInput, match="fewer than two verifier seats cover a shard of 3000 MESH"):
        client.submit(mlp(), (torch.randn(6, 8),), shards=1, pay="1000")  # + 2,000 collateral
    assert client.market.blobs == []  # type: ignore[attr-defined]
    assert client.submit(mlp(), (torch.randn(6, 8),), shards=2, pay="1000").job_ids == [1, 2]


def test_a_module_is_exported_and_checked(ordinary: bytes) -> None:
    client = offline_client()
    assert client.submit(mlp(), (torch.randn(6, 8),), shards=2).job_ids == [1, 2]
    with pytest.raises(BadInput, match="nothing was uploaded or paid"):
        untouchable_client().submit(mlp(), (torch.randn(6, 8),), memory_limit_mb=1)


def test_disallowed_operator_is_refused_before_any_market_or_chain_call(ordinary: bytes) -> None:
    from tests.execution import crafting

    def swap(model: dict) -> None:
        crafting.nodes(model)[0]["target"] = "torch.ops.aten.from_file.default"

    bad = crafting.edit_model(ordinary, swap)
    with pytest.raises(BadInput, match="aten::from_file is not on the allowlist.*nothing was "
                                       "uploaded or paid"):
        untouchable_client().submit(bad, (torch.randn(4, 8),))


@pytest.mark.parametrize(("inputs", "reason"), [
    ((torch.randn(4, 8), torch.randn(4, 8)), "program takes 1 inputs, job gives 2"),
    ((torch.randn(4, 8, dtype=torch.float64),), r"input args.0: expected float32.*got float64"),
    ((torch.randn(4, 5),), r"input args.0: expected float32\[.*, 8\], got float32\[2, 5\]"),
])
def test_wrong_inputs_are_refused_before_any_market_or_chain_call(
        ordinary: bytes, inputs: tuple[torch.Tensor, ...], reason: str) -> None:
    with pytest.raises(BadInput, match=f"{reason}.*nothing was uploaded or paid"):
        untouchable_client().submit(ordinary, inputs, shards=2)


def test_inputs_given_as_a_file_are_checked_too(ordinary: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(save_tensors([torch.randn(4, 3)]))
    with pytest.raises(BadInput, match=r"input args.0: expected float32\[.*, 8\]"):
        untouchable_client().submit(ordinary, path)


def test_a_fixed_batch_refuses_the_shard_that_does_not_fit() -> None:
    static = saved(dynamic=False)
    offline_client().submit(static, (torch.randn(4, 8),))  # the exported batch: fine
    with pytest.raises(BadInput, match=r"\(shard 2\): input args.0: expected float32\[4, 8\], "
                                       r"got float32\[5, 8\].*fixed at 4.*nothing was uploaded"):
        untouchable_client().submit(static, (torch.randn(13, 8),), shards=3)  # 4, 4, 5
    with pytest.raises(BadInput, match=r"\(shard 0\): .*got float32\[3, 8\]"):
        untouchable_client().submit(static, (torch.randn(6, 8),), shards=2)


def test_limits_are_checked_before_paying(ordinary: bytes) -> None:
    x = (torch.randn(4, 8),)
    with pytest.raises(BadInput, match="time_limit_s.*nothing was uploaded or paid"):
        untouchable_client().submit(ordinary, x, time_limit_s=10**6)
    with pytest.raises(BadInput, match="device"):
        untouchable_client().submit(ordinary, x, device="tpu")
    wide = nn.Linear(8, 1 << 20)  # 4 MiB of output per row
    with pytest.raises(BadInput, match="output is .* over the job's limit.*more shards"):
        untouchable_client().submit(saved(model=wide), (torch.randn(20, 8),))


def test_mesh_job_submit_refuses_before_paying(ordinary: bytes, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import meshcompute.mesh.cli.job as job_cli

    monkeypatch.setattr(job_cli, "_client", untouchable_client)
    program, inputs = tmp_path / "model.pt2", tmp_path / "x.safetensors"
    program.write_bytes(ordinary)
    inputs.write_bytes(save_tensors([torch.randn(4, 7)]))
    result = CliRunner().invoke(job_cli.app, ["submit", str(program), "--inputs", str(inputs),
                                              "--no-wait", "--no-stability-check"])
    assert result.exit_code != 0
    assert isinstance(result.exception, BadInput), result.output
    assert "input args.0" in str(result.exception)
    assert "nothing was uploaded or paid" in str(result.exception)


def test_a_reward_under_the_markets_floor_is_refused_before_anything_is_paid() -> None:
    client = offline_client()
    client.market.min_reward = 10**18  # type: ignore[attr-defined]
    with pytest.raises(BadInput, match="offers no worker a job paying under 1 MESH per shard"):
        client.submit(mlp(), (torch.randn(4, 8),), shards=2, pay="1")
    assert client.market.blobs == []  # type: ignore[attr-defined]


def _training_data(rows: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(rows, 8, generator=gen), torch.randint(0, 3, (rows,), generator=gen)]


TRAIN_PLAN = {"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 4, "batch_size": 4, "seed": 0,
              "checkpoint_every": 2}


def test_a_training_job_that_cannot_run_is_refused_before_any_market_or_chain_call() -> None:
    from meshcompute.mesh.models import MLPClassifier

    torch.manual_seed(0)
    small = MLPClassifier(d_in=8, d_hidden=16, d_out=3, depth=2)
    with pytest.raises(BadInput, match="not on the allowlist"):
        untouchable_client().submit_training(
            small, _training_data(), {**TRAIN_PLAN, "optimizer": {"name": "lion", "lr": 1}})
    nan = _training_data()
    nan[0][:] = float("nan")
    with pytest.raises(BadInput, match="loss of the first step is not finite"):
        untouchable_client().submit_training(small, nan, TRAIN_PLAN)
    # a state of ~6.3 MB (parameters, momentum-less SGD) cannot train in a 4 MB job
    wide = MLPClassifier(d_in=8, d_hidden=1024, d_out=3, depth=3)
    with pytest.raises(BadInput, match=r"training state \(\d+\.\d MB\) and data shard \(0\.0 MB\) "
                                       r"do not fit the job's memory limit of 4 MB"):
        untouchable_client().submit_training(wide, _training_data(), TRAIN_PLAN,
                                             memory_limit_mb=4)


# ------------------------------------------------------- paying for handed-back training work

def test_paying_for_handed_back_work_refuses_a_claim_that_does_not_check_before_cancelling():
    """A worker's claim of finished steps is checked before the client cancels its job or pays
    anything: its end must be a step inside the job (not its last: that is the whole job), and
    its manifest must be the manifest of those steps ending in the state it names."""
    from meshcompute.client import Shard, Submission
    from meshcompute.core.spec import JobSpec
    from meshcompute.core.training import manifest_bytes, plan_sha256, validate_plan
    from meshcompute.wire.market_client import PartialWork

    plan = validate_plan({"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 12,
                          "batch_size": 4, "seed": 1, "checkpoint_every": 4})
    spec = JobSpec(program="a" * 64, inputs="b" * 64, training=plan.to_json(), version=2)
    submission = Submission(group=None, program="a" * 64, shards=[
        Shard(index=0, spec=spec, job_id=7, attempts=[7])], reward_per_shard=10**18,
        audit_fee_per_shard=10**18, collateral_per_shard=2 * 10**18, audit_bps=0,
        deadline_s=600)
    states = ["c" * 64, "d" * 64]
    manifest = manifest_bytes(plan_sha256=plan_sha256(plan.part(0, 8)), checkpoints=states,
                              losses="e" * 64, final_state=states[-1],
                              steps=["f" * 64, "0" * 64])
    client = untouchable_client()
    client.market = SimpleNamespace(get_blob=lambda sha, verify=True: manifest)  # type: ignore

    def claim(end: int, state: str = states[-1]) -> PartialWork:
        return PartialWork(worker="0x" + "22" * 20, end_step=end,
                           manifest_sha256=sha256_hex(manifest), state_sha256=state)

    for end in (12, 0, 15):
        with pytest.raises(BadInput, match="is not part of its steps"):
            client.pay_for_partial(submission, claim(end))
    with pytest.raises(BadInput, match="expected 1 checkpoints"):
        client.pay_for_partial(submission, claim(4))  # the manifest is of 8 steps
    with pytest.raises(BadInput, match="expected 3 checkpoints"):
        client.pay_for_partial(submission, claim(9))
    with pytest.raises(BadInput, match="does not end in the state it names"):
        client.pay_for_partial(submission, claim(8, state="9" * 64))
