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

import json
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


#: Two segments of 6,000 steps: long enough to pause the worker once the first is done and
#: before the second is, on any machine; every step is one thread, so runs agree bit for bit.
LONG_PLAN = {"optimizer": {"name": "adamw", "lr": 0.003}, "steps": 12_000, "batch_size": 8,
             "seed": 3, "checkpoint_every": 6_000}


def test_a_worker_paused_past_its_lease_is_paid_for_its_finished_steps_and_another_finishes(
        tmp_path) -> None:
    """Real processes: the worker running a training job is paused by its owner (`mesh worker
    pause`) once its first checkpoint is done, and stays paused past its lease. It hands the
    job back stopped after the step under way, with every step it did; the client cancels the
    job, pays that worker for those steps with a job reserved for it (which it commits while
    still paused, and a verifier audits), and posts the rest from the state they end in, which
    another worker finishes. No step is computed twice, both workers are paid after a verified pass, the result is a local
    run's bit for bit, and the books reconcile to the wei."""
    import threading
    import time

    torch.manual_seed(5)
    model = MLPClassifier(d_in=8, d_hidden=16, d_out=4, depth=2)
    program = export_program(model.train(), tuple(t[:2] for t in _data()))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = StackConfig(workers=3, cheaters=0, worker_slots=1, lease_s=15,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300),
                         extra_env={"MESH_WORKER_SCRATCH_DIR": str(scratch)})
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        me = stack.client_account.address
        names = {a.address.lower(): f"worker-{i}" for i, a in enumerate(stack.worker_accounts())}
        wallet_before = contracts.balance_of(me)
        outcome: list = []
        run = threading.Thread(target=lambda: outcome.append(client.train_in_parts(
            program, _data(), LONG_PLAN, parts=1, pay="1", deadline="20m", timeout_s=400)),
            daemon=True)
        run.start()
        paused = None
        give_up = time.monotonic() + 120
        while paused is None and time.monotonic() < give_up and run.is_alive():
            stack.check_alive()
            done = [p for p in scratch.glob("mesh-train-*/box/progress.json")
                    if json.loads(p.read_text() or "{}").get("checkpoints", 0) >= 1]
            posted = [int(e.args["jobId"]) for e in contracts.events()
                      if e.name == "JobPosted" and e.args["client"].lower() == me.lower()]
            holder = client.market.job(posted[0]).lease_holder if posted and done else None
            if holder is not None:
                paused = names[holder.lower()]
                (stack.root / paused / "worker.pause").touch()
            time.sleep(0.05)
        assert paused is not None, "the training never reached its first checkpoint"
        run.join(400)
        log = "\n".join(f"--- {n}\n{stack.services[n].tail(15)}" for n in names.values())
        assert outcome, f"the training did not finish\n{log}"
        (result,) = outcome
        (stack.root / paused / "worker.pause").unlink()
        posted = sorted(int(e.args["jobId"]) for e in contracts.events()
                        if e.name == "JobPosted" and e.args["client"].lower() == me.lower())
        records = contracts.job_records(posted)
        states = {j: records[j].state for j in posted}
        assert len(posted) == 3, f"{states}\n{log}"
        handed, steps_done, rest = posted
        assert states[handed] == JobState.REFUNDED, f"{states}\n{log}"
        assert result.job_ids == [steps_done, rest]
        assert states[steps_done] == states[rest] == JobState.FINALIZED, f"{states}\n{log}"
        reserved = [e for e in contracts.events() if e.name == "JobReserved"]
        assert [(int(e.args["jobId"]), names[e.args["worker"].lower()]) for e in reserved] \
            == [(steps_done, paused)]
        assert names[records[steps_done].worker.lower()] == paused
        assert names[records[rest].worker.lower()] != paused
        # each paid its share of the steps, after an audit passed; nothing else was paid
        events = contracts.job_events(posted)
        assert sorted(int(e.args["jobId"]) for e in events if e.name == "JobPaid") \
            == [steps_done, rest]
        assert all(e.args["audited"] for e in events if e.name == "JobPaid")
        # stopped after the step under way: every step it did is paid, pro rata
        (partial,) = client.market.job(handed).partials
        assert 6_000 <= partial.end_step < 12_000
        reward = records[handed].reward
        assert records[steps_done].reward == reward * partial.end_step // 12_000
        assert records[steps_done].reward + records[rest].reward == reward
        # the client paid the two jobs' escrow and got the cancelled job's back, to the wei
        escrows = sum(records[j].reward + records[j].audit_fee for j in posted)
        refunded = sum(int(e.args["amount"]) for e in events if e.name == "JobRefunded")
        assert refunded == records[handed].reward + records[handed].audit_fee
        assert wallet_before - contracts.balance_of(me) == escrows - refunded
        _assert_books(contracts)
    local = run_steps(program, _data(), validate_plan(LONG_PLAN))
    assert result.losses == local.losses
    assert result.state == local.final_state
