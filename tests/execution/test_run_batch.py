"""JobRunner.run_batch in the bubblewrap sandbox: jobs of one client and one program in one
process, each with its own outcome, limits and hash; a process is reused only for the same
client and program; a job past its time limit is killed and the rest go on in a fresh one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from meshcompute.execution.programs import load_tensors, save_tensors
from meshcompute.execution.sandbox import JobRunner
from meshcompute.mesh.models import build_model

LIMITS = {"memory_limit_mb": 1024, "max_output_bytes": 1 << 26}
A, B = "0x" + "aa" * 20, "0x" + "bb" * 20


def _inputs(rows: int, seed: int) -> tuple[torch.Tensor, bytes]:
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(seed))
    return x, save_tensors([x])


def test_batch_outputs_match_local_and_bad_inputs_fail_alone(
        requires_sandbox: None, mlp_program: bytes, tmp_path: Path) -> None:
    model = build_model("mlp")
    pairs = [_inputs(2 + i, seed=i) for i in range(5)]
    jobs = [data for _, data in pairs]
    jobs[2] = save_tensors([torch.randn(3, 7)])  # wrong shape: refused inside the process
    jobs.insert(4, b"not safetensors")  # refused before the process
    with JobRunner(scratch_root=tmp_path / "jobs") as runner:
        outcomes = runner.run_batch(mlp_program, jobs, time_limit_s=120, reuse_key=A,
                                    **LIMITS)
    assert len(outcomes) == len(jobs)
    assert [o.ok for o in outcomes] == [True, True, False, True, False, True]
    assert "input" in (outcomes[2].reason or "")
    assert "inputs refused" in (outcomes[4].reason or "")
    expected_inputs = [pairs[0][0], pairs[1][0], None, pairs[3][0], None, pairs[4][0]]
    with torch.no_grad():
        for outcome, x in zip(outcomes, expected_inputs, strict=True):
            if x is None:
                continue
            assert outcome.output is not None
            assert outcome.output_sha256 == hashlib.sha256(outcome.output).hexdigest()
            (actual,) = load_tensors(outcome.output, "out")
            torch.testing.assert_close(actual, model(x), rtol=1e-5, atol=1e-6)


def test_process_is_kept_only_for_the_same_client_and_program(
        requires_sandbox: None, programs: dict[str, bytes], tmp_path: Path) -> None:
    _, data = _inputs(2, seed=1)
    with JobRunner(scratch_root=tmp_path / "jobs", max_kept=2) as runner:
        assert all(o.ok for o in runner.run_batch(programs["mlp"], [data], time_limit_s=120,
                                                  reuse_key=A, **LIMITS))
        first = runner._bound
        assert first is not None and runner.bound_clients() == {A}
        runner.run_batch(programs["mlp"], [data, data], time_limit_s=120, reuse_key=A,
                         **LIMITS)
        assert runner._bound is first and first.jobs_run == 3  # same client and program
        runner.run_batch(programs["mlp"], [data], time_limit_s=120, reuse_key=B, **LIMITS)
        second = runner._bound
        assert second is not first and second.jobs_run == 1  # another client: own process
        assert first.alive() and runner.bound_clients() == {A, B}
        cnn_inputs = save_tensors([torch.randn(2, 3, 32, 32)])
        outcome, = runner.run_batch(programs["convnet"], [cnn_inputs], time_limit_s=120,
                                    reuse_key=B, **LIMITS)
        assert outcome.ok, outcome.reason
        third = runner._bound
        assert third not in (first, second)  # another program: own process
        assert not first.alive() and second.alive()  # the least recently used one went
        assert runner.bound_clients() == {B}
        runner.run(programs["mlp"], data, time_limit_s=120, **LIMITS)
        assert runner._bound is third and len(runner._kept) == 2  # run() keeps nothing


def test_job_past_its_limit_is_killed_and_the_rest_run_in_a_fresh_process(
        requires_sandbox: None, mlp_program: bytes, tmp_path: Path) -> None:
    _, small = _inputs(2, seed=1)
    _, large = _inputs(200_000, seed=2)
    with JobRunner(scratch_root=tmp_path / "jobs") as runner:
        outcomes = runner.run_batch(mlp_program, [small, large, small],
                                    time_limit_s=[120, 0.001, 120], reuse_key=A, **LIMITS)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "time limit of 0.001 s" in (outcomes[1].reason or "")
    assert outcomes[0].output == outcomes[2].output


def test_spare_that_dies_before_its_first_result_is_not_the_jobs_fault(
        requires_sandbox: None, mlp_program: bytes, tmp_path: Path) -> None:
    """A warm spare can be killed while it waits (by the OS, by an operator's tooling): the
    batch given to it then runs again in a process started for it, and is not reported as a
    crash of the client's job. A crash in a process started for the batch still is."""
    import os
    import signal

    x, data = _inputs(3, seed=7)
    runner = JobRunner(scratch_root=tmp_path / "jobs", warm=True)
    real = runner._process_for
    killed: list[int] = []

    def process_for(key, *, fresh):
        job = real(key, fresh=fresh)
        if job.spare and not killed:  # picked up alive, killed right after
            killed.append(job.process.pid)
            os.killpg(job.process.pid, signal.SIGKILL)
        return job

    runner._process_for = process_for  # type: ignore[method-assign]
    try:
        (outcome,) = runner.run_batch(mlp_program, [data], time_limit_s=120, reuse_key=A,
                                      **LIMITS)
    finally:
        runner.close()
    assert killed, "the spare was not used"
    assert outcome.ok, outcome.reason
    (actual,) = load_tensors(outcome.output, "out")
    with torch.no_grad():
        torch.testing.assert_close(actual, build_model("mlp")(x), rtol=1e-5, atol=1e-6)
