"""VerifierRegistry on anvil: open, stake-weighted verifier seats (anyone takes one with a
deposit; nobody admits it), a draw that joining or leaving cannot steer once a job's seed is known, and
silence that costs the silent verifiers their deposit (burned: nobody gains) while the job is
void, never slashed."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from meshcompute.chain.contracts import MeshContracts
from meshcompute.chain.reconcile import check_solvency
from meshcompute.core.audit_draw import NEVER, assigned_verifier
from meshcompute.core.job import JobState
from meshcompute.errors import InsufficientFunds, NotPermitted, TooEarly, WrongJobState
from tests.contracts.helpers import appealed_job, reverts
from tests.contracts.world import STAKE, TEST_PARAMS, World

DEPOSIT = TEST_PARAMS.verifier_deposit
BURN = "0x000000000000000000000000000000000000dEaD"
APPEAL_CLOSES = TEST_PARAMS.appeal_window_s + TEST_PARAMS.audit_window_s


def _deposit(world: World, who: str) -> int:
    seat = world.admin.verifier_seat(who)
    return 0 if seat is None else seat.deposit


def test_anyone_takes_a_seat_with_a_deposit_and_is_drawn_for_verdicts(world: World) -> None:
    newcomer = world.outsider
    with reverts("DepositTooSmall", InsufficientFunds, amount=DEPOSIT - 1, minimum=DEPOSIT):
        newcomer.join_verifiers(DEPOSIT - 1)
    newcomer.join_verifiers(3 * DEPOSIT + DEPOSIT // 2)  # weight 3 (whole units only)
    books = check_solvency(MeshContracts(world.w3, world.deployment))
    assert books.ok, books.problems
    newcomer.stake(STAKE)  # the verdict bonds still come from stake
    seat = world.admin.verifier_seat(newcomer.address)
    assert (seat.units, seat.deposit, seat.until_block) == (3, 3 * DEPOSIT + DEPOSIT // 2, NEVER)
    with reverts("AlreadyMember", WrongJobState, verifier=newcomer.address):
        newcomer.join_verifiers(DEPOSIT)
    seats = world.admin.verifier_seats()
    assert {s.verifier for s in seats} == {newcomer.address, *(v.address for v in world.verifiers)}
    # With weight 3 against 1 + 1 the newcomer is the first candidate about 3/5 of the time:
    # take jobs until it has been (the contract's choice equals the pure mirror's).
    drawn = set()
    for _ in range(12):
        job_id = world.audited_job()
        record = world.job(job_id)
        seed = world.w3.eth.get_block(record.committed_block + 1)["hash"]
        mirror = assigned_verifier(seats, bytes(seed), job_id,
                                   committed_block=record.committed_block,
                                   cover=record.reward + record.collateral, unit=DEPOSIT,
                                   excluded=[record.worker, record.client], stage=0,
                                   escalated=False, keccak=keccak)
        assigned = world.admin.assigned_verifier(job_id)
        assert assigned == mirror
        drawn.add(assigned)
        if assigned == newcomer.address:
            newcomer.resolve_audit(job_id, True, b"\xee" * 32)  # it may post, and only it
            assert world.job(job_id).state == JobState.AUDIT_PASSED
            break
    assert newcomer.address in drawn


def test_joining_or_leaving_after_a_commit_cannot_move_its_draw(world: World) -> None:
    """The attacker sees the seed (the block after the commit), then joins with a huge weight
    or has its seat leave: the job's assigned verifier does not change."""
    job_id = world.audited_job()
    before = world.admin.assigned_verifier(job_id)
    world.admin.mint(world.outsider.address, 1000 * DEPOSIT)
    world.outsider.join_verifiers(1000 * DEPOSIT)  # 1000 times the weight of each other seat
    assert world.admin.assigned_verifier(job_id) == before
    assigned = next(v for v in world.verifiers if v.address == before)
    world.other_verifier(assigned).leave_verifiers()
    assert world.admin.assigned_verifier(job_id) == before
    # ... and, later in the window, the escalation still goes to the seat that left
    world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s // 2 + 5)
    assert world.admin.assigned_verifier(job_id) == world.other_verifier(assigned).address
    # a job committed after the join has the newcomer among its candidates
    later = world.audited_job()
    assert world.admin.verifier_seat(world.outsider.address).candidate_for(
        world.job(later).committed_block)


def test_a_silent_audit_voids_the_job_and_burns_both_assigned_deposits(world: World) -> None:
    job_id = world.audited_job()
    record = world.job(job_id)
    first = world.admin.assigned_verifier(job_id)
    second = world.other_verifier(next(v for v in world.verifiers if v.address == first)).address
    worker = next(w for w in world.workers if w.address == record.worker)
    burned_before = world.admin.balance_of(BURN)
    locked_before = world.admin.stake_of(worker.address).locked
    world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s + 1)
    receipt = world.admin.finalize(job_id)
    penalty = record.reward + record.collateral  # a candidate's deposit covers it
    assert world.admin.job_digest(job_id) == bytes(32)  # ended: void (Refunded), never paid
    assert world.admin.stake_of(worker.address).locked == locked_before - record.collateral
    assert world.admin.stake_of(worker.address).slashed == 0
    assert _deposit(world, first) == DEPOSIT - penalty
    assert _deposit(world, second) == DEPOSIT - penalty
    assert world.admin.balance_of(BURN) == burned_before + 2 * penalty
    punished = [e for e in world.admin.receipt_events(receipt) if e.name == "VerifierPunished"]
    assert [(e.args["verifier"], e.args["amount"]) for e in punished] == [
        (first, penalty), (second, penalty)]
    # a deposit burned below its weight's cover leaves the seat: no candidate for later jobs
    for who in (first, second):
        seat = world.admin.verifier_seat(who)
        assert seat.leaving and seat.until_block == receipt["blockNumber"] + 1


def test_a_silent_appeal_voids_the_job_instead_of_slashing_the_worker(world: World) -> None:
    job_id = appealed_job(world)
    record = world.job(job_id)
    worker = next(w for w in world.workers if w.address == record.worker)
    auditor = record.auditor
    appeal_verifier = world.admin.assigned_verifier(job_id)
    assert appeal_verifier not in (auditor, record.worker, record.client)
    auditor_before = world.admin.account_of(auditor).withdrawable
    client_before = world.admin.account_of(record.client).withdrawable
    world.advance(APPEAL_CLOSES + 1)
    world.admin.finalize(job_id)
    assert world.admin.stake_of(worker.address).slashed == 0  # silence decides nothing
    assert world.admin.worker_record(worker.address).slashed == 0
    assert world.admin.stake_of(auditor).locked == 0  # the failing verifier's bond is back
    assert world.admin.account_of(auditor).withdrawable == auditor_before + record.audit_fee
    assert world.admin.account_of(record.client).withdrawable == client_before + record.reward
    # only one other verifier exists (the escalation falls back to it): punished once, by what
    # an appeal seat covers: the reward and collateral and the failure's bond (one reward)
    assert _deposit(world, appeal_verifier) == DEPOSIT - (2 * record.reward + record.collateral)
    assert _deposit(world, auditor) == DEPOSIT


def test_a_new_seat_is_bound_at_once_and_nobody_seats_keyless_addresses(world: World) -> None:
    """A seat is a candidate from its joining block, so its deposit is bound from then on (it
    may be assigned a verdict at once); and nobody but the admin pays a seat for another
    address: a stranger cannot fill the registry with keyless seats that could never leave."""
    newcomer = world.outsider
    newcomer.join_verifiers(DEPOSIT)
    with reverts("AlreadyMember", WrongJobState, verifier=newcomer.address):
        newcomer.join_verifiers(DEPOSIT)
    with reverts("StillBound", TooEarly, verifier=newcomer.address):
        newcomer.withdraw_verifier_deposit()
    assert world.admin.verifier_seat(newcomer.address).deposit == DEPOSIT
    world.clients[0].approve(world.admin.registry.address, DEPOSIT)
    call = world.admin.registry.functions.joinFor("0x" + "00" * 19 + "01", DEPOSIT)
    with reverts("AccessControlUnauthorizedAccount", NotPermitted):
        world.clients[0]._send(call)
    with reverts("NotMember", NotPermitted):
        world.clients[1].withdraw_verifier_deposit()  # holds no seat


def test_deposits_stay_bound_after_leaving_and_only_the_job_market_punishes(world: World) -> None:
    verifier = world.verifiers[0]
    with reverts("StillBound", TooEarly, verifier=verifier.address):
        verifier.withdraw_verifier_deposit()
    verifier.leave_verifiers()
    with reverts("AlreadyLeaving", WrongJobState, verifier=verifier.address):
        verifier.leave_verifiers()
    seat = world.admin.verifier_seat(verifier.address)
    assert seat.leaving and seat.release_at == world.now() + TEST_PARAMS.unbonding_delay_s
    with reverts("StillBound", TooEarly, verifier=verifier.address, releaseAt=seat.release_at):
        verifier.withdraw_verifier_deposit()
    registry = world.admin.registry
    call = registry.functions.punishSilence(b"\x01" * 32, 1, 0, 1, world.now(),
                                            [world.outsider.address] * 4, DEPOSIT)
    with reverts("CallerNotJobMarket", NotPermitted, caller=world.outsider.address):
        world.outsider._send(call)
    forfeit = registry.functions.forfeit(verifier.address, 1, DEPOSIT, DEPOSIT)
    with reverts("CallerNotJobMarket", NotPermitted, caller=world.outsider.address):
        world.outsider._send(forfeit)
    world.advance(TEST_PARAMS.unbonding_delay_s + 1)
    balance = world.admin.balance_of(verifier.address)
    verifier.withdraw_verifier_deposit()
    assert world.admin.balance_of(verifier.address) == balance + DEPOSIT
    assert world.admin.verifier_seat(verifier.address) is None
    with reverts("NotMember", NotPermitted, verifier=verifier.address):
        verifier.withdraw_verifier_deposit()


def test_a_job_no_seat_covers_has_no_verifier_and_ends_void_unpaid(world: World) -> None:
    """A seat is a candidate only for jobs whose reward plus collateral its weight covers (so
    that its silence would cost it more than a cheater's collateral): a job beyond every
    seat's cover gets no verifier, and drawn for audit it is void: never paid, nobody burned."""
    big = DEPOSIT  # reward + collateral = DEPOSIT + 100 MESH: over one unit
    job_id = world.audited_job(collateral=big)
    assert world.admin.assigned_verifier(job_id) is None
    world.outsider.join_verifiers(2 * DEPOSIT)  # too late for this job (joined after its commit)
    assert world.admin.assigned_verifier(job_id) is None
    world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s + 1)
    receipt = world.admin.finalize(job_id)
    names = [e.name for e in world.admin.receipt_events(receipt)]
    assert "JobPaid" not in names and "VerifierPunished" not in names
    assert world.admin.job_digest(job_id) == bytes(32)
    later = world.audited_job(collateral=big)  # the two-unit seat covers the next one
    assert world.admin.assigned_verifier(later) == world.outsider.address


@pytest.mark.parametrize("units", [1, 4])
def test_the_draw_weights_seats_by_deposit(units: int) -> None:
    """The pure mirror over many seeds: a seat of weight ``units`` against two of weight 1 is
    the first candidate more often as its weight grows (monotone in the deposit)."""
    from meshcompute.core.audit_draw import VerifierSeat

    heavy = "0x" + "aa" * 20
    seats = [VerifierSeat(heavy, units, 1, NEVER), VerifierSeat("0x" + "bb" * 20, 1, 1, NEVER),
             VerifierSeat("0x" + "cc" * 20, 1, 1, NEVER)]
    wins = sum(
        assigned_verifier(seats, keccak(i.to_bytes(32, "big")), i, committed_block=5, cover=1,
                          unit=1, excluded=[], stage=0, escalated=False,
                          keccak=keccak) == heavy
        for i in range(3000))
    share = wins / 3000
    if units == 1:
        assert 0.28 < share < 0.39  # a third each
    else:
        assert share > 0.7  # 4 units against 1 + 1 (about 0.77; proportional would be 0.67)


def test_a_seat_joined_or_left_is_a_candidate_exactly_for_the_jobs_committed_meanwhile() -> None:
    from meshcompute.core.audit_draw import VerifierSeat

    seat = VerifierSeat("0x" + "aa" * 20, 1, from_block=10, until_block=20)
    assert [b for b in range(8, 23) if seat.candidate_for(b)] == list(range(10, 20))
