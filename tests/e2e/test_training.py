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


#: Three rounds of three shards of 16 rows, 2,000 steps a round (a checkpoint every 500):
#: each job runs for seconds, long enough to pause its worker half way on any machine.
ROUNDS = {"optimizer": {"name": "adamw", "lr": 0.003}, "workers": 3, "rounds": 3,
          "steps_per_round": 2_000, "batch_size": 8, "round_timeout_s": 900}


def test_a_training_run_whose_worker_is_paused_past_its_lease_loses_no_step(tmp_path) -> None:
    """Real processes: a 3-round training run (Client.train) over three workers. In the
    second round, the worker training shard 0 is paused by its owner (`mesh worker pause`)
    half way and stays paused past its lease. It hands the job back stopped after the step
    under way, with every step it did; the client cancels the job, pays that worker for those
    steps pro rata with a job reserved for it (which it commits while still paused, and a
    verifier audits), and posts the rest from the state they end in, which another worker
    finishes. The run completes with weights equal to the same run trained here bit for bit
    (no step missing or done twice), every job is paid after a verified pass, and the books
    and the client's wallet reconcile to the wei."""
    import threading
    import time
    from pathlib import Path

    from meshcompute.rounds import RunConfig, TrainingRun
    from tests.unit.test_rounds import Market

    torch.manual_seed(5)
    model = MLPClassifier(d_in=8, d_hidden=16, d_out=4, depth=2)
    program = export_program(model.train(), tuple(t[:2] for t in _data()))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = StackConfig(workers=3, cheaters=0, worker_slots=1, lease_s=15,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300),
                         extra_env={"MESH_WORKER_SCRATCH_DIR": str(scratch),
                                    "MESH_SETTLE_INTERVAL_S": "1",
                                    "MESH_VERIFIER_POLL_INTERVAL_S": "0.5"})
    target = RunConfig(**ROUNDS).plan(1, 0)  # shard 0's job of the second round
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        me = stack.client_account.address
        names = {a.address.lower(): f"worker-{i}" for i, a in enumerate(stack.worker_accounts())}
        wallet_before = contracts.balance_of(me)
        outcome: list = []
        paused: str | None = None

        def resume_after_round_two(report: dict) -> None:
            if report["round"] == 2 and paused is not None:  # its owner left
                stack.pause_file(paused).unlink(missing_ok=True)

        run = threading.Thread(target=lambda: outcome.append(client.train(
            program, _data(), run_dir=tmp_path / "run", pay="1",
            progress=resume_after_round_two, **ROUNDS)), daemon=True)
        run.start()

        def running_half_way() -> Path | None:
            for box in scratch.glob("mesh-train-*/box"):
                try:
                    order = json.loads((box / "train.json").read_text())
                    done = json.loads((box / "progress.json").read_text())["checkpoints"]
                except (OSError, ValueError, KeyError):
                    continue
                if order["plan"]["part"] == target["part"] \
                        and order["plan"]["seed"] == target["seed"] and done >= 1:
                    return box
            return None

        give_up = time.monotonic() + 300
        while paused is None and time.monotonic() < give_up and run.is_alive():
            stack.check_alive()
            if running_half_way() is not None:
                doc = json.loads((tmp_path / "run" / "run.json").read_text())
                job_id = int(doc["in_flight"]["jobs"]["0"]["shards"][0]["job_id"])
                holder = client.market.job(job_id).lease_holder
                if holder is not None:
                    paused = names[holder.lower()]
                    stack.pause_file(paused).touch()
            time.sleep(0.05)
        assert paused is not None, "round 2's shard 0 never ran half way"
        run.join(600)
        log = "\n".join(f"--- {n}\n{stack.services[n].tail(15)}" for n in names.values())
        assert outcome, f"the run did not finish\n{log}"
        (result,) = outcome
        posted = sorted(int(e.args["jobId"]) for e in contracts.events()
                        if e.name == "JobPosted" and e.args["client"].lower() == me.lower())
        records = contracts.job_records(posted)
        states = {j: records[j].state for j in posted}
        # nine shard jobs, of which one was handed back: it was cancelled, and two jobs did
        # its steps, the first reserved for (and done by) the paused worker
        assert len(posted) == 11, f"{states}\n{log}"
        (handed,) = [j for j in posted if states[j] == JobState.REFUNDED]
        assert all(states[j] == JobState.FINALIZED for j in posted if j != handed), states
        reserved = [e for e in contracts.events() if e.name == "JobReserved"]
        ((steps_done, worker),) = [(int(e.args["jobId"]), e.args["worker"]) for e in reserved]
        assert names[worker.lower()] == paused == names[records[steps_done].worker.lower()]
        rest = steps_done + 1
        assert names[records[rest].worker.lower()] != paused
        (partial,) = client.market.job(handed).partials
        h = ROUNDS["steps_per_round"]
        assert h + 500 <= partial.end_step < 2 * h  # stopped half way, every step kept
        reward = records[handed].reward
        assert records[steps_done].reward == reward * (partial.end_step - h) // h
        assert records[steps_done].reward + records[rest].reward == reward
        assert steps_done in result.rounds[1].jobs and rest in result.rounds[1].jobs
        assert not any(r.skipped for r in result.rounds)
        # every job paid once, after a passed audit
        events = contracts.job_events(posted)
        paid = [int(e.args["jobId"]) for e in events if e.name == "JobPaid"]
        assert sorted(paid) == [j for j in posted if j != handed]
        assert all(e.args["audited"] for e in events if e.name == "JobPaid")
        for worker_account in stack.worker_accounts():
            assert contracts.account_of(worker_account.address).earned > 0
        # the client paid the escrow of every job and got the cancelled one's back, to the wei
        escrows = sum(records[j].reward + records[j].audit_fee for j in posted)
        refunded = sum(int(e.args["amount"]) for e in events if e.name == "JobRefunded")
        assert refunded == records[handed].reward + records[handed].audit_fee
        assert wallet_before - contracts.balance_of(me) == escrows - refunded
        _assert_books(contracts)
    here = TrainingRun(Market(), program, _data(), RunConfig(**ROUNDS), tmp_path / "here").run()
    for name, tensor in here.parameters.items():
        torch.testing.assert_close(result.parameters[name], tensor, rtol=0, atol=0)
