"""`mesh job submit --audit-bps/--audit-all`: the rate the submission is posted with, checked
before any wallet or chain is touched (the client is a fake that records its arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcompute.errors import BadInput
from meshcompute.mesh.cli import job as job_cli
from tests.cli.conftest import assert_one_line_error


def test_audit_rate() -> None:
    assert job_cli.audit_rate(None) == 0
    assert job_cli.audit_rate(2_500) == 2_500
    assert job_cli.audit_rate(None, audit_all=True) == 10_000
    assert job_cli.audit_rate(10_000, audit_all=True) == 10_000
    with pytest.raises(BadInput, match="--audit-all.*--audit-bps"):
        job_cli.audit_rate(5_000, audit_all=True)
    with pytest.raises(BadInput, match="--audit-all.*--audit-bps"):
        job_cli.audit_rate(0, audit_all=True)  # an explicit 0 contradicts it too
    for bad in (-1, 10_001):
        with pytest.raises(BadInput, match="between 0 and 10000"):
            job_cli.audit_rate(bad)


class _Stop(BadInput):
    pass


class _FakeClient:
    def __init__(self) -> None:
        self.kwargs: dict = {}

    def submit(self, program, inputs, **kwargs):
        self.kwargs = kwargs
        raise _Stop("stopped before uploading")

    def submit_training(self, program, inputs, plan, **kwargs):
        self.kwargs = {"plan": plan, **kwargs}
        raise _Stop("stopped before uploading")


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    program, inputs = tmp_path / "p.pt2", tmp_path / "x.safetensors"
    program.write_bytes(b"program")
    inputs.write_bytes(b"inputs")
    return str(program), str(inputs)


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> _FakeClient:
    fake = _FakeClient()
    monkeypatch.setattr(job_cli, "_client", lambda: fake)
    return fake


@pytest.mark.parametrize(("args", "bps"), [
    ((), 0),
    (("--audit-bps", "1500"), 1_500),
    (("--audit-all",), 10_000),
    (("--audit-all", "--audit-bps", "10000"), 10_000),
])
def test_submit_posts_with_the_rate(run_mesh, files, fake_client, args, bps) -> None:
    program, inputs = files
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--no-wait", "--json",
                      *args)
    assert_one_line_error(result, "stopped before uploading")
    assert fake_client.kwargs["audit_bps"] == bps
    assert fake_client.kwargs["check_stability"] is True


@pytest.mark.parametrize(("args", "fragments"), [
    (("--audit-all", "--audit-bps", "5000"), ("--audit-all", "--audit-bps", "5000")),
    (("--audit-bps", "10001"), ("--audit-bps", "between 0 and 10000", "10001")),
])
def test_submit_refuses_a_bad_rate(run_mesh, files, fake_client, args, fragments) -> None:
    program, inputs = files
    result = run_mesh("job", "submit", program, "--inputs", inputs, *args)
    assert_one_line_error(result, *fragments)
    assert fake_client.kwargs == {}  # refused before the client was asked for anything


def test_help_says_what_audit_all_costs_and_buys(run_mesh) -> None:
    result = run_mesh("job", "submit", "--help")
    assert result.code == 0
    text = " ".join(result.out.replace("│", " ").split())
    assert "--audit-all" in text and "--audit-bps" in text and "--no-stability-check" in text
    assert "audit fee" in text and "every shard" in text
    assert "void" in text and "never paid" in text


def test_train_posts_a_training_job_with_the_checked_plan(run_mesh, files, fake_client,
                                                          tmp_path: Path) -> None:
    program, inputs = files
    plan = tmp_path / "plan.json"
    plan.write_text('{"optimizer": {"name": "adamw", "lr": 0.001}, "steps": 10, '
                    '"batch_size": 4, "seed": 1, "checkpoint_every": 5}')
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--train", str(plan),
                      "--audit-all", "--no-wait")
    assert_one_line_error(result, "stopped before uploading")
    assert fake_client.kwargs["plan"]["optimizer"]["beta1"] == 0.9  # the defaults filled in
    assert fake_client.kwargs["audit_bps"] == 10_000


@pytest.mark.parametrize(("plan", "args", "fragments"), [
    (('{"optimizer": {"name": "lion", "lr": 1}, "steps": 1, "batch_size": 1, "seed": 0, '
     '"checkpoint_every": 1}'), (), ("optimizer 'lion' is not on the allowlist",)),
    ("not json", (), ("--train", "not a JSON file")),
    (('{"optimizer": {"name": "sgd", "lr": 1}, "steps": 1, "batch_size": 1, "seed": 0, '
     '"checkpoint_every": 1}'), ("--shards", "2"), ("--shards must be 1 with --train",)),
])
def test_train_refuses_a_bad_plan_before_anything(run_mesh, files, fake_client, tmp_path: Path,
                                                  plan, args, fragments) -> None:
    program, inputs = files
    path = tmp_path / "plan.json"
    path.write_text(plan)
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--train", str(path), *args)
    assert_one_line_error(result, *fragments)
    assert fake_client.kwargs == {}
