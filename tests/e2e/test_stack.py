"""The marketplace as real processes (anvil, Valkey, market API + Celery, verifier, workers):
reliability under kill -9 and restarts (issue 3), and honest vs. cheating workers over many
jobs (issue 5). Every test ends by reconciling the books against the contracts."""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import replace

import pytest
import torch

from meshcompute.chain.contracts import MeshContracts
from meshcompute.chain.reconcile import check_solvency
from meshcompute.client import Client, Submission
from meshcompute.core.job import JobState
from meshcompute.core.payout import slash_split
from meshcompute.errors import NotFound
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig
from meshcompute.mesh.models import MLP

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return MLP(d_in=16, d_hidden=32, d_out=4, depth=2).eval()


def _client(stack: DevStack) -> tuple[Client, MeshContracts]:
    client = stack.client()
    return client, client.connection.contracts


def _submit(client: Client, jobs: int, *, rows: int = 2, audit_bps: int = 0) -> Submission:
    x = torch.randn(jobs * rows, 16, generator=torch.Generator().manual_seed(jobs))
    return client.submit(_tiny_model(), (x,), shards=jobs, pay=str(jobs), audit_bps=audit_bps,
                         deadline="20m")


def _wait_terminal(stack: DevStack, contracts: MeshContracts, job_ids: list[int],
                   timeout_s: float) -> dict[int, JobState]:
    give_up = time.monotonic() + timeout_s
    while True:
        stack.check_alive()
        records = contracts.job_records(job_ids)
        states = {i: records[i].state for i in job_ids}
        if all(s.terminal for s in states.values()):
            return states
        if time.monotonic() > give_up:
            raise AssertionError(f"not terminal after {timeout_s}s: {Counter(states.values())}")
        time.sleep(0.5)


def _paid_events(contracts: MeshContracts, job_ids: list[int]) -> Counter[int]:
    return Counter(int(e.args["jobId"]) for e in contracts.job_events(job_ids)
                   if e.name == "JobPaid")


def _assert_books(contracts: MeshContracts) -> None:
    report = check_solvency(contracts)
    assert report.ok, report.problems


def test_kill_9_worker_mid_job_is_reassigned_and_paid_once() -> None:
    config = StackConfig(workers=2, cheaters=0, verifier=False, lease_s=10,
                         params=replace(FAST_PARAMS, min_audit_bps=0))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        # a job long enough to be killed in the middle of: a big batch through a wide MLP
        big = MLP(d_in=256, d_hidden=2048, d_out=16, depth=4).eval()
        x = torch.randn(16_384, 256)
        submission = client.submit(big, (x,), shards=1, pay="1", deadline="20m")
        job_id = submission.job_ids[0]
        addresses = {a.address: f"worker-{i}" for i, a in enumerate(stack.worker_accounts())}
        holder = None
        give_up = time.monotonic() + 60
        while holder is None and time.monotonic() < give_up:
            try:
                holder = client.market.job(job_id).lease_holder
            except NotFound:  # not indexed yet
                pass
            time.sleep(0.02)
        assert holder is not None, "no worker leased the job"
        stack.kill(addresses[holder], signal.SIGKILL)
        states = _wait_terminal(stack, contracts, [job_id], timeout_s=120)
        assert states[job_id] == JobState.FINALIZED
        assert contracts.job(job_id).worker != holder, "the killed worker still committed"
        assert _paid_events(contracts, [job_id]) == Counter({job_id: 1})
        _assert_books(contracts)


def test_redis_restart_during_a_burst_of_100_jobs() -> None:
    config = StackConfig(workers=3, cheaters=0, verifier=False, worker_slots=4,
                         params=replace(FAST_PARAMS, min_audit_bps=0))
    with DevStack(config) as stack:
        if stack.valkey is None:
            pytest.skip("REDIS_URL is external; this test restarts the embedded Valkey")
        client, contracts = _client(stack)
        submission = _submit(client, 100)
        time.sleep(3)
        stack.restart_redis(down_s=2)
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=400)
        assert set(states.values()) == {JobState.FINALIZED}
        paid = _paid_events(contracts, submission.job_ids)
        assert sorted(paid) == sorted(submission.job_ids) and set(paid.values()) == {1}
        _assert_books(contracts)


def test_kill_api_and_celery_mid_run_and_restart() -> None:
    config = StackConfig(workers=2, cheaters=0, verifier=False, worker_slots=2,
                         params=replace(FAST_PARAMS, min_audit_bps=0))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        submission = _submit(client, 20)
        time.sleep(4)
        stack.kill("market-api")
        stack.kill("market-tasks")
        time.sleep(2)
        stack.services["market-api"].start()
        stack.services["market-tasks"].start()
        stack.wait_healthy()
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=300)
        assert set(states.values()) == {JobState.FINALIZED}
        assert set(_paid_events(contracts, submission.job_ids).values()) == {1}
        outputs = client.result(submission)
        assert outputs[0].shape == (40, 4)
        _assert_books(contracts)


def test_two_honest_one_cheater_over_50_jobs() -> None:
    # every job is drawn for audit; a long audit window lets the verifiers keep up
    config = StackConfig(workers=3, cheaters=1, cheat_fraction=0.5, worker_slots=2,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=300))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        submission = _submit(client, 50)
        client_before = contracts.account_of(stack.client_account.address).withdrawable
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=600)
        records = contracts.job_records(submission.job_ids)
        cheater = next(iter(stack.cheater_addresses()))
        slashed = [r for r in records.values() if r.state == JobState.SLASHED]
        by_worker = Counter((r.worker == cheater and "cheater" or r.worker[:8], r.state.name)
                            for r in records.values())
        assert slashed, (f"the cheater was never caught: {dict(by_worker)}\n"
                         f"--- verifier\n{stack.services['verifier'].tail(20)}\n"
                         f"--- cheater\n{stack.services['worker-2'].tail(20)}")
        assert all(r.worker == cheater for r in slashed), "an honest worker was slashed"
        for job_id, record in records.items():
            if record.worker != cheater:  # paid, or void if its verdict never came
                assert states[job_id] in (JobState.FINALIZED, JobState.REFUNDED)
        events = contracts.job_events(submission.job_ids)
        # every job is drawn for audit: nothing is paid without a passing verdict (silence
        # never pays), so none of the cheater's junk is paid
        assert [e for e in events if e.name == "JobPaid" and not e.args["audited"]] == []
        refunds = {int(e.args["jobId"]): int(e.args["amount"]) for e in events if e.name == "JobRefunded"}
        compensation = {int(e.args["jobId"]): int(e.args["clientCompensation"])
                        for e in events if e.name == "JobSlashed"}
        for job_id, record in records.items():
            if record.state == JobState.SLASHED:
                assert refunds[job_id] == record.reward
                assert compensation[job_id] == slash_split(record.collateral, record.audit_fee)[0]
            elif record.state == JobState.REFUNDED:  # void: the whole escrow back
                assert refunds[job_id] == record.reward + record.audit_fee
        got = contracts.account_of(stack.client_account.address).withdrawable - client_before
        assert got == sum(refunds.values()) + sum(compensation.values())
        # the client is told, shard by shard, that every paid result was audited and passed
        verified = client.verification(submission)
        for shard in submission.shards:
            if states[shard.job_id] == JobState.FINALIZED:
                assert verified[shard.index] == "audited"
        honest = {r.worker for r in records.values() if r.worker != cheater}
        for worker in honest:
            paid = [r for r in records.values() if r.worker == worker]
            assert contracts.account_of(worker).earned > 0 and paid
        _assert_books(contracts)
