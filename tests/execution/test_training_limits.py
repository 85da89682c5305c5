"""A training job whose state does not fit its memory limit ends with that reason, on the
worker's side too (the client's own check, ``Client.submit_training``, only sees a lower bound
of what a run needs): the job process runs under the limit and reports it; nothing is written
as a checkpoint."""

from __future__ import annotations

import torch

from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.execution.train_runner import run_training_job
from meshcompute.mesh.models import MLPClassifier

PLAN = {"optimizer": {"name": "adamw", "lr": 0.01}, "steps": 2, "batch_size": 4, "seed": 0,
        "checkpoint_every": 1}


def test_a_state_over_the_memory_limit_ends_the_job_with_that_reason(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 64, generator=gen), torch.randint(0, 3, (8,), generator=gen)]
    torch.manual_seed(0)
    # ~64 MB of parameters, so ~190 MB with AdamW's two slots, in a 48 MB job
    program = export_program(MLPClassifier(d_in=64, d_hidden=4096, d_out=3, depth=2).train(),
                             tuple(t[:2] for t in data))
    outcome = run_training_job(program, save_tensors(data), PLAN, time_limit_s=120,
                               memory_limit_mb=48, max_output_bytes=1 << 30,
                               scratch_root=tmp_path, allow_unsandboxed=not sandbox_available())
    assert not outcome.ok
    assert "memory limit of 48 MB" in (outcome.reason or ""), outcome.reason
    assert outcome.checkpoints == []
