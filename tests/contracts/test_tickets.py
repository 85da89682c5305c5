"""EIP-712 assignment tickets: what a valid ticket does, and every way a ticket is refused
(replay, another chain, another contract, expiry, another worker, another signer, tampering,
malformed signatures); the lease takeover; Python and contract digests agreeing."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from meshcompute.chain.deploy import ASSIGNER_ROLE
from meshcompute.chain.tickets import (
    DOMAIN_VERSION,
    JOB_MARKET_DOMAIN_NAME,
    AssignTicket,
    recover_ticket_signer,
    sign_ticket,
)
from meshcompute.core.job import JobState
from meshcompute.errors import NotPermitted, StaleJobRecord, TooLate, WrongJobState
from tests.contracts.helpers import (
    ZERO,
    assert_solvent,
    deploy,
    events_in,
    forged,
    market_events,
    reverts,
    send,
)
from tests.contracts.world import STAKE, TEST_PARAMS, World

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
RESULT = b"\x42" * 32


def _sign(world: World, ticket: AssignTicket, **kw) -> bytes:
    return sign_ticket(
        ticket,
        kw.get("signer", world.assigner),
        chain_id=kw.get("chain_id", world.deployment.chain_id),
        job_market=kw.get("job_market", world.deployment.address("JobMarket")),
    )


def _recovered(world: World, ticket: AssignTicket, signature: bytes) -> str:
    """Who the contract will see as the signer (its own domain)."""
    return recover_ticket_signer(
        ticket,
        signature,
        chain_id=world.deployment.chain_id,
        job_market=world.deployment.address("JobMarket"),
    )


# ------------------------------------------------------------------------------ valid


def test_assign_with_valid_ticket_assigns_jobs_and_locks_collateral(world: World) -> None:
    worker = world.workers[0]
    ids = world.post(n=3, collateral=7)
    ticket, sig = world.ticket(worker, ids, audit_bps=1234, lease_s=900)
    receipt = worker.assign(ticket, sig)
    for job_id in ids:
        record = world.job(job_id)
        assert record.state == JobState.ASSIGNED
        assert record.worker == worker.address
        assert record.lease_expiry == ticket.lease_expiry
        assert record.audit_bps == 1234
    assigned = events_in(worker, receipt, "JobAssigned")
    assert [e.args["jobId"] for e in assigned] == ids
    position = worker.stake_of(worker.address)
    assert (position.free, position.locked) == (STAKE - 21, 21)
    assert_solvent(world)


# ----------------------------------------------------------------------------- replay


def test_assign_replay_of_used_ticket_reverts(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    posted = world.job(job_id)
    ticket, sig = world.ticket(worker, [job_id])
    worker.assign(ticket, sig)
    # Replaying with the record the ticket was first used on: that record is stale.
    with reverts("JobRecordMismatch", StaleJobRecord, jobId=job_id):
        worker.assign(ticket, sig, records=[posted])
    # While the worker still holds the job a replay is an idempotent renewal: same lease,
    # nothing locked twice.
    locked = worker.stake_of(worker.address).locked
    held = world.job(job_id)
    worker.assign(ticket, sig)
    assert world.job(job_id) == held
    assert worker.stake_of(worker.address).locked == locked
    # Once the result is committed the ticket is spent.
    world.commit(worker, [job_id])
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=JobState.COMMITTED):
        worker.assign(ticket, sig)
    assert_solvent(world)


def test_assign_replay_of_ticket_with_duplicate_job_id_cannot_lock_twice(world: World) -> None:
    """A ticket listing a job twice: the second entry must carry the record as updated by
    the first (the contract checks each against the current digest), which is then a
    renewal, so the collateral is locked once."""
    worker = world.workers[0]
    (job_id,) = world.post(collateral=5)
    ticket, sig = world.ticket(worker, [job_id, job_id])
    posted = world.job(job_id)
    with reverts("JobRecordMismatch", StaleJobRecord, jobId=job_id):
        worker.assign(ticket, sig, records=[posted, posted])
    after_first = forged(
        posted, worker=worker.address, lease_expiry=ticket.lease_expiry, state=JobState.ASSIGNED
    )
    worker.assign(ticket, sig, records=[posted, after_first])
    assert worker.stake_of(worker.address).locked == 5
    assert_solvent(world)


# ------------------------------------------------------------------------ wrong domain


def test_assign_reverts_on_ticket_for_another_chain_id(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], chain_id=world.deployment.chain_id + 1)
    impostor = _recovered(world, ticket, sig)
    assert impostor != world.assigner.address
    with reverts("InvalidTicketSigner", NotPermitted, signer=impostor):
        worker.assign(ticket, sig)


def test_assign_reverts_on_ticket_for_another_market(world: World) -> None:
    """A ticket signed for a second JobMarket (same token, stakes and assigner) is valid
    there and refused here."""
    admin, worker = world.admin, world.workers[0]
    p = TEST_PARAMS
    other = deploy(
        admin.sender,
        "JobMarket",
        world.deployment.address("MeshCredit"),
        world.deployment.address("StakeManager"),
        world.deployment.address("VerifierRegistry"),
        admin.address,
        admin.address,
        (p.fee_bps, p.min_audit_bps, p.challenge_window_s, p.audit_window_s, p.appeal_window_s,
         p.audit_deterrence),
    )
    send(admin, other.functions.grantRole(ASSIGNER_ROLE, world.assigner.address))
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], job_market=other.address)
    digest = bytes(other.functions.hashTicket(ticket.as_tuple()).call())
    assert Account._recover_hash(digest, signature=sig) == world.assigner.address
    with reverts("InvalidTicketSigner", NotPermitted, signer=_recovered(world, ticket, sig)):
        worker.assign(ticket, sig)
    # Signed with another verifyingContract that is no market at all.
    ticket, sig = world.ticket(worker, [job_id], job_market=world.deployment.address("MeshCredit"))
    with reverts("InvalidTicketSigner", NotPermitted):
        worker.assign(ticket, sig)


# ------------------------------------------------------------------- expiry and worker


@pytest.mark.parametrize("lease_s", [0, -1, -3600])
def test_assign_reverts_on_expired_ticket(world: World, lease_s: int) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], lease_s=lease_s)
    with reverts("TicketExpired", TooLate, leaseExpiry=ticket.lease_expiry):
        worker.assign(ticket, sig)


def test_assign_reverts_once_unused_ticket_expires(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], lease_s=100)
    world.advance(100)
    with reverts("TicketExpired", TooLate, leaseExpiry=ticket.lease_expiry):
        worker.assign(ticket, sig)


def test_assign_reverts_when_submitted_by_another_worker(world: World) -> None:
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post()
    ticket, sig = world.ticket(w0, [job_id])
    with reverts("TicketWorkerMismatch", NotPermitted, worker=w0.address, caller=w1.address):
        w1.assign(ticket, sig)
    with reverts("TicketWorkerMismatch", NotPermitted, caller=world.clients[0].address):
        world.clients[0].assign(ticket, sig)


# --------------------------------------------------------------------------- signer


@pytest.mark.parametrize("who", ["outsider", "worker_itself", "admin", "verifier"])
def test_assign_reverts_on_ticket_signed_by_non_assigner(world: World, who: str) -> None:
    worker = world.workers[0]
    signer = {
        "outsider": world.outsider,
        "worker_itself": worker,
        "admin": world.admin,  # admin of the market, but not an assigner
        "verifier": world.verifiers[0],
    }[who].account
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], signer=signer)
    with reverts("InvalidTicketSigner", NotPermitted, signer=signer.address):
        worker.assign(ticket, sig)


def test_assign_reverts_after_assigner_role_is_revoked(world: World) -> None:
    worker = world.workers[0]
    a, b = world.post(n=2)
    ticket, sig = world.ticket(worker, [a])
    later_ticket, later_sig = world.ticket(worker, [b])
    worker.assign(ticket, sig)
    send(world.admin, world.market.functions.revokeRole(ASSIGNER_ROLE, world.assigner.address))
    with reverts("InvalidTicketSigner", NotPermitted, signer=world.assigner.address):
        worker.assign(later_ticket, later_sig)


@pytest.mark.parametrize("kind", ["empty", "short", "long", "garbage", "high_s"])
def test_assign_reverts_on_malformed_signature(world: World, kind: str) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id])
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    bad = {
        "empty": b"",
        "short": sig[:64],
        "long": sig + b"\x00",
        "garbage": b"\x01" * 65,
        # The same signature with s mirrored (malleable form): OpenZeppelin refuses it.
        "high_s": r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]),
    }[kind]
    with reverts("InvalidTicketSigner", NotPermitted) as e:
        worker.assign(ticket, bad)
    assert e.value.args_dict["signer"] in (ZERO, _recovered_or_zero(world, ticket, bad))
    if kind != "garbage":
        assert e.value.args_dict["signer"] == ZERO


def _recovered_or_zero(world: World, ticket: AssignTicket, sig: bytes) -> str:
    try:
        return _recovered(world, ticket, sig)
    except Exception:  # noqa: BLE001 - an unrecoverable signature is address zero on chain
        return ZERO


# -------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t, extra: dataclasses.replace(t, job_ids=(extra,)),
        lambda t, extra: dataclasses.replace(t, job_ids=(*t.job_ids, extra)),
        lambda t, extra: dataclasses.replace(t, job_ids=tuple(reversed(t.job_ids))),
        lambda t, extra: dataclasses.replace(t, audit_bps=0),
        lambda t, extra: dataclasses.replace(t, lease_expiry=t.lease_expiry + 3600),
    ],
    ids=["job_ids_swapped", "job_id_added", "job_ids_reordered", "audit_bps", "lease_expiry"],
)
def test_assign_reverts_on_tampered_ticket(world: World, tamper) -> None:
    worker = world.workers[0]
    a, b, extra = world.post(n=3)
    ticket, sig = world.ticket(worker, [a, b], audit_bps=5000)
    tampered = tamper(ticket, extra)
    assert tampered != ticket
    impostor = _recovered(world, tampered, sig)
    assert impostor != world.assigner.address
    with reverts("InvalidTicketSigner", NotPermitted, signer=impostor):
        worker.assign(tampered, sig)
    worker.assign(ticket, sig)  # the genuine ticket still works


def test_assign_reverts_on_ticket_re_addressed_to_another_worker(world: World) -> None:
    """Changing the worker field lets the new worker pass the caller check, but not the
    signature check."""
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post()
    ticket, sig = world.ticket(w0, [job_id])
    stolen = dataclasses.replace(ticket, worker=w1.address)
    with reverts("InvalidTicketSigner", NotPermitted, signer=_recovered(world, stolen, sig)):
        w1.assign(stolen, sig)


# --------------------------------------------------------------------------- takeover


def test_assign_takes_over_expired_lease_and_unlocks_first_worker(world: World) -> None:
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post(collateral=40)
    world.assign(w0, [job_id], lease_s=300, audit_bps=100)
    assert w0.stake_of(w0.address).locked == 40
    # Before expiry another worker's ticket is refused.
    ticket, sig = world.ticket(w1, [job_id])
    with reverts("JobLeased", WrongJobState, worker=w0.address):
        w1.assign(ticket, sig)
    world.advance(301)
    ticket, sig = world.ticket(w1, [job_id], audit_bps=50)
    receipt = w1.assign(ticket, sig)
    record = world.job(job_id)
    assert record.worker == w1.address
    assert record.lease_expiry == ticket.lease_expiry
    assert record.audit_bps == 100  # a ticket only ever raises the audit rate
    assert [e.args["worker"] for e in events_in(w1, receipt, "LeaseExpired")] == [w0.address]
    assert w0.stake_of(w0.address).locked == 0
    assert w0.stake_of(w0.address).free == STAKE
    assert w1.stake_of(w1.address).locked == 40
    assert w0.worker_record(w0.address).missed == 1
    assert w1.worker_record(w1.address).missed == 0
    # The first worker can no longer commit; the new one can.
    with reverts("NotAssignedWorker", NotPermitted, caller=w0.address):
        w0.commit_results([job_id], [RESULT])
    world.commit(w1, [job_id])
    assert_solvent(world)


def test_assign_renews_own_expired_lease_without_a_miss(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post(collateral=40)
    world.assign(worker, [job_id], lease_s=100)
    world.advance(101)
    ticket, sig = world.ticket(worker, [job_id], lease_s=500)
    receipt = worker.assign(ticket, sig)
    assert events_in(worker, receipt, "LeaseExpired") == []
    assert world.job(job_id).lease_expiry == ticket.lease_expiry
    assert worker.stake_of(worker.address).locked == 40
    assert worker.worker_record(worker.address).missed == 0
    assert_solvent(world)


def test_assign_takeover_needs_free_stake_of_new_worker(world: World) -> None:
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post(collateral=STAKE)
    world.assign(w0, [job_id], lease_s=100)
    w1.unstake(1)
    world.advance(101)
    ticket, sig = world.ticket(w1, [job_id])
    with reverts("InsufficientFreeStake", staker=w1.address, available=STAKE - 1):
        w1.assign(ticket, sig)
    assert w0.stake_of(w0.address).locked == STAKE  # the failed takeover changed nothing
    assert_solvent(world)


# ---------------------------------------------------------------------------- digests


def test_hashTicket_matches_eth_account_digest_and_python_recovery(world: World) -> None:
    worker = world.workers[0]
    market = world.market
    ticket = AssignTicket(worker.address, (1, 2, 3, 2**200), 777, world.now() + 1000)
    chain_id = world.deployment.chain_id
    signable = encode_typed_data(full_message=ticket.typed_data(chain_id, market.address))
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert bytes(market.functions.hashTicket(ticket.as_tuple()).call()) == digest

    sig = sign_ticket(ticket, world.assigner, chain_id=chain_id, job_market=market.address)
    assert Account._recover_hash(digest, signature=sig) == world.assigner.address
    assert (
        recover_ticket_signer(ticket, sig, chain_id=chain_id, job_market=market.address)
        == world.assigner.address
    )
    # Signing the contract's digest directly gives the very same (deterministic) signature.
    raw = Account.unsafe_sign_hash(digest, world.assigner.key)
    assert bytes(raw.signature) == sig
    # And the domain the contract reports is the one Python signs for.
    _fields, name, version, domain_chain, contract, _salt, _ext = (
        market.functions.eip712Domain().call()
    )
    assert (name, version, domain_chain, contract) == (
        JOB_MARKET_DOMAIN_NAME,
        DOMAIN_VERSION,
        chain_id,
        market.address,
    )


def test_hashTicket_differs_for_every_field(world: World) -> None:
    market = world.market
    base = AssignTicket(world.workers[0].address, (5, 6), 10, 1_000_000)
    variants = [
        base,
        dataclasses.replace(base, worker=world.workers[1].address),
        dataclasses.replace(base, job_ids=(6, 5)),
        dataclasses.replace(base, job_ids=(5,)),
        dataclasses.replace(base, job_ids=()),
        dataclasses.replace(base, audit_bps=11),
        dataclasses.replace(base, lease_expiry=1_000_001),
    ]
    digests = {bytes(market.functions.hashTicket(t.as_tuple()).call()) for t in variants}
    assert len(digests) == len(variants)


# ------------------------------------------------------------------------------ reserved jobs

def test_a_reserved_job_is_taken_only_by_its_worker_and_only_with_its_result(world: World) -> None:
    """postJobsFor: a job paying a worker for work it already did (uploaded, so anyone could
    commit its hash) is its alone, taken and committed in one transaction, never left Assigned
    where a lapsed lease would open it to others; the client may still cancel it."""
    w0, w1 = world.workers[0], world.workers[1]
    client = world.clients[0]
    with reverts("ZeroAddress"):
        client.post_jobs_for([world.params()], ZERO)
    first, second = client.post_jobs_for([world.params(), world.params()], w0.address)
    posted = world.job(first)
    assert posted.state == JobState.POSTED and posted.worker.lower() == w0.address.lower()
    reserved = market_events(client, "JobReserved")
    assert {(int(e.args["jobId"]), e.args["worker"].lower()) for e in reserved} == {
        (first, w0.address.lower()), (second, w0.address.lower())}
    ticket, sig = world.ticket(w1, [first])
    with reverts("JobReservedFor", NotPermitted, worker=w0.address):
        w1.assign_and_commit(ticket, sig, [RESULT])
    ticket, sig = world.ticket(w0, [first])
    with reverts("JobReservedFor", NotPermitted, worker=w0.address):
        w0.assign(ticket, sig)  # taking it without its result
    w0.assign_and_commit(ticket, sig, [RESULT])
    done = world.job(first)
    assert done.state == JobState.COMMITTED and done.worker.lower() == w0.address.lower()
    client.reclaim(second)  # cancelled while posted: the escrow comes back
    assert world.job(second).state == JobState.REFUNDED
    assert_solvent(world)
