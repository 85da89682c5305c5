"""Training jobs through the whole marketplace as real processes (anvil, Valkey, market API +
Celery, two workers of which one cheats, verifiers), every job audited: the workers train in
their sandboxes and commit manifests, a verifier recomputes the drawn segments, the cheater's
wrong final states are failed and slashed (the client compensated), the honest worker is paid,
and the client gets the final parameters and loss curve a local run of the same plan gives.
The books reconcile."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load

from meshcompute.client import Submission
from meshcompute.core.job import JobState
from meshcompute.core.training import validate_plan
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import run_steps
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig
from meshcompute.mesh.models import MLPClassifier
from tests.e2e.test_stack import _assert_books, _client, _wait_terminal

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

PLAN = {"optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"kind": "cosine",
                                                                 "warmup_steps": 2},
        "steps": 16, "batch_size": 8, "seed": 3, "checkpoint_every": 4}


def _data(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(48, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen)]


def test_training_jobs_are_audited_by_segments_the_cheater_slashed_the_honest_paid() -> None:
    # two workers, the second the test-only cheater (it zeroes the final state of every
    # training job it takes); every job is drawn for audit
    torch.manual_seed(5)
    model = MLPClassifier(d_in=8, d_hidden=16, d_out=4, depth=2)
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0, worker_slots=1,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        (cheater,) = stack.cheater_addresses()
        client_before = contracts.account_of(stack.client_account.address).withdrawable
        posted: list[tuple[Submission, int]] = []
        for _ in range(4):  # until each worker has taken a job (the market picks who)
            for _ in range(3):
                seed = len(posted)
                posted.append((client.submit_training(model, _data(seed), PLAN, pay="1",
                                                      deadline="20m"), seed))
            job_ids = [s.job_ids[0] for s, _ in posted]
            states = _wait_terminal(stack, contracts, job_ids, timeout_s=300)
            records = contracts.job_records(job_ids)
            if len({r.worker == cheater for r in records.values()}) == 2:
                break
        by = {(r.worker == cheater, states[j]) for j, r in records.items()}
        assert by == {(True, JobState.SLASHED), (False, JobState.FINALIZED)}, (
            f"{by}\n--- verifier\n{stack.services['verifier'].tail(20)}")
        events = contracts.job_events(job_ids)
        compensation = sum(int(e.args["clientCompensation"]) for e in events
                           if e.name == "JobSlashed")
        refunds = sum(int(e.args["amount"]) for e in events if e.name == "JobRefunded")
        got = contracts.account_of(stack.client_account.address).withdrawable - client_before
        assert got == refunds + compensation > 0
        honest = [(s, seed) for s, seed in posted if records[s.job_ids[0]].worker != cheater]
        results = {seed: client.training_result(s) for s, seed in honest}
        for submission, _ in honest:
            assert client.verification(submission)[0] == "audited"
        assert all(contracts.account_of(r.worker).earned > 0 for r in records.values()
                   if r.worker != cheater)
        _assert_books(contracts)
    program = export_program(model.train(), tuple(t[:2] for t in _data(0)))
    for seed, result in results.items():
        local = run_steps(program, _data(seed), validate_plan(PLAN))
        assert result.losses == local.losses  # the same steps, one thread, here too
        final = load(local.final_state)
        for name, tensor in result.parameters.items():
            torch.testing.assert_close(tensor, final["param." + name], rtol=0, atol=0)
        assert result.losses[-1] < result.losses[0]
