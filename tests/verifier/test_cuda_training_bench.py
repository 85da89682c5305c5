"""The training part of ``mesh bench cuda`` (a GPU training run, every segment audited on the
CPU as the verifier audits one), run here on the CPU in place of the GPU: the measurement's
plumbing (the sandboxed run, the in-process run, the segment audits and their figures)."""

from __future__ import annotations

import pytest
import torch

from meshcompute.errors import ConfigError
from meshcompute.mesh.bench.cuda import run_cuda_training


def test_the_training_part_audits_every_segment_of_the_run() -> None:
    report = run_cuda_training(device="cpu", families=("digits_mlp",), threads=1)
    row = report["training"]["digits_mlp"]
    assert row["judged_run"] == "sandbox" and "sandbox_failed" not in row
    # one thread in the sandbox and here: the same run, byte for byte
    assert row["in_process_same_bytes"] is True
    assert report["training_segments"] == report["training_segments_judged"] == 24
    assert report["training_segments_passed"] == 24 and row["failed_segments"] == []
    assert report["training_unjudgeable_segments"] == 0
    assert report["training_runs_failed"] == 0
    # the worker's run is the verifier's reference run: nothing but our own spread between them
    assert row["worst_first_used"] == 0.0
    assert 0.0 <= report["training_worst_final_used"] < 1.0
    assert row["final_loss"] == row["cpu_final_loss"] < row["first_loss"] / 4
    assert row["wall_s"] > 0 and row["compute_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_the_training_part_on_cuda_needs_a_gpu() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        run_cuda_training()
