"""A training split over three workers, through the whole marketplace as real processes
(anvil, Valkey, market API + Celery, three workers of which one cheats, two verifiers), every
job audited. The client trains one plan in three parts run one after another, each from the
verified final state of the part before (``Client.train_in_parts``); the market's matching
gives each part to another worker. The cheater skips the steps of one of its segments (its
other segments are trained): the audit recomputes the last segment from the cheater's own
checkpoint before it and fails it; the cheater is slashed, the client compensated, the part
re-posted to an honest worker. The client gets a final state and loss curve equal to a local
run of the same plan, every part paid to an honest worker after a verified pass, and the books
reconcile to the wei."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load

from meshcompute.core.job import JobState
from meshcompute.core.training import validate_plan
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import run_steps
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig
from meshcompute.mesh.models import MLPClassifier
from tests.e2e.test_stack import _assert_books, _client

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

#: 18 steps, a checkpoint every 2: nine segments, three parts of three segments; an epoch of
#: the 48 rows is six steps.
PLAN = {"optimizer": {"name": "adamw", "lr": 0.03},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "steps": 18, "batch_size": 8, "seed": 3, "checkpoint_every": 2}


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(48, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen)]


def test_a_training_split_over_three_workers_slashes_the_cheater_and_matches_a_local_run(
) -> None:
    torch.manual_seed(5)
    model = MLPClassifier(d_in=8, d_hidden=16, d_out=4, depth=2)
    program = export_program(model.train(), tuple(t[:2] for t in _data()))
    config = StackConfig(workers=3, cheaters=1, cheat_fraction=1.0, worker_slots=1,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        (cheater,) = stack.cheater_addresses()
        me = stack.client_account.address
        client_before = contracts.account_of(me).withdrawable
        result = client.train_in_parts(program, _data(), PLAN, parts=3, pay="1",
                                       deadline="20m", timeout_s=420)
        posted = sorted(int(e.args["jobId"]) for e in contracts.events()
                        if e.name == "JobPosted" and e.args["client"].lower() == me.lower())
        records = contracts.job_records(posted)
        states = {j: r.state for j, r in records.items()}
        slashed = [j for j in posted if states[j] == JobState.SLASHED]
        log = f"{states}\n--- verifier\n{stack.services['verifier'].tail(20)}"
        # the matching gave the parts to the three workers in turn: the cheater took one,
        # was failed and slashed, and that part went again to an honest worker
        assert len(result.job_ids) == 3 and len(posted) == 4, log
        assert [records[j].worker for j in slashed] == [cheater], log
        paid = [records[j].worker for j in result.job_ids]
        assert all(states[j] == JobState.FINALIZED for j in result.job_ids), log
        assert cheater not in paid and len(set(paid)) == 2, log
        events = contracts.job_events(posted)
        cheats = [e for e in events if e.name == "AuditResolved" and not e.args["passed"]]
        assert [int(e.args["jobId"]) for e in cheats] == slashed
        compensation = sum(int(e.args["clientCompensation"]) for e in events
                           if e.name == "JobSlashed")
        refunds = sum(int(e.args["amount"]) for e in events if e.name == "JobRefunded")
        got = contracts.account_of(me).withdrawable - client_before
        assert got == refunds + compensation and compensation > 0
        # nothing was paid without a verified pass
        assert all(e.args["audited"] for e in events if e.name == "JobPaid")
        for worker in set(paid):
            assert contracts.account_of(worker).earned > 0
        _assert_books(contracts)
    local = run_steps(program, _data(), validate_plan(PLAN))
    assert result.losses == local.losses  # the same steps, one thread, here too
    assert result.state == local.final_state  # parameters and optimizer slots, bit for bit
    final = load(local.final_state)
    for name, tensor in result.parameters.items():
        torch.testing.assert_close(tensor, final["param." + name], rtol=0, atol=0)
    assert sum(result.losses[-6:]) < sum(result.losses[:6])  # the last epoch's below the first's
