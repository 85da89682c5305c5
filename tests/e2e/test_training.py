"""A training job through the whole marketplace as real processes (anvil, Valkey, market API +
Celery, a worker, two verifiers): the client posts it with every job audited, the worker
trains it in its sandbox and commits the manifest, a verifier recomputes the drawn segments and
passes it, the worker is paid, and the client gets the final parameters and loss curve a local
run of the same plan gives. The books reconcile."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load
from torch import nn

from meshcompute.client import TrainingResult
from meshcompute.core.job import JobState
from meshcompute.core.training import validate_plan
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import run_steps
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig
from tests.e2e.test_stack import _assert_books, _client

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

PLAN = {"optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"kind": "cosine",
                                                                 "warmup_steps": 2},
        "steps": 16, "batch_size": 8, "seed": 3, "checkpoint_every": 4}


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(x), y)


def test_a_training_job_is_trained_audited_by_segments_paid_and_delivered() -> None:
    gen = torch.Generator().manual_seed(11)
    data = [torch.randn(48, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen)]
    torch.manual_seed(5)
    model = Classifier()
    config = StackConfig(workers=1, worker_slots=1,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        submission = client.submit_training(model, data, PLAN, pay="1", deadline="20m")
        result = client.wait(submission, timeout_s=420)
        assert isinstance(result, TrainingResult)
        (job_id,) = submission.job_ids
        record = contracts.job_records([job_id])[job_id]
        assert record.state == JobState.FINALIZED
        assert client.verification(submission)[0] == "audited", stack.services[
            "verifier"].tail(20)
        assert contracts.account_of(record.worker).earned > 0
        _assert_books(contracts)
    program = export_program(model.train(), tuple(t[:2] for t in data))
    local = run_steps(program, data, validate_plan(PLAN))
    assert result.losses == local.losses  # the worker ran the same steps, one thread, here too
    final = load(local.final_state)
    for name, tensor in result.parameters.items():
        torch.testing.assert_close(tensor, final["param." + name], rtol=0, atol=0)
    assert result.losses[-1] < result.losses[0]
