"""voidAudit and the rules every verdict obeys (issue: the verification game).

A drawn job that cannot be judged (the verifier's own recomputations disagree, or the program
is unstable under its tolerance) is void: nobody is at fault, nobody is paid for the result.
A verdict must name its evidence, and a job's client may not judge it (nor may its worker).
"""

from __future__ import annotations

import pytest

from meshcompute.core.job import JobState
from meshcompute.errors import InvalidRequest, NotPermitted, TooLate, WrongJobState
from tests.contracts.helpers import appealed_job, assert_solvent, events_in, reverts
from tests.contracts.world import TEST_PARAMS, World

pytestmark = pytest.mark.anvil

EVIDENCE = b"\xee" * 32


def _withdrawable(world: World, actor) -> int:
    return world.admin.account_of(actor.address).withdrawable


@pytest.mark.parametrize("draw_recorded", [True, False], ids=["audited", "committed"])
def test_a_confirmed_void_refunds_the_reward_pays_the_proposer_and_unlocks_the_collateral(
    world: World, draw_recorded: bool
) -> None:
    worker, client = world.workers[0], world.clients[0]
    if draw_recorded:
        job_id = world.audited_job(worker=worker)
    else:
        job_id = world.committed_job(audit_bps=10_000, worker=worker)
        world.advance(1, blocks=2)
    proposer = world.verifier_for(job_id)
    record = world.job(job_id)
    receipt = proposer.void_audit(job_id, EVIDENCE)
    (proposed,) = events_in(proposer, receipt, "VoidProposed")
    assert (proposed.args["verifier"], bytes(proposed.args["evidenceHash"])) == (proposer.address, EVIDENCE)
    assert not events_in(proposer, receipt, "AuditVoided")
    assert not events_in(proposer, receipt, "JobRefunded")
    proposal = world.job(job_id)
    assert (proposal.state, proposal.auditor) == (JobState.VOID_PROPOSED, proposer.address)
    assert proposal.resolved_at == proposed.args["proposedAt"]
    # a proposal is bonded: the reward and the audit fee of the proposer's stake
    assert proposer.stake_of(proposer.address).locked == record.reward + record.audit_fee
    # a second seat, never the proposer, confirms it
    confirmer = world.verifier_for(job_id)
    assert confirmer.address != proposer.address
    with reverts("NotAssignedVerifier", NotPermitted, caller=proposer.address):
        proposer.void_audit(job_id, EVIDENCE)
    receipt = confirmer.void_audit(job_id, EVIDENCE)
    (voided,) = events_in(confirmer, receipt, "AuditVoided")
    assert voided.args["verifier"] == confirmer.address
    (refund,) = events_in(confirmer, receipt, "JobRefunded")
    assert refund.args["amount"] == record.reward
    assert not events_in(confirmer, receipt, "JobPaid")
    assert not events_in(confirmer, receipt, "JobSlashed")
    assert _withdrawable(world, client) == record.reward
    assert _withdrawable(world, proposer) == record.audit_fee
    assert _withdrawable(world, confirmer) == 0  # confirming earns nothing over a verdict
    assert proposer.stake_of(proposer.address).locked == 0  # confirmed: the bond comes back
    assert _withdrawable(world, worker) == 0
    assert worker.stake_of(worker.address).locked == 0
    assert worker.worker_record(worker.address).slashed == 0
    assert world.admin.job_digest(job_id) == bytes(32)  # the job has ended
    assert_solvent(world)


def test_a_lone_void_is_replaced_by_the_second_seats_verdict(world: World) -> None:
    """One seat cannot void an honest result away: the second seat's pass is the job's verdict,
    the worker is paid when it stands, and the proposer earns nothing and loses its bond (to
    the fee recipient: proposing a void unread costs money whenever the second seat is
    honest)."""
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker)
    proposer = world.verifier_for(job_id)
    proposer.void_audit(job_id, EVIDENCE)
    bond = world.job(job_id).reward + world.job(job_id).audit_fee
    recipient = world.admin.market.functions.feeRecipient().call()
    recipient_before = world.admin.account_of(recipient).withdrawable
    judge = world.verifier_for(job_id)
    receipt = judge.resolve_audit(job_id, True, EVIDENCE)
    (slashed,) = events_in(judge, receipt, "VerifierSlashed")
    assert (slashed.args["verifier"], slashed.args["amount"]) == (proposer.address, bond)
    assert proposer.stake_of(proposer.address).slashed == bond
    assert proposer.stake_of(proposer.address).locked == 0
    assert world.admin.account_of(recipient).withdrawable == recipient_before + bond
    record = world.job(job_id)
    assert (record.state, record.auditor) == (JobState.AUDIT_PASSED, judge.address)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize(job_id)
    assert _withdrawable(world, judge) == record.audit_fee
    assert _withdrawable(world, proposer) == 0
    assert _withdrawable(world, worker) > 0
    assert_solvent(world)


def test_an_unconfirmed_void_pays_nobody_and_punishes_the_silent_seat(world: World) -> None:
    worker, client = world.workers[0], world.clients[0]
    job_id = world.audited_job(worker=worker)
    proposer = world.verifier_for(job_id)
    proposer.void_audit(job_id, EVIDENCE)
    silent = world.verifier_for(job_id)
    deposit = world.admin.verifier_seat(silent.address).deposit
    record = world.job(job_id)
    world.advance(TEST_PARAMS.audit_window_s + 1)
    receipt = world.outsider.finalize(job_id)
    (refund,) = events_in(world.outsider, receipt, "JobRefunded")
    assert refund.args["amount"] == record.reward + record.audit_fee  # the whole escrow
    assert _withdrawable(world, client) == record.reward + record.audit_fee
    assert _withdrawable(world, proposer) == 0 and _withdrawable(world, worker) == 0
    assert proposer.stake_of(proposer.address).locked == 0  # unconfirmed: its bond comes back
    assert world.admin.verifier_seat(silent.address).deposit == deposit - (record.reward + record.collateral)
    assert worker.stake_of(worker.address).locked == 0
    assert_solvent(world)


def test_void_only_for_a_drawn_job_within_its_window(world: World) -> None:
    verifier = world.verifiers[0]
    undrawn = world.committed_job(audit_bps=0)
    world.advance(1, blocks=2)
    with reverts("NotDrawnForAudit", WrongJobState):
        verifier.void_audit(undrawn, EVIDENCE)
    late = world.audited_job()
    world.advance(TEST_PARAMS.audit_window_s + 1)
    with reverts("WindowClosed", TooLate):
        verifier.void_audit(late, EVIDENCE)
    intruder = world.outsider
    other = world.audited_job()
    with reverts("NotAssignedVerifier", NotPermitted, caller=intruder.address):
        intruder.void_audit(other, EVIDENCE)


@pytest.mark.parametrize("call", ["resolveAudit", "voidAudit"])
def test_a_verdict_without_evidence_is_refused(world: World, call: str) -> None:
    job_id = world.audited_job()
    verifier = world.verifiers[0]
    with reverts("EmptyEvidence", InvalidRequest, jobId=job_id):
        if call == "resolveAudit":
            verifier.resolve_audit(job_id, True, bytes(32))
        else:
            verifier.void_audit(job_id, bytes(32))
    assert world.job(job_id).state == JobState.AUDITED


def test_an_appeal_verdict_without_evidence_is_refused(world: World) -> None:
    job_id = appealed_job(world)
    with reverts("EmptyEvidence", InvalidRequest, jobId=job_id):
        world.verifiers[1].resolve_appeal(job_id, True, bytes(32))


def test_the_client_may_not_judge_its_own_job(world: World) -> None:
    """A client that also holds the verifier role cannot fail (or void) its own job."""
    client = world.verifiers[1]  # a verifier posting a job: it is that job's client
    world.admin.mint(client.address, 1_000 * 10**18)
    client.approve(client.market.address, 2**256 - 1)
    job_id = world.committed_job(audit_bps=10_000, client=client)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)
    for send in (lambda: client.resolve_audit(job_id, False, EVIDENCE),
                 lambda: client.void_audit(job_id, EVIDENCE)):
        with reverts("VerifierConflict", NotPermitted, verifier=client.address):
            send()
