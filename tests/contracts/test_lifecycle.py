"""The job lifecycle end to end on anvil: happy paths and edge paths of every stage.

Each test that moves money ends with ``assert_solvent``: the market holds exactly the open
escrows plus every withdrawable balance, the stake manager exactly every stake position, and
each worker's locked stake is the collateral of the jobs it holds.
"""

from __future__ import annotations

import pytest
from web3.logs import DISCARD

from meshcompute.chain.tickets import sign_permit
from meshcompute.core.job import PASS_BOND_REWARDS, JobState
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.errors import ContractRevert
from meshcompute.units import TOKEN
from tests.contracts.helpers import (
    appealed_job,
    assert_solvent,
    deploy,
    events_in,
    failed_job,
    forged,
    market_events,
    reverts,
    send,
)
from tests.contracts.world import FUNDS, STAKE, TEST_PARAMS, World

RESULT = b"\x42" * 32
EVIDENCE = b"\xee" * 32
C, A, P = TEST_PARAMS.challenge_window_s, TEST_PARAMS.audit_window_s, TEST_PARAMS.appeal_window_s
FEE_BPS = TEST_PARAMS.fee_bps


def _withdrawable(world: World, actor) -> int:
    return world.admin.account_of(actor.address).withdrawable


def _batch_committed(world: World, n: int, *, worker=None, audit_bps: int = 0, **kw) -> list[int]:
    """``n`` jobs posted in one batch, assigned with one ticket and committed in one tx."""
    worker = worker or world.workers[0]
    ids = world.post(n=n, **kw) if n > 1 else world.post(**kw)
    world.assign(worker, ids, audit_bps=audit_bps)
    world.commit(worker, ids)
    return ids


def test_finalize_pays_worker_after_challenge_window(world: World) -> None:
    worker = world.workers[0]
    job_id = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)
    record = world.job(job_id)
    assert record.state == JobState.FINALIZED
    pay, _fee = split_reward(record.reward, TEST_PARAMS.fee_bps)
    assert world.admin.account_of(worker.address).withdrawable == pay
    assert_solvent(world)


# ------------------------------------------------------------------------------- posting


def test_postJob_escrows_reward_and_audit_fee(world: World) -> None:
    client = world.clients[0]
    market = world.market.address
    before, market_before = client.balance_of(client.address), client.balance_of(market)
    params = world.params(reward=123, audit_fee=7, collateral=9, audit_bps=42)
    job_id = client.post_job(params)
    record = world.job(job_id)
    assert (record.client, record.reward, record.audit_fee, record.collateral) == (
        client.address,
        123,
        7,
        9,
    )
    assert (record.deadline, record.audit_bps, record.state) == (
        params.deadline,
        42,
        JobState.POSTED,
    )
    assert record.spec_hash == params.spec_hash
    assert client.balance_of(client.address) == before - 130
    assert client.balance_of(market) == market_before + 130
    assert world.admin.hash_job(record) == world.admin.job_digest(job_id)
    assert_solvent(world)


def test_postJobs_posts_consecutive_ids_with_one_transfer(world: World) -> None:
    client = world.clients[1]
    first = client.next_job_id()
    params = [world.params(reward=10 * (i + 1), audit_fee=i) for i in range(4)]
    client.approve(world.market.address, 2**256 - 1)
    receipt = send(client, world.market.functions.postJobs([p.as_tuple() for p in params]))
    posted = events_in(client, receipt, "JobPosted")
    assert [e.args["jobId"] for e in posted] == [first, first + 1, first + 2, first + 3]
    transfers = [
        log
        for log in client.credit.events.Transfer().process_receipt(receipt, errors=DISCARD)
        if log["args"]["to"] == world.market.address
    ]
    assert len(transfers) == 1
    assert transfers[0]["args"]["value"] == sum(p.reward + p.audit_fee for p in params)
    assert client.next_job_id() == first + 4
    assert_solvent(world)


def test_postJobsWithPermit_needs_no_prior_approval(world: World) -> None:
    client = world.clients[0]
    market = world.market.address
    assert client.allowance(client.address, market) == 0
    nonce = world.w3.eth.get_transaction_count(client.address)
    ids = client.post_jobs_with_permit([world.params(), world.params(reward=5)])
    assert world.w3.eth.get_transaction_count(client.address) == nonce + 1  # one transaction
    assert [world.job(i).state for i in ids] == [JobState.POSTED, JobState.POSTED]
    assert client.allowance(client.address, market) == 0  # the permit was for exactly this
    assert_solvent(world)


def test_postJobsWithPermit_uses_allowance_when_permit_was_front_run(world: World) -> None:
    client, outsider = world.clients[0], world.outsider
    credit, market = client.credit, world.market
    params = [world.params()]
    value = params[0].reward + params[0].audit_fee
    permit = sign_permit(
        client.account,
        spender=market.address,
        value=value,
        nonce=int(credit.functions.nonces(client.address).call()),
        deadline=world.now() + 3600,
        chain_id=world.deployment.chain_id,
        token=credit.address,
    )
    args = (permit.value, permit.deadline, permit.v, permit.r, permit.s)
    send(outsider, credit.functions.permit(client.address, market.address, *args))  # front-run
    assert client.allowance(client.address, market.address) == value
    receipt = send(
        client, market.functions.postJobsWithPermit([p.as_tuple() for p in params], *args)
    )
    assert len(events_in(client, receipt, "JobPosted")) == 1
    assert client.allowance(client.address, market.address) == 0
    assert_solvent(world)


def test_postJob_floors_audit_rate_at_min_audit_bps(world: World) -> None:
    admin, client = world.admin, world.clients[0]
    p = TEST_PARAMS
    floored = deploy(
        admin.sender,
        "JobMarket",
        world.deployment.address("MeshCredit"),
        world.deployment.address("StakeManager"),
        world.deployment.address("VerifierRegistry"),
        admin.address,
        admin.address,
        (p.fee_bps, 3000, p.challenge_window_s, p.audit_window_s, p.appeal_window_s,
         p.audit_deterrence),
    )
    client.approve(floored.address, 2**256 - 1)
    receipt = send(
        client,
        floored.functions.postJobs(
            [world.params(audit_bps=100).as_tuple(), world.params(audit_bps=5000).as_tuple()]
        ),
    )
    rates = [
        log["args"]["auditBps"]
        for log in floored.events.JobPosted().process_receipt(receipt, errors=DISCARD)
    ]
    assert rates == [3000, 5000]


# ---------------------------------------------------------------------- assign and commit


def test_assign_then_commitResults_records_the_result(world: World) -> None:
    worker = world.workers[0]
    ids = world.post(n=2, collateral=30)
    world.assign(worker, ids)
    assert worker.stake_of(worker.address).locked == 60
    hashes = [b"\x01" * 32, b"\x02" * 32]
    receipt = worker.commit_results(ids, hashes)
    block = int(receipt["blockNumber"])
    timestamp = int(world.w3.eth.get_block(block)["timestamp"])
    for job_id, result in zip(ids, hashes, strict=True):
        record = world.job(job_id)
        assert record.state == JobState.COMMITTED
        assert (record.result_hash, record.committed_at, record.committed_block) == (
            result,
            timestamp,
            block,
        )
    assert_solvent(world)


def test_assignAndCommit_assigns_and_commits_in_one_transaction(world: World) -> None:
    worker = world.workers[1]
    ids = world.post(n=3, collateral=11)
    ticket, sig = world.ticket(worker, ids, audit_bps=700)
    receipt = worker.assign_and_commit(ticket, sig, [RESULT] * 3)
    # one event per job: JobCommitted carries the lease that JobAssigned would have said
    assert events_in(worker, receipt, "JobAssigned") == []
    committed = events_in(worker, receipt, "JobCommitted")
    assert [e.args["jobId"] for e in committed] == ids
    for e in committed:
        assert (e.args["worker"], e.args["leaseExpiry"], e.args["auditBps"]) == (
            worker.address,
            ticket.lease_expiry,
            700,
        )
    for job_id in ids:
        record = world.job(job_id)
        assert (record.state, record.worker, record.audit_bps) == (
            JobState.COMMITTED,
            worker.address,
            700,
        )
    assert worker.stake_of(worker.address).locked == 33
    assert_solvent(world)


def test_assignAndCommit_takes_over_an_expired_lease_rebuilt_from_its_events(
    world: World,
) -> None:
    """A takeover by assignAndCommit emits LeaseExpired and one JobCommitted; the record
    rebuilt from those events is the one the contract stores."""
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post(collateral=13)
    world.assign(w0, [job_id], lease_s=60, audit_bps=300)
    world.advance(61)
    ticket, sig = world.ticket(w1, [job_id], audit_bps=100, lease_s=900)
    receipt = w1.assign_and_commit(ticket, sig, [RESULT])
    names = [e.name for e in world.admin.events(receipt["blockNumber"], receipt["blockNumber"])]
    assert [n for n in names if n in ("LeaseExpired", "JobAssigned", "JobCommitted")] == [
        "LeaseExpired",
        "JobCommitted",
    ]
    record = world.job(job_id)  # verified against the stored digest
    assert (record.state, record.worker, record.lease_expiry, record.audit_bps) == (
        JobState.COMMITTED,
        w1.address,
        ticket.lease_expiry,
        300,  # a ticket never lowers the rate
    )
    assert record.committed_block == receipt["blockNumber"] and record.result_hash == RESULT
    assert world.admin.hash_job(record) == world.admin.job_digest(job_id)
    assert (w0.stake_of(w0.address).locked, w1.stake_of(w1.address).locked) == (0, 13)
    assert_solvent(world)


@pytest.mark.parametrize("how", ["paid", "slashed", "refunded"])
def test_ended_job_digest_is_cleared(world: World, how: str) -> None:
    """Paying, slashing or refunding a job deletes its digest slot (a storage refund):
    jobDigest reads zero and the record lives on in the events (job_records verifies it as
    ended)."""
    if how == "paid":
        job_id = world.committed_job()
        world.advance(C + 1)
        receipt = world.outsider.finalize(job_id)
    elif how == "slashed":
        job_id = failed_job(world)
        world.advance(P + 1)
        receipt = world.outsider.finalize(job_id)
    else:
        (job_id,) = world.post(deadline=world.now() + 10)
        world.advance(11)
        receipt = world.clients[0].reclaim(job_id)
    assert world.admin.job_digest(job_id) == b"\x00" * 32
    record = world.admin.job_records([job_id], verify=True)[job_id]
    assert record.state.terminal and world.admin.expected_digest(record) == b"\x00" * 32
    # the block before held the open record's digest
    assert world.admin.job_digest(job_id, receipt["blockNumber"] - 1) != b"\x00" * 32
    assert_solvent(world)


# -------------------------------------------------------------------------------- audits


def test_resolveAudit_pass_pays_once_its_dispute_window_closes(world: World) -> None:
    """A pass locks the verifier's bond and holds its fee while the client may dispute it;
    once the appeal window closes undisputed, finalize pays the worker and the verifier."""
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker)
    verifier = world.verifier_for(job_id)
    record = world.job(job_id)
    assert record.state == JobState.AUDITED
    verifier_before = verifier.stake_of(verifier.address)
    receipt = verifier.resolve_audit(job_id, True, EVIDENCE)
    assert events_in(verifier, receipt, "JobPaid") == []
    held = world.job(job_id)
    assert (held.state, held.auditor) == (JobState.AUDIT_PASSED, verifier.address)
    bond = record.reward * PASS_BOND_REWARDS
    assert verifier.stake_of(verifier.address).locked == verifier_before.locked + bond
    assert _withdrawable(world, verifier) == 0
    assert_solvent(world)
    with reverts("NotYetSettleable"):
        world.outsider.finalize(job_id)
    world.advance(P + 1)
    receipt = world.outsider.finalize(job_id)
    pay, fee = split_reward(record.reward, FEE_BPS)
    (paid,) = events_in(verifier, receipt, "JobPaid")
    assert (paid.args["amount"], paid.args["fee"], paid.args["audited"]) == (pay, fee, True)
    (fee_paid,) = events_in(verifier, receipt, "AuditFeePaid")
    assert (fee_paid.args["verifier"], fee_paid.args["amount"]) == (verifier.address,
                                                                    record.audit_fee)
    assert _withdrawable(world, worker) == pay
    assert _withdrawable(world, verifier) == record.audit_fee
    assert _withdrawable(world, world.clients[0]) == 0  # the audit fee was earned
    assert _withdrawable(world, world.admin) == fee
    final = world.job(job_id)
    assert (final.state, final.auditor) == (JobState.FINALIZED, verifier.address)
    assert worker.stake_of(worker.address).locked == 0
    assert verifier.stake_of(verifier.address) == verifier_before
    assert worker.worker_record(worker.address).audits_passed == 1
    assert worker.worker_record(worker.address).completed == 1
    assert_solvent(world)


def _disputed_job(world: World):
    worker, client = world.workers[0], world.clients[0]
    job_id = world.audited_job(worker=worker)
    first = world.verifier_for(job_id)
    first.resolve_audit(job_id, True, EVIDENCE)
    with reverts("NotJobClient"):
        worker.appeal(job_id)  # only the client disputes a pass
    client_balance = client.balance_of(client.address)
    receipt = client.dispute(job_id)
    (appealed,) = events_in(client, receipt, "AuditAppealed")
    assert appealed.args["appellant"] == client.address
    record = world.job(job_id)
    assert record.state == JobState.DISPUTED
    assert client.balance_of(client.address) == client_balance - record.audit_fee  # the bond
    assert_solvent(world)
    return job_id, record


@pytest.mark.parametrize("pass_upheld", [True, False], ids=["upheld", "overturned"])
def test_disputed_pass_is_judged_by_a_second_verifier(world: World, pass_upheld: bool) -> None:
    """The client disputes a pass (a canary caught a lazy verifier, or its own check
    disagrees). Upheld: the worker and the first verifier are paid, the appeal verifier earns
    the client's dispute bond. Overturned: the worker is slashed, the passing verifier loses
    its fee (to the appeal verifier) and its bond (to the client), the client's bond comes
    back."""
    worker, client = world.workers[0], world.clients[0]
    job_id, record = _disputed_job(world)
    first = world.auditor_of(job_id)
    second = world.other_verifier(first)
    assert world.verifier_for(job_id).address == second.address
    first_before = first.stake_of(first.address)
    admin_before = _withdrawable(world, world.admin)
    with reverts("VerifierConflict"):
        first.resolve_appeal(job_id, True, EVIDENCE)
    receipt = second.resolve_appeal(job_id, pass_upheld, EVIDENCE)
    first_after = first.stake_of(first.address)
    stake = worker.stake_of(worker.address)
    if pass_upheld:
        pay, fee = split_reward(record.reward, FEE_BPS)
        assert world.job(job_id).state == JobState.FINALIZED
        assert _withdrawable(world, worker) == pay
        assert _withdrawable(world, first) == record.audit_fee
        assert _withdrawable(world, second) == record.audit_fee  # the dispute bond
        assert _withdrawable(world, client) == 0
        bond = record.reward * PASS_BOND_REWARDS
        assert (first_after.free, first_after.locked) == (first_before.free + bond,
                                                          first_before.locked - bond)
        assert _withdrawable(world, world.admin) - admin_before == fee
        assert worker.worker_record(worker.address).audits_passed == 1
    else:
        compensation, remainder = slash_split(record.collateral, record.audit_fee)
        assert world.job(job_id).state == JobState.SLASHED
        bond = record.reward * PASS_BOND_REWARDS
        (slashed,) = events_in(second, receipt, "VerifierSlashed")
        assert (slashed.args["verifier"], slashed.args["amount"],
                slashed.args["beneficiary"]) == (first.address, bond, client.address)
        assert _withdrawable(world, first) == 0  # a wrong pass earns nothing
        assert _withdrawable(world, second) == record.audit_fee
        assert _withdrawable(world, worker) == 0
        # reward back, compensation, its dispute bond back, and the lazy verifier's bond
        assert _withdrawable(world, client) == (record.reward + compensation + record.audit_fee
                                                + bond)
        assert (first_after.free, first_after.locked) == (first_before.free,
                                                          first_before.locked - bond)
        assert first_after.slashed == first_before.slashed + bond
        assert _withdrawable(world, world.admin) - admin_before == remainder
        assert stake.slashed == record.collateral
        assert worker.worker_record(worker.address).slashed == 1
    assert_solvent(world)


def test_disputed_pass_without_appeal_verdict_is_void_and_costs_the_client_its_bond(
    world: World,
) -> None:
    """Silence never pays: a disputed pass that no appeal verdict confirms in time is not paid
    (the job ends Refunded). The worker gets its collateral back, the passing verifier its fee
    and its bond, the client its reward but not its dispute bond (to the protocol): a client
    cannot get results free by disputing every pass while verifiers are slow."""
    worker, client = world.workers[0], world.clients[0]
    job_id, record = _disputed_job(world)
    first = world.auditor_of(job_id)
    admin_before = _withdrawable(world, world.admin)
    with reverts("NotYetSettleable"):
        world.outsider.finalize(job_id)
    world.advance(P + A + 1)
    receipt = world.outsider.finalize(job_id)
    assert world.job(job_id).state == JobState.REFUNDED
    assert events_in(world.outsider, receipt, "JobPaid") == []
    assert _withdrawable(world, worker) == 0
    assert worker.stake_of(worker.address).locked == 0
    assert _withdrawable(world, first) == record.audit_fee
    assert first.stake_of(first.address).locked == 0
    assert _withdrawable(world, client) == record.reward
    assert _withdrawable(world, world.admin) - admin_before == record.audit_fee  # the bond
    assert worker.worker_record(worker.address).audits_passed == 0
    assert_solvent(world)


def test_dispute_window_closes(world: World) -> None:
    client = world.clients[0]
    job_id = world.audited_job(worker=world.workers[0])
    world.verifier_for(job_id).resolve_audit(job_id, True, EVIDENCE)
    world.advance(P + 1)
    with reverts("WindowClosed"):
        client.dispute(job_id)


def test_resolveAudit_takes_the_draw_of_a_committed_job(world: World) -> None:
    """A verifier need not wait for finalize to record the draw."""
    job_id = world.committed_job(audit_bps=10_000)
    world.chain.mine(2)
    verifier = world.verifier_for(job_id)
    receipt = verifier.resolve_audit(job_id, False, EVIDENCE)
    assert [e.args["audited"] for e in events_in(verifier, receipt, "AuditDrawn")] == [True]
    assert world.job(job_id).state == JobState.AUDIT_FAILED
    assert_solvent(world)


@pytest.mark.parametrize("worker_wins", [True, False], ids=["worker_wins", "worker_loses"])
def test_resolveAppeal_by_second_verifier(world: World, worker_wins: bool) -> None:
    """The first verdict's fee is held and its bond (the reward) locked while the appeal is
    open. Overturned: the appeal verifier earns the held fee, the worker the first verifier's
    bond. Upheld: the first verifier earns its fee and gets its bond back, the appeal verifier
    is paid up to the audit fee from the slashed collateral."""
    worker, client = world.workers[0], world.clients[0]
    job_id = appealed_job(world, worker=worker)
    first = world.auditor_of(job_id)
    second = world.other_verifier(first)
    record = world.job(job_id)
    assert (record.state, record.auditor) == (JobState.APPEALED, first.address)
    assert _withdrawable(world, first) == 0  # held until the failure stands
    assert first.stake_of(first.address).locked == record.reward  # the verifier's bond
    admin_before = _withdrawable(world, world.admin)
    stake_before = worker.stake_of(worker.address)
    first_before = first.stake_of(first.address)
    second.resolve_appeal(job_id, worker_wins, EVIDENCE)
    final = world.job(job_id)
    stake = worker.stake_of(worker.address)
    first_after = first.stake_of(first.address)
    if worker_wins:
        pay, fee = split_reward(record.reward, FEE_BPS)
        assert final.state == JobState.FINALIZED
        assert _withdrawable(world, first) == 0  # an overturned verdict earns nothing
        assert _withdrawable(world, second) == record.audit_fee
        assert _withdrawable(world, worker) == pay + record.reward  # pay and the bond
        assert (first_after.locked, first_after.slashed) == (0, first_before.slashed + record.reward)
        assert first_after.free == first_before.free
        assert _withdrawable(world, client) == 0
        assert _withdrawable(world, world.admin) - admin_before == fee
        assert (stake.free, stake.locked) == (stake_before.free + record.collateral, 0)
        assert worker.worker_record(worker.address).audits_passed == 1
    else:
        compensation, remainder = slash_split(record.collateral, record.audit_fee)
        appeal_fee = min(remainder, record.audit_fee)
        assert final.state == JobState.SLASHED
        assert _withdrawable(world, first) == record.audit_fee
        assert (first_after.free, first_after.locked) == (first_before.free + record.reward, 0)
        assert _withdrawable(world, second) == appeal_fee
        assert _withdrawable(world, worker) == 0
        assert _withdrawable(world, client) == record.reward + compensation
        assert _withdrawable(world, world.admin) - admin_before == remainder - appeal_fee
        assert (stake.free, stake.locked) == (stake_before.free, 0)
        assert stake.slashed == record.collateral
        assert worker.worker_record(worker.address).slashed == 1
    assert_solvent(world)


@pytest.mark.parametrize(
    "collateral",
    [0, 5 * TOKEN, 10 * TOKEN, 500 * TOKEN],
    ids=["none", "below_fee", "equal_fee", "above_fee"],
)
def test_finalize_slashes_failed_audit_not_appealed(world: World, collateral: int) -> None:
    worker, client = world.workers[0], world.clients[0]
    job_id = failed_job(world, worker=worker, collateral=collateral)
    record = world.job(job_id)
    world.advance(P + 1)
    admin_before = _withdrawable(world, world.admin)
    stakes_balance = world.admin.balance_of(world.deployment.address("StakeManager"))
    receipt = world.outsider.finalize(job_id)
    paid = record.reward + record.audit_fee
    compensation = min(collateral, record.audit_fee)
    (slashed,) = events_in(world.outsider, receipt, "JobSlashed")
    assert (slashed.args["slashed"], slashed.args["clientCompensation"]) == (
        collateral,
        compensation,
    )
    assert world.job(job_id).state == JobState.SLASHED
    assert _withdrawable(world, client) == record.reward + compensation
    assert _withdrawable(world, client) <= paid  # a slash never makes the client richer
    assert _withdrawable(world, world.admin) - admin_before == collateral - compensation
    position = worker.stake_of(worker.address)
    assert (position.free, position.locked, position.slashed) == (
        STAKE - collateral,
        0,
        collateral,
    )
    assert world.admin.balance_of(world.deployment.address("StakeManager")) == (
        stakes_balance - collateral
    )
    assert worker.worker_record(worker.address).slashed == 1
    assert_solvent(world)


def test_finalize_voids_appealed_job_without_appeal_verdict(world: World) -> None:
    """Silence decides nothing: an appeal no verdict judged in time leaves the job void, never
    slashed (the worker keeps its collateral; the silent appeal verifier pays for it, see
    test_registry.py)."""
    worker, client = world.workers[0], world.clients[0]
    job_id = appealed_job(world, worker=worker)
    record = world.job(job_id)
    world.advance(P + A + 1)
    world.outsider.finalize(job_id)
    assert world.job(job_id).state == JobState.REFUNDED
    assert _withdrawable(world, client) == record.reward
    assert _withdrawable(world, world.auditor_of(job_id)) == record.audit_fee
    assert worker.stake_of(worker.address).slashed == 0
    assert worker.worker_record(worker.address).slashed == 0
    assert_solvent(world)


def test_finalize_voids_audited_job_without_verdict(world: World) -> None:
    """Silence never pays: a job drawn for audit whose verdict never came is not paid; the
    client gets its whole escrow back and the worker its collateral."""
    worker, client = world.workers[0], world.clients[0]
    job_id = world.audited_job(worker=worker)
    record = world.job(job_id)
    stake_before = worker.stake_of(worker.address)
    admin_before = _withdrawable(world, world.admin)
    world.advance(A)
    receipt = world.outsider.finalize(job_id)
    assert events_in(world.outsider, receipt, "JobPaid") == []
    (refunded,) = events_in(world.outsider, receipt, "JobRefunded")
    assert (refunded.args["jobId"], refunded.args["amount"]) == (
        job_id, record.reward + record.audit_fee)
    assert world.job(job_id).state == JobState.REFUNDED
    assert world.outsider.job_digest(job_id) == b"\x00" * 32
    assert _withdrawable(world, worker) == 0
    assert _withdrawable(world, client) == record.reward + record.audit_fee
    assert _withdrawable(world, world.admin) == admin_before
    assert all(_withdrawable(world, v) == 0 for v in world.verifiers)
    stake = worker.stake_of(worker.address)
    assert (stake.free, stake.locked) == (stake_before.free + record.collateral, 0)
    assert worker.worker_record(worker.address).completed == 0
    assert_solvent(world)


def test_finalize_pays_unaudited_job_and_refunds_audit_fee(world: World) -> None:
    worker, client = world.workers[0], world.clients[0]
    job_id = world.committed_job(worker=worker)
    record = world.job(job_id)
    world.advance(C)
    world.outsider.finalize(job_id)
    pay, fee = split_reward(record.reward, FEE_BPS)
    assert _withdrawable(world, worker) == pay
    assert _withdrawable(world, client) == record.audit_fee
    assert _withdrawable(world, world.admin) == fee
    assert worker.worker_record(worker.address).completed == 1
    assert worker.account_of(worker.address).earned == pay
    assert_solvent(world)


# ------------------------------------------------------------------------------ reclaim


def test_reclaim_refunds_posted_job_after_deadline(world: World) -> None:
    client = world.clients[0]
    (job_id,) = world.post(client, deadline=world.now() + 100)
    record = world.job(job_id)
    before = client.balance_of(client.address)
    world.advance(101)
    receipt = client.reclaim(job_id)
    (refund,) = events_in(client, receipt, "JobRefunded")
    assert refund.args["amount"] == record.reward + record.audit_fee
    assert client.balance_of(client.address) == before + record.reward + record.audit_fee
    assert world.job(job_id).state == JobState.REFUNDED
    assert _withdrawable(world, client) == 0  # paid directly, not credited
    assert_solvent(world)


def test_reclaim_refunds_assigned_job_unlocks_collateral_and_counts_miss(world: World) -> None:
    client, worker = world.clients[0], world.workers[2]
    (job_id,) = world.post(client, deadline=world.now() + 100, collateral=77)
    world.assign(worker, [job_id], lease_s=1000)  # a lease past the deadline changes nothing
    assert worker.stake_of(worker.address).locked == 77
    record = world.job(job_id)
    before = client.balance_of(client.address)
    world.advance(101)
    receipt = client.reclaim(job_id)
    expired = events_in(client, receipt, "LeaseExpired")
    assert [e.args["worker"] for e in expired] == [worker.address]
    assert client.balance_of(client.address) == before + record.reward + record.audit_fee
    position = worker.stake_of(worker.address)
    assert (position.free, position.locked) == (STAKE, 0)
    assert worker.worker_record(worker.address).missed == 1
    assert_solvent(world)


def test_reclaim_works_while_paused(world: World) -> None:
    client, worker = world.clients[0], world.workers[0]
    posted, assigned = world.post(client, n=2, deadline=world.now() + 100)
    world.assign(worker, [assigned])
    world.admin.pause()
    world.advance(101)
    client.reclaim(posted)
    client.reclaim(assigned)
    assert world.job(posted).state == world.job(assigned).state == JobState.REFUNDED
    assert worker.stake_of(worker.address).locked == 0
    assert_solvent(world)


# ------------------------------------------------------------------------- pause switches


def test_finalize_resolveAudit_and_withdraw_work_while_paused(world: World) -> None:
    worker = world.workers[0]
    paid = world.committed_job(worker=worker)
    audited = world.audited_job(worker=world.workers[1])
    verifier = world.verifier_for(audited)
    world.admin.pause()
    assert world.market.functions.paused().call() is True
    world.outsider.finalize(paid)
    assert world.job(paid).state == JobState.FINALIZED
    verifier.resolve_audit(audited, False, EVIDENCE)  # verdicts still come in
    world.advance(P + 1)
    world.outsider.finalize(audited)  # and a standing failure is slashed
    assert world.job(audited).state == JobState.SLASHED
    worker.withdraw()
    assert _withdrawable(world, worker) == 0
    world.admin.unpause()
    world.post()  # new work flows again
    assert_solvent(world)


def test_appeal_right_survives_a_pause(world: World) -> None:
    """The appeal window keeps running during a pause and settlement is not paused, so the
    appeal must not be either: a pauser cannot deny a worker its appeal."""
    worker = world.workers[0]
    job_id = failed_job(world, worker=worker)
    world.admin.pause()
    worker.appeal(job_id)
    assert world.job(job_id).state == JobState.APPEALED
    world.advance(P + 1)
    world.admin.unpause()
    with reverts("NotYetSettleable"):  # the appeal verdict's window is still open
        world.outsider.finalize(job_id)
    assert world.job(job_id).state == JobState.APPEALED


def test_setFeeRecipient_redirects_future_fees(world: World) -> None:
    recipient = world.outsider
    first = world.committed_job()
    second = world.committed_job(worker=world.workers[1])
    world.advance(C)
    world.admin.finalize(first)
    send(world.admin, world.market.functions.setFeeRecipient(recipient.address))
    assert world.market.functions.feeRecipient().call() == recipient.address
    world.admin.finalize(second)
    _, fee = split_reward(100 * TOKEN, FEE_BPS)
    assert _withdrawable(world, world.admin) == fee
    assert _withdrawable(world, recipient) == fee
    assert_solvent(world)


# ------------------------------------------------------------------------- finalizeBatch


def test_finalizeBatch_skips_stale_and_unsettleable_jobs_and_settles_the_rest(
    world: World,
) -> None:
    worker, outsider = world.workers[0], world.outsider
    ready = world.committed_job(worker=worker)
    drawn = world.committed_job(worker=worker, audit_bps=10_000)
    forged_id = world.committed_job(worker=worker)
    (posted,) = world.post()
    world.advance(C)
    early = world.committed_job(worker=worker)  # its challenge window is still open
    records = {i: world.job(i) for i in (ready, drawn, forged_id, posted, early)}
    ids = [ready, drawn, forged_id, posted, early, 10**6]
    batch = [
        records[ready],
        records[drawn],
        forged(records[forged_id], reward=1),  # forged: skipped, not paid 1
        records[posted],
        records[early],
        records[ready],  # unknown id 10**6
    ]
    fn = world.market.functions.finalizeBatch(ids, [r.as_tuple() for r in batch])
    assert fn.call({"from": outsider.address}) == 1
    receipt = outsider.finalize_batch(ids, batch)
    assert [e.args["jobId"] for e in events_in(outsider, receipt, "JobPaid")] == [ready]
    assert [e.args["jobId"] for e in events_in(outsider, receipt, "AuditDrawn")] == [drawn]
    states = {i: world.job(i).state for i in records}
    assert states == {
        ready: JobState.FINALIZED,
        drawn: JobState.AUDITED,
        forged_id: JobState.COMMITTED,
        posted: JobState.POSTED,
        early: JobState.COMMITTED,
    }
    pay, _ = split_reward(records[ready].reward, FEE_BPS)
    assert _withdrawable(world, worker) == pay
    assert_solvent(world)


def test_finalizeBatch_twice_pays_each_job_exactly_once(world: World) -> None:
    w0, w1, outsider = world.workers[0], world.workers[1], world.outsider
    ids = _batch_committed(world, 3, worker=w0) + _batch_committed(world, 2, worker=w1)
    world.advance(C)
    records = [world.job(i) for i in ids]
    outsider.finalize_batch(ids, records)
    credited = {a.address: _withdrawable(world, a) for a in world.actors}
    # The same (now stale) records, then the current (finalized) ones, then mixed in a
    # batch with duplicates: nobody is paid again.
    outsider.finalize_batch(ids, records)
    outsider.finalize_batch(ids)
    outsider.finalize_batch(ids + ids, records + [world.job(i) for i in ids])
    assert {a.address: _withdrawable(world, a) for a in world.actors} == credited
    paid = [e.args["jobId"] for e in market_events(world.admin, "JobPaid")]
    assert sorted(paid) == sorted(ids)
    assert_solvent(world)


def test_finalizeBatch_with_duplicate_job_pays_it_once(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = _batch_committed(world, 1, worker=worker)
    world.advance(C)
    record = world.job(job_id)
    fn = world.market.functions.finalizeBatch([job_id, job_id], [record.as_tuple()] * 2)
    assert fn.call() == 1
    world.outsider.finalize_batch([job_id, job_id], [record, record])
    assert len(market_events(world.admin, "JobPaid")) == 1
    assert _withdrawable(world, worker) == split_reward(record.reward, FEE_BPS)[0]
    assert_solvent(world)


def test_finalizeBatch_credits_interleaved_workers_and_clients(world: World) -> None:
    (c0, c1), (w0, w1, w2) = world.clients, world.workers
    plan = [(c0, w0, 101), (c1, w1, 203), (c0, w0, 307), (c1, w0, 401), (c0, w2, 509)]
    ids = []
    for client, worker, reward in plan:
        (job_id,) = world.post(client, reward=reward * TOKEN + 1, audit_fee=reward, collateral=3)
        world.assign(worker, [job_id])
        world.commit(worker, [job_id])
        ids.append(job_id)
    world.advance(C)
    records = [world.job(i) for i in ids]
    world.outsider.finalize_batch(ids, records)
    expected_pay: dict[str, int] = {}
    expected_refund: dict[str, int] = {}
    fees = 0
    for (client, worker, _), record in zip(plan, records, strict=True):
        pay, fee = split_reward(record.reward, FEE_BPS)
        expected_pay[worker.address] = expected_pay.get(worker.address, 0) + pay
        expected_refund[client.address] = expected_refund.get(client.address, 0) + record.audit_fee
        fees += fee
    for worker in (w0, w1, w2):
        assert _withdrawable(world, worker) == expected_pay[worker.address]
        assert worker.stake_of(worker.address).locked == 0
    assert w0.worker_record(w0.address).completed == 3
    for client in (c0, c1):
        assert _withdrawable(world, client) == expected_refund[client.address]
    assert _withdrawable(world, world.admin) == fees
    assert_solvent(world)


# --------------------------------------------------------------------------- money math


def test_finalize_fee_is_rounded_up_never_favouring_the_payee(world: World) -> None:
    rewards = [1, 3, 39, 40, 41, 399, 401, 10**18 + 1, 123_456_789_012_345_679]
    client, worker = world.clients[0], world.workers[0]
    ids = client.post_jobs([world.params(reward=r, audit_fee=0, collateral=0) for r in rewards])
    world.assign(worker, ids)
    world.commit(worker, ids)
    world.advance(C)
    receipt = world.outsider.finalize_batch(ids)
    paid = {e.args["jobId"]: e.args for e in events_in(world.outsider, receipt, "JobPaid")}
    for job_id, reward in zip(ids, rewards, strict=True):
        fee = paid[job_id]["fee"]
        assert fee == -(-reward * FEE_BPS // 10_000)  # ceil
        assert fee * 10_000 >= reward * FEE_BPS
        assert paid[job_id]["amount"] + fee == reward
        assert (paid[job_id]["amount"], fee) == split_reward(reward, FEE_BPS)
    assert paid[ids[0]]["fee"] == 1 and paid[ids[0]]["amount"] == 0  # 1 wei: all fee
    assert _withdrawable(world, world.admin) == sum(a["fee"] for a in paid.values())
    assert_solvent(world)


def test_withdraw_pays_exactly_the_withdrawable_balance(world: World) -> None:
    worker = world.workers[0]
    ids = _batch_committed(world, 2, worker=worker)
    world.advance(C)
    world.outsider.finalize_batch(ids)
    owed = _withdrawable(world, worker)
    earned = worker.account_of(worker.address).earned
    before = worker.balance_of(worker.address)
    receipt = worker.withdraw()
    (event,) = events_in(worker, receipt, "Withdrawn")
    assert event.args["amount"] == owed
    assert worker.balance_of(worker.address) == before + owed
    account = worker.account_of(worker.address)
    assert (account.withdrawable, account.earned, account.withdrawn) == (0, earned, owed)
    assert_solvent(world)


def test_unstake_then_withdrawUnbonded_after_delay(world: World) -> None:
    worker = world.workers[0]
    stakes = world.deployment.address("StakeManager")
    balance, pool = worker.balance_of(worker.address), worker.balance_of(stakes)
    worker.unstake(1_000 * TOKEN)
    position = worker.stake_of(worker.address)
    assert (position.free, position.unbonding) == (STAKE - 1_000 * TOKEN, 1_000 * TOKEN)
    assert position.release_at == world.now() + TEST_PARAMS.unbonding_delay_s
    assert_solvent(world)
    world.advance(TEST_PARAMS.unbonding_delay_s)
    worker.withdraw_unbonded()
    assert worker.balance_of(worker.address) == balance + 1_000 * TOKEN
    assert worker.balance_of(stakes) == pool - 1_000 * TOKEN
    position = worker.stake_of(worker.address)
    assert (position.unbonding, position.release_at) == (0, 0)
    assert_solvent(world)


def test_unstake_again_restarts_the_delay_for_everything(world: World) -> None:
    worker = world.workers[0]
    delay = TEST_PARAMS.unbonding_delay_s
    worker.unstake(10)
    world.advance(delay // 2)
    worker.unstake(5)
    release = world.now() + delay
    assert worker.stake_of(worker.address).release_at == release
    world.advance(delay // 2 + 10)
    with reverts("StillUnbonding", releaseAt=release):
        worker.withdraw_unbonded()
    world.advance(delay // 2)
    before = worker.balance_of(worker.address)
    worker.withdraw_unbonded()
    assert worker.balance_of(worker.address) == before + 15
    assert_solvent(world)


def test_stake_adds_free_stake(world: World) -> None:
    outsider = world.outsider
    outsider.stake(123)
    outsider.stake(1)
    position = outsider.stake_of(outsider.address)
    assert (position.free, position.locked, position.unbonding) == (124, 0, 0)
    assert outsider.balance_of(outsider.address) == FUNDS - 124
    assert_solvent(world)


U128_MAX = 2**128 - 1


def test_unstake_never_wraps_the_unbonding_amount(world: World) -> None:
    outsider = world.outsider
    world.admin.mint(outsider.address, 2 * U128_MAX)
    try:
        outsider.stake(U128_MAX)
        outsider.unstake(U128_MAX)
        outsider.stake(U128_MAX)
        outsider.unstake(1)
    except ContractRevert:
        return  # refusing a position above uint128 would be a correct fix
    position = outsider.stake_of(outsider.address)
    assert position.unbonding == U128_MAX + 1
    assert_solvent(world)


def test_unlock_never_wraps_free_stake(world: World) -> None:
    worker = world.workers[0]
    collateral = 50 * TOKEN
    job_id = world.committed_job(worker=worker, collateral=collateral)
    free = worker.stake_of(worker.address).free
    world.admin.mint(worker.address, U128_MAX)
    try:
        worker.stake(U128_MAX - free)  # free is now 2**128-1, locked still holds C
    except ContractRevert:
        return  # refusing free + locked above uint128 would be a correct fix
    world.advance(C)
    world.outsider.finalize(job_id)  # unlocks C
    position = worker.stake_of(worker.address)
    assert position.free + position.locked == U128_MAX + collateral
    assert_solvent(world)


# ---------------------------------------------------------------------------- audit draw


def test_finalizeBatch_at_zero_audit_bps_never_audits(world: World) -> None:
    ids = _batch_committed(world, 12, audit_bps=0)
    world.advance(C)
    for job_id in ids:
        assert world.admin.audit_status(job_id, world.job(job_id)) == (True, False)
    receipt = world.outsider.finalize_batch(ids)
    assert len(events_in(world.outsider, receipt, "JobPaid")) == len(ids)
    assert events_in(world.outsider, receipt, "AuditDrawn") == []
    assert_solvent(world)


def test_finalizeBatch_at_full_audit_bps_always_audits(world: World) -> None:
    ids = _batch_committed(world, 12, audit_bps=10_000)
    world.advance(C)
    for job_id in ids:
        assert world.admin.audit_status(job_id, world.job(job_id)) == (True, True)
    receipt = world.outsider.finalize_batch(ids)
    assert events_in(world.outsider, receipt, "JobPaid") == []
    assert len(events_in(world.outsider, receipt, "AuditDrawn")) == len(ids)
    assert {world.job(i).state for i in ids} == {JobState.AUDITED}
    assert_solvent(world)


def test_auditStatus_predicts_the_draw(world: World) -> None:
    """For an intermediate rate the outcome of finalize (and of resolveAudit) is the one
    auditStatus reports."""
    ids = _batch_committed(world, 16, audit_bps=5_000)
    assert world.admin.audit_status(ids[0], world.job(ids[0])) == (False, False)  # not yet
    world.advance(C)
    predicted = {i: world.admin.audit_status(i, world.job(i)) for i in ids}
    assert all(drawable for drawable, _ in predicted.values())
    audited = {i for i, (_, a) in predicted.items() if a}
    assert 0 < len(audited) < len(ids), "16 fair draws should not all agree"
    not_drawn = next(i for i in ids if i not in audited)
    with reverts("NotDrawnForAudit", jobId=not_drawn):
        world.verifiers[0].resolve_audit(not_drawn, True, EVIDENCE)
    world.outsider.finalize_batch(ids)
    for job_id in ids:
        expected = JobState.AUDITED if job_id in audited else JobState.FINALIZED
        assert world.job(job_id).state == expected
        # and auditStatus keeps reporting a recorded draw as audited
        assert world.admin.audit_status(job_id, world.job(job_id))[1] == (job_id in audited)
    assert_solvent(world)


@pytest.mark.parametrize("audit_bps", [0, 10_000])
def test_a_draw_older_than_256_blocks_is_still_the_same_draw(
    world: World, audit_bps: int
) -> None:
    """Past blockhash's 256 blocks the seed comes from the EIP-2935 history: a late settlement
    neither escapes an audit nor turns an undrawn job into an audited one."""
    worker, client = world.workers[0], world.clients[0]
    job_id = world.committed_job(worker=worker, audit_bps=audit_bps)
    world.advance(C, blocks=300)
    record = world.job(job_id)
    drawn = audit_bps == 10_000
    assert world.admin.audit_status(job_id, record) == (True, drawn)
    receipt = world.outsider.finalize(job_id)
    assert [e.args["audited"] for e in events_in(world.outsider, receipt, "AuditDrawn")] == (
        [True] if drawn else [])
    if not drawn:
        assert world.job(job_id).state == JobState.FINALIZED
        assert _withdrawable(world, client) == record.audit_fee  # the fee back, undrawn
        assert_solvent(world)
        return
    assert world.job(job_id).state == JobState.AUDITED
    world.advance(A + 1)
    world.outsider.finalize(job_id)  # no verdict came: void, the whole escrow back
    assert world.job(job_id).state == JobState.REFUNDED
    assert _withdrawable(world, client) == record.reward + record.audit_fee
    assert_solvent(world)


def test_assign_ticket_raises_but_never_lowers_the_audit_rate(world: World) -> None:
    worker = world.workers[0]
    low, high = world.post(n=2, audit_bps=3000)
    world.assign(worker, [low], audit_bps=1000)
    world.assign(worker, [high], audit_bps=9000)
    assert world.job(low).audit_bps == 3000
    assert world.job(high).audit_bps == 9000


def test_workerRecord_counts_each_outcome(world: World) -> None:
    worker = world.workers[0]
    world.committed_job(worker=worker)
    passed = world.audited_job(worker=worker)
    world.verifier_for(passed).resolve_audit(passed, True, EVIDENCE)
    failed = failed_job(world, worker=worker)
    (missed,) = world.post(deadline=world.now() + 50)
    world.assign(worker, [missed])
    world.advance(P + 1)
    world.outsider.finalize(failed)
    world.outsider.finalize(passed)  # the pass stands once its dispute window closed
    world.clients[0].reclaim(missed)
    record = worker.worker_record(worker.address)
    assert (record.completed, record.missed, record.slashed, record.audits_passed) == (1, 1, 1, 1)
    assert_solvent(world)


def test_assert_solvent_detects_an_unaccounted_token(world: World) -> None:
    """The solvency check is an equality: a token sent to the market outside any job (or a
    stake position that does not add up) makes it fail."""
    world.committed_job()
    assert_solvent(world)
    world.outsider.transfer(world.market.address, 1)
    with pytest.raises(AssertionError, match="JobMarket holds"):
        assert_solvent(world)
