"""run_job end to end in the bubblewrap sandbox: the model families give the local result; every
bad job of issue 4 ends with ok=False and a readable reason, and no code from the file runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import JobOutcome, JobRunner, run_job
from meshcompute.mesh.models import FAMILIES
from tests.execution import crafting
from tests.execution.conftest import reference

LIMITS = {"time_limit_s": 120.0, "memory_limit_mb": 1024, "max_output_bytes": 1 << 20}


def _run(program: bytes, inputs: bytes, **overrides: object) -> JobOutcome:
    limits = {**LIMITS, **overrides}
    return run_job(program, inputs, threads=1, **limits)  # type: ignore[arg-type]


def _mlp_inputs(batch: int = 3) -> bytes:
    return save_tensors([torch.randn(batch, 256)])


def _assert_failed(outcome: JobOutcome, reason: str) -> None:
    assert not outcome.ok
    assert outcome.output is None and outcome.output_sha256 is None
    assert outcome.reason is not None and reason in outcome.reason, outcome.reason


@pytest.mark.parametrize("family", FAMILIES)
def test_run_job_matches_local_computation(requires_sandbox: None, programs: dict[str, bytes],
                                           family: str, tmp_path: Path) -> None:
    inputs, expected = reference(family, batch=6, seed=5)
    (tmp_path / "inputs.safetensors").write_bytes(save_tensors(inputs))
    outcome = run_job(programs[family], tmp_path / "inputs.safetensors", threads=1, **LIMITS)
    assert outcome.ok, outcome.reason
    assert outcome.output is not None
    assert outcome.output_sha256 == hashlib.sha256(outcome.output).hexdigest()
    (actual,) = load_tensors(outcome.output, "out")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert 0 < outcome.compute_s < outcome.wall_s


def test_warm_runner_takes_next_job_after_bad_ones(requires_sandbox: None, mlp_program: bytes,
                                                   tmp_path: Path) -> None:
    with JobRunner(warm=True, scratch_root=tmp_path / "jobs") as runner:
        bad = runner.run(mlp_program, save_tensors([torch.randn(2, 7)]), **LIMITS)
        _assert_failed(bad, "input args.0: expected float32[1..1048576, 256], got float32[2, 7]")
        broken = runner.run(mlp_program[:-100], _mlp_inputs(), **LIMITS)
        _assert_failed(broken, "program refused")
        good = runner.run(mlp_program, _mlp_inputs(4), **LIMITS)
        assert good.ok, good.reason
        assert load_tensors(good.output or b"", "out")[0].shape == (4, 10)
    assert list((tmp_path / "jobs").iterdir()) == []  # scratch folders are removed


def test_wrong_input_dtype_and_count(requires_sandbox: None, mlp_program: bytes) -> None:
    _assert_failed(_run(mlp_program, save_tensors([torch.zeros(2, 256, dtype=torch.float64)])),
                   "expected float32[1..1048576, 256], got float64[2, 256]")
    _assert_failed(_run(mlp_program, save_tensors([torch.zeros(2, 256), torch.zeros(1)])),
                   "program takes 1 inputs, job gives 2")
    _assert_failed(_run(mlp_program, b"not safetensors at all"), "inputs refused")


def test_program_that_fails_to_load(requires_sandbox: None, mlp_program: bytes) -> None:
    def ghost(model: dict) -> None:
        crafting.nodes(model)[0]["inputs"][0]["arg"] = {"as_tensor": {"name": "ghost"}}

    outcome = _run(crafting.edit_model(mlp_program, ghost), _mlp_inputs())
    _assert_failed(outcome, "program refused: program failed to load")


class _Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(512, 512) / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(300):
            x = torch.tanh(x @ self.weight)
        return x


class _Hog(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(x.shape[0], 64_000_000)  # 256 MB per row
        return big.sum(dim=1) + x.sum(dim=1)


def test_time_limit_kills_the_job(requires_sandbox: None) -> None:
    program = export_program(_Slow().eval(), (torch.randn(4, 512),))
    outcome = _run(program, save_tensors([torch.randn(4096, 512)]), time_limit_s=3.0)
    _assert_failed(outcome, "ran past its time limit of 3 s")


def test_memory_limit_stops_the_job(requires_sandbox: None) -> None:
    program = export_program(_Hog(), (torch.randn(2, 8),))
    small = _run(program, save_tensors([torch.randn(1, 8)]), memory_limit_mb=512)
    assert small.ok, small.reason  # 256 MB fits in 512
    outcome = _run(program, save_tensors([torch.randn(4, 8)]), memory_limit_mb=512)
    _assert_failed(outcome, "exceeded its memory limit of 512 MB")


def test_output_over_the_limit(requires_sandbox: None, mlp_program: bytes) -> None:
    outcome = _run(mlp_program, _mlp_inputs(64), max_output_bytes=1000)
    _assert_failed(outcome, "output is 2560 bytes, over the job's limit of 1000 bytes")
    assert outcome.compute_s > 0


def test_cuda_request_without_cuda_is_refused(requires_sandbox: None, mlp_program: bytes) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; `mesh bench cuda` covers it")
    outcome = run_job(mlp_program, _mlp_inputs(), device="cuda", threads=1, **LIMITS)
    _assert_failed(outcome, "asks for a CUDA device but this worker has none")
