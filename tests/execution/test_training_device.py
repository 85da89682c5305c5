"""Training steps on a device: ``run_steps(device=...)`` and the training job process's device
set-up. Here (no GPU) the CPU path must be the run it always was, bit for bit, and a shared
loaded program is never moved off the CPU; the CUDA tests run where a GPU is."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load

from meshcompute.core.training import DEFAULT_TRAINING_TOLERANCE, segments, validate_plan
from meshcompute.execution.loader import load_program
from meshcompute.execution.programs import save_tensors
from meshcompute.execution.train_runner import run_training_job
from meshcompute.execution.training import check_segment, module_on, run_steps
from tests.execution.test_training import _data, small_program


@pytest.fixture(scope="module")
def program() -> bytes:
    return small_program()


LIMITS = {"time_limit_s": 120.0, "memory_limit_mb": 1024, "max_output_bytes": 1 << 24}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")




def _plan(optimizer: dict | None = None) -> object:
    return validate_plan({"optimizer": optimizer or {"name": "adamw", "lr": 0.01},
                          "steps": 6, "batch_size": 4, "seed": 1, "checkpoint_every": 2})


def test_run_steps_on_the_cpu_device_is_the_default_run_bit_for_bit(program: bytes) -> None:
    plan = _plan()
    default = run_steps(program, _data(), plan, record="hashes")
    named = run_steps(program, _data(), plan, record="hashes", device="cpu")
    assert named.checkpoints == default.checkpoints and named.losses == default.losses
    assert named.step_hashes == default.step_hashes
    assert all(t.device.type == "cpu" for t in st_load(named.final_state).values())


def test_a_module_for_another_device_is_a_copy_and_the_loaded_program_stays_on_the_cpu(
        program: bytes) -> None:
    loaded = load_program(program)
    plan = _plan()
    before = run_steps(loaded, _data(), plan)
    assert module_on(loaded.module, "cpu") is loaded.module
    # "meta" stands in for a GPU here: a device that is not the CPU
    moved = module_on(loaded.module, "meta")
    assert moved is not loaded.module
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert {p.device.type for p in loaded.module.parameters()} == {"cpu"}
    after = run_steps(loaded, _data(), plan)
    assert after.checkpoints == before.checkpoints


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_training_job_asking_for_cuda_without_one_says_so(requires_sandbox: None,
                                                            program: bytes) -> None:
    outcome = run_training_job(program, save_tensors(_data()), _plan().to_json(),
                               device="cuda", **LIMITS)
    assert not outcome.ok
    assert "CUDA device" in (outcome.reason or "") and "none available" in (outcome.reason or "")


@cuda
def test_a_cuda_run_writes_cpu_checkpoints_that_the_cpu_verifier_accepts(program: bytes) -> None:
    loaded = load_program(program)
    plan = _plan({"name": "sgd", "lr": 0.1, "momentum": 0.9})
    gpu = run_steps(loaded, _data(), plan, device="cuda")
    assert len(gpu.checkpoints) == len(segments(plan)) and gpu.diverged_at is None
    assert all(t.device.type == "cpu" for t in st_load(gpu.final_state).values())
    assert {p.device.type for p in loaded.module.parameters()} == {"cpu"}
    for index, checkpoint in enumerate(gpu.checkpoints):
        before = gpu.checkpoints[index - 1] if index else None
        check = check_segment(loaded, _data(), plan, index, before, checkpoint, gpu.losses,
                              DEFAULT_TRAINING_TOLERANCE)
        assert check.agree, check.reason


@cuda
def test_a_sandboxed_cuda_training_run_is_the_in_process_cuda_run(requires_sandbox: None,
                                                                  program: bytes) -> None:
    plan = _plan()
    outcome = run_training_job(program, save_tensors(_data()), plan.to_json(), device="cuda",
                               **LIMITS)
    assert outcome.ok, outcome.reason
    here = run_steps(program, _data(), plan, device="cuda")
    assert len(outcome.checkpoints) == len(here.checkpoints) == len(segments(plan))
    cpu = run_steps(program, _data(), plan)
    for gpu_state, cpu_state in zip(outcome.checkpoints, cpu.checkpoints, strict=True):
        a, b = st_load(gpu_state), st_load(cpu_state)
        assert sorted(a) == sorted(b)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
