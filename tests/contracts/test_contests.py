"""No single seat overturns a verdict (issue: the verification game, open verifier admission).

An appeal verdict that upholds the first verdict stands: two seats agree. One that overturns it
is contested: a third seat, drawn excluding the worker, the client and both verifiers, decides.
The seat found in the minority pays for it (the overturned verifier its stake bond, an
overturning verifier that the contest finds wrong its registry deposit), and the contest
verifier is paid the same from the minority's bond whichever way it decides. Each test plays
one side as an attacker and checks that it loses money, and that the books balance.

The module's world has three verifier seats (tests/contracts/world.py has two, where an
overturn has no third seat and is final, as before).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshcompute.chain.devchain import DevChain
from meshcompute.core.job import PASS_BOND_REWARDS, JobState
from meshcompute.core.payout import split_reward
from meshcompute.errors import NotPermitted
from tests.contracts.helpers import assert_solvent, events_in, reverts
from tests.contracts.world import TEST_PARAMS, World, build_world

pytestmark = pytest.mark.anvil

EVIDENCE = b"\xee" * 32
DEPOSIT = TEST_PARAMS.verifier_deposit


@pytest.fixture(scope="module")
def _deployed(anvil: DevChain) -> Iterator[World]:
    """The usual world plus a third verifier seat (the last worker's account, which works no
    job here), so that every appeal has a seat left to contest it."""
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    third = world.workers.pop()
    third.join_verifiers(DEPOSIT)
    world.verifiers.append(third)
    world.advance(1, blocks=1)
    yield world
    anvil.revert(snapshot)
    world.resync()


def _withdrawable(world: World, actor) -> int:
    return world.admin.account_of(actor.address).withdrawable


def _deposit(world: World, actor) -> int:
    return world.admin.verifier_seat(actor.address).deposit


def _failed_and_appealed(world: World) -> tuple[int, object, object]:
    """A job failed by its assigned verifier and appealed by its worker: (job, worker, auditor)."""
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker)
    auditor = world.verifier_for(job_id)
    auditor.resolve_audit(job_id, False, EVIDENCE)
    worker.appeal(job_id)
    return job_id, worker, auditor


def _passed_and_disputed(world: World) -> tuple[int, object, object]:
    client = world.clients[0]
    job_id = world.audited_job(worker=world.workers[0], client=client)
    auditor = world.verifier_for(job_id)
    auditor.resolve_audit(job_id, True, EVIDENCE)
    client.dispute(job_id)
    return job_id, client, auditor


def _reserved(world: World, actor) -> int:
    return world.admin.verifier_reserved(actor.address)


def test_an_appeal_verdict_that_upholds_the_first_stands_unless_escalated(world: World) -> None:
    """Two seats agree: the uphold stands once its escalation window closes unescalated, as it
    stood at once before; until then the upholding seat's cover is reserved."""
    job_id, _worker, auditor = _failed_and_appealed(world)
    judge = world.verifier_for(job_id)
    record = world.job(job_id)
    receipt = judge.resolve_appeal(job_id, False, EVIDENCE)
    (upheld,) = events_in(judge, receipt, "AppealUpheld")
    assert upheld.args["verifier"] == judge.address and not upheld.args["workerWins"]
    assert not events_in(judge, receipt, "JobSlashed")
    assert world.job(job_id).state == JobState.FAILURE_UPHELD
    cover = record.reward + record.collateral + record.reward
    assert _reserved(world, judge) == cover
    with reverts("NotYetSettleable"):
        world.outsider.finalize(job_id)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    receipt = world.outsider.finalize(job_id)
    assert events_in(world.outsider, receipt, "JobSlashed")
    assert world.admin.job_digest(job_id) == bytes(32)
    assert _reserved(world, judge) == 0
    assert _withdrawable(world, judge) == record.audit_fee  # paid from the collateral
    assert _withdrawable(world, auditor) == record.audit_fee
    assert_solvent(world)


def test_only_the_party_an_uphold_goes_against_escalates_it_in_its_window(world: World) -> None:
    job_id, worker, auditor = _failed_and_appealed(world)
    world.verifier_for(job_id).resolve_appeal(job_id, False, EVIDENCE)
    for stranger in (world.clients[0], auditor, world.outsider):
        with reverts("NotAssignedWorker", NotPermitted):
            stranger.appeal(job_id)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    with reverts("WindowClosed"):
        worker.appeal(job_id)
    world.outsider.finalize(job_id)
    assert_solvent(world)


def test_an_escalation_the_third_seat_confirms_costs_the_worker_its_bond(world: World) -> None:
    """The attacker: a cheater escalates its rightly upheld failure, hoping the draw gives its
    accomplice the third seat. An honest third seat confirms: the cheater is slashed as it
    would have been and loses the escalation's bond (its collateral again and the reward),
    which pays the third seat min(audit fee, reward) and the protocol the rest."""
    job_id, worker, auditor = _failed_and_appealed(world)
    judge = world.verifier_for(job_id)
    record = world.job(job_id)
    fee = min(record.audit_fee, record.reward)
    bond = record.collateral + record.reward  # at least what a void would move to the worker
    # and a third seat of its coalition (the collateral and the fee), and never nothing
    judge.resolve_appeal(job_id, False, EVIDENCE)
    stake_before = worker.stake_of(worker.address)
    receipt = worker.appeal(job_id)
    (escalated,) = events_in(worker, receipt, "AppealEscalated")
    assert escalated.args["bond"] == bond
    assert world.job(job_id).state == JobState.FAILURE_ESCALATED
    assert worker.stake_of(worker.address).locked == stake_before.locked + bond
    third = world.verifier_for(job_id)
    assert third.address not in (auditor.address, judge.address, worker.address)
    with reverts("VerifierConflict", NotPermitted):
        judge.resolve_appeal(job_id, False, EVIDENCE)
    fees_before = _withdrawable(world, world.admin)
    receipt = third.resolve_appeal(job_id, False, EVIDENCE)
    assert events_in(third, receipt, "JobSlashed")
    assert _withdrawable(world, third) == fee
    assert _withdrawable(world, judge) == record.audit_fee
    assert _withdrawable(world, auditor) == record.audit_fee
    stake_after = worker.stake_of(worker.address)
    assert stake_after.locked == stake_before.locked - record.collateral
    assert stake_after.free == stake_before.free - bond  # the bond is gone
    # the protocol: what the slash leaves after the client and the appeal fee, and the bond's rest
    remainder = record.collateral - record.audit_fee - record.audit_fee
    assert _withdrawable(world, world.admin) - fees_before == remainder + bond - fee
    assert _reserved(world, judge) == 0
    assert_solvent(world)


def test_two_seats_that_fail_an_honest_worker_lose_to_its_escalation(scratch: World) -> None:
    """The lazy (or colluding) pair: the first verifier fails an honest result and the appeal
    seat upholds it without recomputing. The worker escalates and the third seat finds for it:
    two seats against one that judged neither's word, so the job is void. The worker is not
    slashed (its collateral and bond come back), the client gets its reward and the audit fee
    less the third seat's pay, the first verifier its bond but not its fee, and the upholding
    seat forfeits its reserved cover, burned: upholding unread now costs what it risks."""
    world = scratch
    job_id, worker, auditor = _failed_and_appealed(world)
    lazy = world.verifier_for(job_id)
    record = world.job(job_id)
    client = world.clients[0]
    client_before = _withdrawable(world, client)
    lazy.resolve_appeal(job_id, False, EVIDENCE)
    deposit = _deposit(world, lazy)
    stake_before = worker.stake_of(worker.address)
    worker.appeal(job_id)
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, True, EVIDENCE)
    (refund,) = events_in(third, receipt, "JobRefunded")
    fee = min(record.audit_fee, record.reward)
    assert refund.args["amount"] == record.reward + record.audit_fee - fee
    assert not events_in(third, receipt, "JobSlashed") and not events_in(third, receipt, "JobPaid")
    cover = record.reward + record.collateral + record.reward
    (punished,) = events_in(third, receipt, "VerifierPunished")
    assert (punished.args["verifier"], punished.args["amount"]) == (lazy.address, cover)
    assert _deposit(world, lazy) == deposit - cover and _reserved(world, lazy) == 0
    assert _withdrawable(world, third) == fee
    assert _withdrawable(world, auditor) == 0 and _withdrawable(world, lazy) == 0
    assert auditor.stake_of(auditor.address).locked == 0
    assert worker.stake_of(worker.address).locked == stake_before.locked - record.collateral
    assert worker.worker_record(worker.address).slashed == 0
    assert _withdrawable(world, client) == client_before + record.reward + record.audit_fee - fee
    assert world.admin.job_digest(job_id) == bytes(32)
    assert_solvent(world)


def test_a_canary_escalates_a_lazy_pass_a_lazy_seat_upheld(scratch: World) -> None:
    """Lazy seats shielding each other from canaries: the first passes junk, the dispute's
    appeal seat upholds the pass unread. The canary client escalates (escrowing the reward
    and two audit fees) and an honest third seat fails it: void, the client gets everything back, the lazy
    upholder forfeits its cover (the reward, the collateral and the pass's ten-reward bond)."""
    world = scratch
    job_id, client, auditor = _passed_and_disputed(world)
    lazy = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = _withdrawable(world, client)
    lazy.resolve_appeal(job_id, True, EVIDENCE)
    assert world.job(job_id).state == JobState.PASS_UPHELD
    balance = client.balance_of(client.address)
    receipt = client.dispute(job_id)  # escalates
    assert events_in(client, receipt, "AppealEscalated")
    bond = record.reward + 2 * record.audit_fee
    assert client.balance_of(client.address) == balance - bond
    assert world.job(job_id).state == JobState.PASS_ESCALATED
    deposit = _deposit(world, lazy)
    third = world.verifier_for(job_id)
    third.resolve_appeal(job_id, False, EVIDENCE)
    fee = min(record.audit_fee, record.reward)
    cover = record.reward + record.collateral + PASS_BOND_REWARDS * record.reward
    assert _deposit(world, lazy) == deposit - cover
    # the reward, the audit fee less the third seat's pay, the dispute bond, the escalation bond
    gained = _withdrawable(world, client) - client_before
    assert gained == record.reward + record.audit_fee - fee + record.audit_fee + bond
    assert _withdrawable(world, third) == fee
    assert auditor.stake_of(auditor.address).locked == 0
    assert_solvent(world)


def test_a_pass_upheld_and_escalated_but_confirmed_pays_the_worker(world: World) -> None:
    """A griefing client escalates an honest pass two seats upheld: the third confirms it, the
    worker and both verifiers are paid, and the client's escalation bond pays the third seat
    and the protocol."""
    job_id, client, auditor = _passed_and_disputed(world)
    judge = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = _withdrawable(world, client)
    judge.resolve_appeal(job_id, True, EVIDENCE)
    client.dispute(job_id)
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, True, EVIDENCE)
    assert events_in(third, receipt, "JobPaid")
    fee = min(record.audit_fee, record.reward)
    assert _withdrawable(world, third) == fee
    assert _withdrawable(world, judge) == record.audit_fee  # the dispute bond
    assert _withdrawable(world, auditor) == record.audit_fee
    assert _withdrawable(world, client) == client_before
    assert _reserved(world, judge) == 0
    assert_solvent(world)


def test_an_escalation_nobody_judges_leaves_the_upheld_verdict_standing(scratch: World) -> None:
    """Silence changes no verdict: the upheld failure stands, the worker's escalation bond
    comes back (the silence is not its fault), and the silent seats lose part of their
    deposits."""
    world = scratch
    job_id, worker, _auditor = _failed_and_appealed(world)
    judge = world.verifier_for(job_id)
    record = world.job(job_id)
    judge.resolve_appeal(job_id, False, EVIDENCE)
    stake_before = worker.stake_of(worker.address)
    worker.appeal(job_id)
    silent = world.verifier_for(job_id)
    deposit = _deposit(world, silent)
    world.advance(TEST_PARAMS.audit_window_s + 1)
    receipt = world.outsider.finalize(job_id)
    assert events_in(world.outsider, receipt, "JobSlashed")
    assert _deposit(world, silent) == deposit - (record.reward + record.collateral)
    after = worker.stake_of(worker.address)
    assert after.locked == stake_before.locked - record.collateral  # the collateral, slashed
    assert after.free == stake_before.free  # the bond, unlocked
    assert _reserved(world, judge) == 0
    assert_solvent(world)


def test_a_wrongly_failed_worker_wins_when_the_contest_confirms_the_overturn(world: World) -> None:
    """The honest path: the first verifier failed an honest result, the appeal seat overturns
    it, the third seat agrees. The worker is paid and gets the wrong verifier's bond less the
    contest verifier's pay; the appeal verifier earns the audit fee."""
    job_id, worker, auditor = _failed_and_appealed(world)
    appeal_seat = world.verifier_for(job_id)
    record = world.job(job_id)
    receipt = appeal_seat.resolve_appeal(job_id, True, EVIDENCE)
    (contested,) = events_in(appeal_seat, receipt, "AppealContested")
    assert contested.args["verifier"] == appeal_seat.address and contested.args["workerWins"]
    assert not events_in(appeal_seat, receipt, "JobPaid")  # nothing moves until the contest
    state = world.job(job_id)
    assert state.state == JobState.APPEAL_CONTESTED
    assert state.resolved_at == contested.args["contestedAt"]
    third = world.verifier_for(job_id)
    assert third.address not in (auditor.address, appeal_seat.address, worker.address)
    for party in (auditor, appeal_seat):  # neither verifier judges its own word
        with reverts("VerifierConflict", NotPermitted, verifier=party.address):
            party.resolve_appeal(job_id, False, EVIDENCE)
    receipt = third.resolve_appeal(job_id, True, EVIDENCE)
    assert events_in(third, receipt, "JobPaid")
    fee = min(record.audit_fee, record.reward)
    pay, _ = split_reward(record.reward, TEST_PARAMS.fee_bps)
    assert _withdrawable(world, worker) == pay + record.reward - fee  # the bond, less the fee
    assert _withdrawable(world, appeal_seat) == record.audit_fee
    assert _withdrawable(world, third) == fee
    assert _withdrawable(world, auditor) == 0
    assert auditor.stake_of(auditor.address).locked == 0
    assert_solvent(world)


def test_an_appeal_seat_that_overturns_a_true_failure_loses_its_deposit(world: World) -> None:
    """The attacker: a cheater's accomplice holds the appeal seat and overturns the failure.
    The third seat upholds it: the cheater is slashed as it would have been, the first verifier
    earns its fee, and the accomplice forfeits from its deposit what it was drawn to cover
    (the job's reward and collateral and the failure's bond: more than sparing the cheater
    would have gained), of which the third seat is paid its fee and the rest burned."""
    job_id, worker, auditor = _failed_and_appealed(world)
    accomplice = world.verifier_for(job_id)
    record = world.job(job_id)
    deposit = _deposit(world, accomplice)
    accomplice.resolve_appeal(job_id, True, EVIDENCE)
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, False, EVIDENCE)
    (slashed,) = events_in(third, receipt, "JobSlashed")
    assert slashed.args["worker"] == worker.address
    # what it was drawn to cover: the job's reward and collateral and the failure's bond
    forfeit = record.reward + record.collateral + record.reward
    (punished,) = events_in(third, receipt, "VerifierPunished")
    assert (punished.args["verifier"], punished.args["amount"]) == (accomplice.address, forfeit)
    assert _deposit(world, accomplice) == deposit - forfeit
    assert _withdrawable(world, accomplice) == 0
    assert _withdrawable(world, third) == min(record.audit_fee, record.reward)
    assert _withdrawable(world, auditor) == record.audit_fee
    assert auditor.stake_of(auditor.address).locked == 0
    assert worker.worker_record(worker.address).slashed == 1
    assert_solvent(world)


def test_a_client_and_an_appeal_seat_cannot_overturn_an_honest_pass(world: World) -> None:
    """The attacker: a client disputes an honest pass and its accomplice holds the appeal seat,
    hoping to get the worker slashed and the passing verifier's bond. The third seat upholds the
    pass: the worker is paid, the passing verifier earns its fee, the client loses its dispute
    bond (to the fee recipient, not to anyone who could have caused the dispute) and the
    accomplice forfeits the job's reward and collateral and the pass's bond."""
    job_id, client, auditor = _passed_and_disputed(world)
    accomplice = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = _withdrawable(world, client)
    deposit = _deposit(world, accomplice)
    receipt = accomplice.resolve_appeal(job_id, False, EVIDENCE)
    assert events_in(accomplice, receipt, "AppealContested")
    assert world.job(job_id).state == JobState.DISPUTE_CONTESTED
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, True, EVIDENCE)
    assert events_in(third, receipt, "JobPaid")
    assert not events_in(third, receipt, "JobSlashed")
    forfeited = record.reward + record.collateral + PASS_BOND_REWARDS * record.reward
    assert _deposit(world, accomplice) == deposit - forfeited
    assert _withdrawable(world, client) == client_before  # its dispute bond is gone
    assert _withdrawable(world, auditor) == record.audit_fee
    assert _withdrawable(world, third) == min(record.audit_fee, record.reward)
    assert _withdrawable(world, accomplice) == 0
    assert auditor.stake_of(auditor.address).locked == 0
    assert_solvent(world)


def test_a_lazy_pass_overturned_by_two_seats_pays_the_client(world: World) -> None:
    """A canary: the passing verifier passed junk. The appeal seat and the third seat both find
    against it: the worker is slashed, the client gets its dispute bond back and the passing
    verifier's bond less the contest verifier's fee, the appeal verifier the audit fee."""
    job_id, client, auditor = _passed_and_disputed(world)
    appeal_seat = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = _withdrawable(world, client)
    appeal_seat.resolve_appeal(job_id, False, EVIDENCE)
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, False, EVIDENCE)
    assert events_in(third, receipt, "JobSlashed")
    (bond,) = events_in(third, receipt, "VerifierSlashed")
    assert bond.args["verifier"] == auditor.address
    fee = min(record.audit_fee, record.reward)
    assert _withdrawable(world, third) == fee
    assert _withdrawable(world, appeal_seat) == record.audit_fee
    gained = _withdrawable(world, client) - client_before
    # reward back, the audit fee back from the collateral, the dispute bond back, the bond less the fee
    assert gained == record.reward + record.audit_fee + record.audit_fee + PASS_BOND_REWARDS * record.reward - fee
    assert_solvent(world)


def test_a_contest_nobody_decides_is_void_and_punishes_the_silent_seat(world: World) -> None:
    job_id, worker, auditor = _failed_and_appealed(world)
    appeal_seat = world.verifier_for(job_id)
    appeal_seat.resolve_appeal(job_id, True, EVIDENCE)
    silent = world.verifier_for(job_id)
    record = world.job(job_id)
    deposit = _deposit(world, silent)
    client = world.clients[0]
    client_before = _withdrawable(world, client)
    world.advance(TEST_PARAMS.audit_window_s + 1)
    receipt = world.outsider.finalize(job_id)
    (refund,) = events_in(world.outsider, receipt, "JobRefunded")
    assert refund.args["amount"] == record.reward
    assert not events_in(world.outsider, receipt, "JobPaid")
    assert not events_in(world.outsider, receipt, "JobSlashed")
    assert _deposit(world, silent) == deposit - (record.reward + record.collateral)
    assert _withdrawable(world, client) == client_before + record.reward
    assert _withdrawable(world, appeal_seat) == 0 and _withdrawable(world, worker) == 0
    assert worker.stake_of(worker.address).locked == 0
    assert auditor.stake_of(auditor.address).locked == 0
    assert_solvent(world)


def test_an_appeal_no_seat_can_cover_in_full_still_has_a_seat(world: World) -> None:
    """The reviewer's case: a pass of a large job, whose bond no seat's weight covers on top of
    the reward and collateral. The dispute is drawn on the reward and collateral alone (as the
    audit was), so it is judged rather than void; an overturner the contest finds wrong then
    forfeits that smaller cover."""
    reward = 950 * 10**18  # reward + collateral + ten rewards > one 10,000 MESH seat
    client = world.clients[0]
    job_id = world.audited_job(worker=world.workers[0], client=client, reward=reward)
    auditor = world.verifier_for(job_id)
    auditor.resolve_audit(job_id, True, EVIDENCE)
    client.dispute(job_id)
    record = world.job(job_id)
    assert record.reward + record.collateral + PASS_BOND_REWARDS * record.reward > DEPOSIT
    accomplice = world.verifier_for(job_id)
    assert accomplice is not None
    deposit = _deposit(world, accomplice)
    accomplice.resolve_appeal(job_id, False, EVIDENCE)
    third = world.verifier_for(job_id)
    receipt = third.resolve_appeal(job_id, True, EVIDENCE)
    (punished,) = events_in(third, receipt, "VerifierPunished")
    assert punished.args["amount"] == record.reward + record.collateral
    assert _deposit(world, accomplice) == deposit - (record.reward + record.collateral)
    assert_solvent(world)


@pytest.fixture
def scratch(world: World) -> Iterator[World]:
    """The module's world, restored after the test (its seats may be burned or leave)."""
    snapshot = world.chain.snapshot()
    yield world
    world.chain.revert(snapshot)
    world.resync()


def _two_appeals_with_one_seat(world: World, reward: int) -> tuple[object, int, int]:
    """Failures appealed until the draw gives two of them the same appeal seat: (seat, a, b)."""
    seen: dict[str, int] = {}
    for _ in range(len(world.verifiers) + 1):  # three seats: a repeat within four appeals
        job_id, _worker, _auditor = _failed_and_appealed_large(world, reward)
        seat = world.verifier_for(job_id)
        if seat.address in seen:
            return seat, seen[seat.address], job_id
        seen[seat.address] = job_id
    raise AssertionError("no appeal seat was drawn twice")


def _failed_and_appealed_large(world: World, reward: int) -> tuple[int, object, object]:
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker, reward=reward, collateral=reward)
    auditor = world.verifier_for(job_id)
    auditor.resolve_audit(job_id, False, EVIDENCE)
    worker.appeal(job_id)
    return job_id, worker, auditor


def test_concurrent_overturns_each_reserve_their_cover(scratch: World) -> None:
    """The attacker of the last review: a seat that overturns many jobs at once risked its
    deposit once while its gains added up. Each overturn now reserves what it would forfeit;
    one beyond the unreserved deposit is refused (DepositReserved) until the seat tops up, and
    each contest's end releases its reservation (confirmed) or takes it (found wrong)."""
    world = scratch
    reward = 2_000 * 10**18
    cover = reward + reward + reward  # the reward, the collateral and the failure's bond
    seat, first, second = _two_appeals_with_one_seat(world, reward)
    registry = world.admin.registry.functions
    seat.resolve_appeal(first, True, EVIDENCE)
    assert registry.reservedOf(seat.address).call() == cover
    assert registry.freeDeposit(seat.address).call() == DEPOSIT - cover
    with reverts("DepositReserved", verifier=seat.address, free=DEPOSIT - cover, needed=cover):
        seat.resolve_appeal(second, True, EVIDENCE)
    seat.top_up_verifier_deposit(2 * cover - DEPOSIT)
    assert _deposit(world, seat) == 2 * cover
    assert seat.verifier_seat(seat.address).units == 1  # the weight stays as joined
    receipt = seat.resolve_appeal(second, True, EVIDENCE)
    assert events_in(seat, receipt, "AppealContested")
    assert registry.reservedOf(seat.address).call() == 2 * cover
    # the first overturn confirmed: its reservation is released, nothing taken
    judge = world.verifier_for(first)
    judge.resolve_appeal(first, True, EVIDENCE)
    assert registry.reservedOf(seat.address).call() == cover
    assert _deposit(world, seat) == 2 * cover
    # the second found wrong: its reservation is what the seat forfeits
    judge = world.verifier_for(second)
    receipt = judge.resolve_appeal(second, False, EVIDENCE)
    (punished,) = events_in(judge, receipt, "VerifierPunished")
    assert punished.args["amount"] == cover
    assert registry.reservedOf(seat.address).call() == 0
    assert _deposit(world, seat) == cover
    assert_solvent(world)


def test_a_reserved_deposit_is_released_by_a_contest_nobody_decides(scratch: World) -> None:
    """A seat cannot withdraw a deposit that answers for an open contest (OverturnsPending),
    even past its exit delay; once the contest's window has closed and the job is settled
    (void, nobody decided), the reservation is released and the deposit comes back whole."""
    world = scratch
    job_id, _worker, _auditor = _failed_and_appealed(world)
    seat = world.verifier_for(job_id)
    seat.resolve_appeal(job_id, True, EVIDENCE)
    registry = world.admin.registry.functions
    reserved = registry.reservedOf(seat.address).call()
    assert reserved > 0
    seat.leave_verifiers()
    world.advance(TEST_PARAMS.unbonding_delay_s + 1)
    with reverts("OverturnsPending", verifier=seat.address, reserved=reserved):
        seat.withdraw_verifier_deposit()
    world.outsider.finalize(job_id)
    assert registry.reservedOf(seat.address).call() == 0
    before = seat.balance_of(seat.address)
    seat.withdraw_verifier_deposit()
    assert seat.balance_of(seat.address) - before == DEPOSIT
    assert_solvent(world)


def test_only_the_job_market_reserves_and_releases(world: World) -> None:
    seat = world.verifiers[0]
    for call in ("reserve", "release"):
        fn = getattr(world.outsider.registry.functions, call)(seat.address, 1, 1)
        with reverts("CallerNotJobMarket", NotPermitted):
            world.outsider._send(fn)
    with reverts("NotMember", NotPermitted):
        world.outsider.top_up_verifier_deposit(DEPOSIT)


def test_a_later_verdicts_draw_is_seeded_after_the_transaction_that_opens_it(world: World) -> None:
    """The reviewer's attack: with every stage drawn from the commit's seed, a party could
    compute the third seat before deciding to escalate (or an appeal seat before overturning)
    and act only when an accomplice was drawn. Each later verdict's draw is seeded by the
    block after the transaction that opened it: until that block is mined nobody is assigned
    and no verdict is taken (AuditDrawPending), and then the assignee is the pure mirror's for
    that block's hash."""
    from eth_utils import keccak

    from meshcompute.core.audit_draw import STAGES, assigned_verifier

    job_id, worker, auditor = _failed_and_appealed(world)
    judge = world.verifier_for(job_id)
    judge.resolve_appeal(job_id, False, EVIDENCE)
    receipt = worker.appeal(job_id)  # the escalation
    assert world.admin.assigned_verifier(job_id) is None  # its seed block is not mined
    for seat in world.verifiers:
        if seat.address not in (auditor.address, judge.address):
            with reverts("AuditDrawPending", jobId=job_id,
                         blockNumber=receipt["blockNumber"] + 2):
                seat.resolve_appeal(job_id, True, EVIDENCE)  # lands in the seed block itself
    world.chain.mine(2)  # the seed block, and one a call reads it from
    record = world.job(job_id)
    seed = bytes(world.w3.eth.get_block(receipt["blockNumber"] + 1)["hash"])
    mirror = assigned_verifier(
        world.admin.verifier_seats(), seed, job_id, committed_block=record.committed_block,
        cover=record.reward + record.collateral, unit=DEPOSIT,
        excluded=[record.worker, record.client, auditor.address, judge.address],
        stage=STAGES["escalation"], escalated=False, keccak=keccak)
    assert mirror is not None and world.admin.assigned_verifier(job_id) == mirror
    world.verifier_for(job_id).resolve_appeal(job_id, False, EVIDENCE)
    assert world.admin.job_digest(job_id) == bytes(32)
    assert_solvent(world)


def test_an_unconfirmed_void_punishes_the_seats_its_own_draw_assigned(scratch: World) -> None:
    """The void's confirmation is drawn from the block after the proposal, and its silence is
    punished on that same draw, before the job closes: with three candidates for it (a fourth
    seat joined), the two punished are the first and second candidates of that seed (the pure
    mirror's), and the third is untouched."""
    from eth_utils import keccak

    from meshcompute.core.audit_draw import STAGES, assigned_verifier

    world = scratch
    fourth = world.workers[1]
    fourth.join_verifiers(DEPOSIT)
    world.verifiers.append(fourth)
    try:
        world.advance(1, blocks=1)
        job_id = world.audited_job(worker=world.workers[0])
        proposer = world.verifier_for(job_id)
        receipt = proposer.void_audit(job_id, EVIDENCE)
        record = world.job(job_id)
        world.chain.mine(2)
        seed = bytes(world.w3.eth.get_block(receipt["blockNumber"] + 1)["hash"])
        seats = world.admin.verifier_seats()

        def candidate(escalated: bool) -> str:
            return assigned_verifier(
                seats, seed, job_id, committed_block=record.committed_block,
                cover=record.reward + record.collateral, unit=DEPOSIT,
                excluded=[record.worker, record.client, proposer.address],
                stage=STAGES["confirm"], escalated=escalated, keccak=keccak)

        expected = {candidate(False), candidate(True)}
        assert len(expected) == 2 and world.admin.assigned_verifier(job_id) == candidate(False)
        world.advance(TEST_PARAMS.audit_window_s + 1)
        receipt = world.outsider.finalize(job_id)
        punished = {e.args["verifier"] for e in world.admin.receipt_events(receipt)
                    if e.name == "VerifierPunished"}
        assert punished == expected
        untouched = {v.address for v in world.verifiers} - expected - {proposer.address}
        assert len(untouched) == 1
        assert all(_deposit(world, v) == DEPOSIT for v in world.verifiers
                   if v.address in untouched)
        assert_solvent(world)
    finally:
        world.verifiers.remove(fourth)
