"""Settler on a real anvil and a real Redis/Valkey: batches paid once, races, stale jobs, gas.

The marketplace is deployed once on the session anvil; each test starts from a snapshot that
its teardown reverts, and gets its own Redis prefix.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from meshcompute.chain.contracts import MeshActor, MeshContracts
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.payout import split_reward
from meshcompute.errors import BadInput, ContractRevert, TransactionTimeout
from meshcompute.market import settler as settler_module
from meshcompute.market.settler import GAS_BASE, GAS_PER_JOB, SettlementReport, Settler
from tests.contracts.world import TEST_PARAMS, World

CHALLENGE = TEST_PARAMS.challenge_window_s
AUDIT = TEST_PARAMS.audit_window_s
APPEAL = TEST_PARAMS.appeal_window_s


def records_of(world: World) -> dict[int, JobRecord]:
    return MeshContracts(world.w3, world.deployment).job_records(verify=True)


def paid_count(world: World) -> Counter[int]:
    events = MeshContracts(world.w3, world.deployment).job_events()
    return Counter(int(e.args["jobId"]) for e in events if e.name == "JobPaid")


def batches_sent(world: World, tx_hashes: list[str]) -> list[list[int]]:
    """The job ids of each finalizeBatch transaction, decoded from its input."""
    out = []
    for tx_hash in tx_hashes:
        tx = world.w3.eth.get_transaction(tx_hash)
        func, params = world.market.decode_function_input(tx["input"])
        assert func.fn_name == "finalizeBatch"
        out.append(list(params["jobIds"]))
    return out


def committed_jobs(world: World, n: int, **kw) -> list[int]:
    """n jobs posted in one batch and committed by one worker in one transaction."""
    job_ids = world.post(n=n, **kw)
    ticket, signature = world.ticket(world.workers[0], job_ids, audit_bps=kw.get("audit_bps", 0))
    world.workers[0].assign_and_commit(ticket, signature, [b"\x42" * 32] * n)
    return job_ids


def settler(world: World, redis_client, prefix: str, actor: MeshActor | None = None, **kw):
    return Settler(actor or world.outsider, redis_client, prefix=prefix, **kw)


# ---------------------------------------------------------------------------- paying once


def test_settle_pays_a_batch_once(world: World, redis_client, prefix: str) -> None:
    job_ids = committed_jobs(world, 5)
    world.advance(CHALLENGE + 1)
    records = records_of(world)
    worker = world.workers[0].address
    earned_before = world.admin.account_of(worker).earned

    s = settler(world, redis_client, prefix, max_batch=2)
    report = s.settle(records, world.now())
    assert sorted(report.job_ids) == job_ids
    assert report.skipped == [] and report.drawn == []
    assert len(report.tx_hashes) == 3 and report.tx_hash == report.tx_hashes[-1]
    assert batches_sent(world, report.tx_hashes) == [job_ids[:2], job_ids[2:4], job_ids[4:]]
    assert paid_count(world) == Counter({i: 1 for i in job_ids})
    pay, _fee = split_reward(records[job_ids[0]].reward, TEST_PARAMS.fee_bps)
    assert world.admin.account_of(worker).earned - earned_before == 5 * pay
    for tx_hash in report.tx_hashes:  # explicit headroom, not the bare estimate
        assert world.w3.eth.get_transaction(tx_hash)["gas"] >= GAS_BASE + GAS_PER_JOB
    for job_id in job_ids:
        assert redis_client.get(s.key(job_id, records[job_id])).startswith("done:0x")

    again = s.settle(records, world.now())  # the same (now stale) records: nothing sent
    assert again == SettlementReport(job_ids=[], tx_hash=None, skipped=job_ids)
    fresh = s.settle(records_of(world), world.now())  # caught-up records: nothing payable
    assert fresh == SettlementReport(job_ids=[], tx_hash=None, skipped=[])
    other = settler(world, redis_client, prefix)  # another process, same Redis
    assert other.settle(records, world.now()).tx_hash is None
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


def test_a_backlog_is_settled_oldest_first_over_several_rounds(
        world: World, redis_client, prefix: str) -> None:
    """A round sends at most max_batches transactions (the task threads it shares with
    indexing and matching are not held up behind a backlog); the next rounds take the rest."""
    job_ids = committed_jobs(world, 5)
    world.advance(CHALLENGE + 1)
    s = settler(world, redis_client, prefix, max_batch=2, max_batches=1)
    first = s.settle(records_of(world), world.now())
    assert first.job_ids == job_ids[:2] and len(first.tx_hashes) == 1
    second = s.settle(records_of(world), world.now())
    assert second.job_ids == job_ids[2:4]
    third = s.settle(records_of(world), world.now())
    assert third.job_ids == job_ids[4:]
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


def test_settle_leaves_jobs_the_contract_would_refuse(
    world: World, redis_client, prefix: str
) -> None:
    early = committed_jobs(world, 2)
    posted = world.post(n=2)
    s = settler(world, redis_client, prefix)
    report = s.settle(records_of(world), world.now())  # challenge window still open
    assert report == SettlementReport(job_ids=[], tx_hash=None, skipped=[])
    assert list(redis_client.scan_iter(match=prefix + "*")) == []
    world.advance(CHALLENGE + 1)
    assert sorted(s.settle(records_of(world), world.now()).job_ids) == early
    assert {records_of(world)[i].state for i in posted} == {JobState.POSTED}


def test_two_settlers_racing_send_one_tx_per_job(world: World, redis_client, prefix: str) -> None:
    job_ids = committed_jobs(world, 8)
    world.advance(CHALLENGE + 1)
    records = records_of(world)
    now = world.now()
    settlers = [
        settler(world, redis_client, prefix, actor=world.outsider, max_batch=3),
        settler(world, redis_client, prefix, actor=world.clients[1], max_batch=3),
    ]
    barrier = threading.Barrier(len(settlers))
    reports: list[SettlementReport] = []
    errors: list[BaseException] = []

    def run(s: Settler) -> None:
        try:
            barrier.wait()
            reports.append(s.settle(records, now))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in settlers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    sent = [job for r in reports for batch in batches_sent(world, r.tx_hashes) for job in batch]
    assert sorted(sent) == job_ids  # every job in exactly one transaction
    assert sorted(j for r in reports for j in r.job_ids) == job_ids
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


def test_job_final_between_selection_and_send_is_skipped(
    world: World, redis_client, prefix: str
) -> None:
    job_ids = committed_jobs(world, 4)
    world.advance(CHALLENGE + 1)
    selected = records_of(world)
    world.clients[0].finalize(job_ids[1], selected[job_ids[1]])  # someone else settles it first

    s = settler(world, redis_client, prefix)
    report = s.settle(selected, world.now())
    assert report.tx_hash is not None  # the batch went through, the stale entry skipped
    assert world.w3.eth.get_transaction_receipt(report.tx_hash)["status"] == 1
    assert sorted(report.job_ids) == [job_ids[0], *job_ids[2:]]
    assert report.skipped == [job_ids[1]]
    assert redis_client.get(s.key(job_ids[1], selected[job_ids[1]])).startswith("stale:0x")
    assert s.settle(selected, world.now()).tx_hash is None
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


def test_second_run_does_not_resend_while_the_first_is_pending(
    world: World, anvil, redis_client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_ids = committed_jobs(world, 3)
    world.advance(CHALLENGE + 1)
    records = records_of(world)
    first = settler(world, redis_client, prefix, actor=world.outsider)
    second = settler(world, redis_client, prefix, actor=world.clients[1])
    monkeypatch.setattr(world.outsider.sender, "receipt_timeout_s", 0.3)
    anvil.set_automine(False)
    try:
        with pytest.raises(TransactionTimeout):  # sent, no receipt yet: keys stay "sent:"
            first.settle(records, world.now())
        held = {redis_client.get(first.key(i, records[i])) for i in job_ids}
        assert len(held) == 1 and held.pop().startswith("sent:0x")
        pending = second.settle(records, world.now())
        assert pending == SettlementReport(job_ids=[], tx_hash=None, skipped=job_ids)
    finally:
        anvil.set_automine(True)
    anvil.mine(1)  # the first transaction lands
    after = second.settle(records, world.now())
    assert after.tx_hash is None and after.skipped == job_ids
    assert {redis_client.get(first.key(i, records[i]))[:5] for i in job_ids} == {"done:"}
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


# ---------------------------------------------------------------------------- audits


def test_audited_job_draw_recorded_then_void_after_silent_verifier(
    world: World, redis_client, prefix: str
) -> None:
    """Silence never pays: the settler voids a drawn job whose verdict never came."""
    (job_id,) = committed_jobs(world, 1, audit_bps=10_000)
    world.advance(CHALLENGE + 1)
    s = settler(world, redis_client, prefix)
    report = s.settle(records_of(world), world.now())
    assert report.drawn == [job_id] and report.job_ids == []
    assert records_of(world)[job_id].state == JobState.AUDITED
    assert list(redis_client.scan_iter(match=prefix + "*")) == []  # released, not done

    assert s.settle(records_of(world), world.now()).tx_hash is None  # verdict window open
    world.advance(AUDIT + 1)
    voided = s.settle(records_of(world), world.now())
    assert voided.job_ids == [job_id]
    assert records_of(world)[job_id].state == JobState.REFUNDED
    assert paid_count(world) == Counter()


def test_failed_audit_without_appeal_is_slashed_once(
    world: World, redis_client, prefix: str
) -> None:
    (job_id,) = committed_jobs(world, 1, audit_bps=10_000)
    world.advance(CHALLENGE + 1)
    world.verifier_for(job_id).resolve_audit(job_id, False, b"\x07" * 32)
    records = records_of(world)
    assert records[job_id].state == JobState.AUDIT_FAILED
    s = settler(world, redis_client, prefix)
    assert s.settle(records, world.now()).tx_hash is None  # appeal window open
    world.advance(APPEAL + 1)
    report = s.settle(records_of(world), world.now())
    assert report.job_ids == [job_id]
    receipt = world.w3.eth.get_transaction_receipt(report.tx_hash)
    assert receipt["gasUsed"] <= GAS_BASE + GAS_PER_JOB  # the headroom covers a slash
    assert records_of(world)[job_id].state == JobState.SLASHED
    assert s.settle(records, world.now()).tx_hash is None


# ---------------------------------------------------------------------------- gas


def test_gas_headroom_covers_jobs_the_estimate_skips(
    world: World, anvil, redis_client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain clock has passed the challenge window but no block carries it yet: the
    estimate (run in the latest block) skips every job; the transaction (next block) pays
    them all. Without headroom it runs out of gas and its keys are released; with it, it
    pays."""
    job_ids = committed_jobs(world, 6)
    anvil.mine(2)  # the audit draws are available
    anvil._rpc("evm_increaseTime", [CHALLENGE + 5])  # no block mined
    records = records_of(world)
    now = world.now() + CHALLENGE + 5  # the market's clock, ahead of the latest block

    monkeypatch.setattr(settler_module, "GAS_PER_JOB", 0)
    monkeypatch.setattr(settler_module, "GAS_BASE", 0)
    bare = settler(world, redis_client, prefix)
    with pytest.raises(ContractRevert) as failed:
        bare.settle(records, now)
    assert failed.value.tx_hash is not None  # mined and out of gas, not refused at estimation
    assert list(redis_client.scan_iter(match=prefix + "*")) == []  # keys released
    assert paid_count(world) == Counter()

    monkeypatch.undo()
    report = settler(world, redis_client, prefix).settle(records, now)
    assert sorted(report.job_ids) == job_ids
    assert paid_count(world) == Counter({i: 1 for i in job_ids})


def test_settler_rejects_bad_configuration(world: World, redis_client) -> None:
    with pytest.raises(BadInput, match="max_batch"):
        Settler(world.outsider, redis_client, max_batch=0)
    with pytest.raises(BadInput, match="done_ttl_s"):
        Settler(world.outsider, redis_client, done_ttl_s=0)
