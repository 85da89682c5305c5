"""Stateful property test against the real contracts on anvil.

Random sequences of stake, unstake, withdraw-unbonded, post, post-batch, assign, commit,
assign-and-commit, time moves, finalize, finalize-batch, audit verdicts, appeals, appeal
verdicts, reclaim and withdraw by several actors. After every step: the contracts hold exactly
what they owe, locked stake equals the collateral of held jobs, no job is paid twice, states
only move forward, stake only shrinks by a slash or a withdrawal, and supply never changes.
A revert is accepted only when it is one the rule expects in some state; Panic, a bare revert
or an unknown error always fails the test.
"""

from __future__ import annotations

import os
from collections import Counter, deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from meshcompute.chain.deploy import TOKEN
from meshcompute.core.job import TRANSITIONS, JobState
from meshcompute.errors import ContractRevert

from tests.contracts.world import STAKE, TEST_PARAMS, World, build_world

EXAMPLES = int(os.environ.get("MESH_HYPOTHESIS_EXAMPLES", "200"))
OUTCOMES: Counter[str] = Counter()


def _reachable(old: JobState, new: JobState) -> bool:
    seen, todo = {old}, deque([old])
    while todo:
        state = todo.popleft()
        if state == new:
            return True
        for nxt in TRANSITIONS[state]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


class MarketMachine(RuleBasedStateMachine):
    world: World  # set by the test before the run

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.snapshot = w.chain.snapshot()
        self.block = w.w3.eth.block_number
        self.states: dict[int, JobState] = {}
        self.stake_totals = {a.address: self._stake_total(a.address) for a in w.workers}
        self.supply = w.admin.credit.functions.totalSupply().call()

    def teardown(self) -> None:
        for state in self.states.values():
            if state.terminal:
                OUTCOMES[state.name] += 1
        self.world.chain.revert(self.snapshot)
        self.world.resync()

    # ------------------------------------------------------------------ helpers
    def _stake_total(self, address: str) -> int:
        s = self.world.admin.stake_of(address)
        return s.free + s.locked + s.unbonding

    def _records(self):
        return self.world.admin.job_records(verify=False) if self.states else {}

    def _jobs_in(self, *states: JobState) -> list[int]:
        return sorted(i for i, s in self.states.items() if s in states)

    def _attempt(self, allowed: set[str], action) -> None:
        try:
            action()
        except ContractRevert as exc:
            assert exc.error_name in allowed, f"unexpected revert {exc}"

    # ------------------------------------------------------------------ rules
    @rule(client=st.integers(0, 1), n=st.integers(1, 4),
          audit_bps=st.sampled_from([0, 5_000, 10_000]),
          collateral=st.sampled_from([0, 50 * TOKEN, 2 * STAKE]),
          deadline_s=st.sampled_from([120, 3600]))
    def post(self, client, n, audit_bps, collateral, deadline_s) -> None:
        w = self.world
        ids = w.post(w.clients[client], n=n, audit_bps=audit_bps, collateral=collateral,
                     deadline=w.now() + deadline_s)
        for job_id in ids:
            self.states[job_id] = JobState.POSTED

    @rule(worker=st.integers(0, 2), data=st.data(), and_commit=st.booleans())
    def assign(self, worker, data, and_commit) -> None:
        candidates = self._jobs_in(JobState.POSTED, JobState.ASSIGNED)
        if not candidates:
            return
        w = self.world
        picked = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
        actor = w.workers[worker]
        ticket, sig = w.ticket(actor, picked, audit_bps=data.draw(st.sampled_from([0, 10_000])))
        allowed = {"InsufficientFreeStake", "JobLeased", "JobDeadlinePassed"}
        if and_commit:
            self._attempt(allowed, lambda: actor.assign_and_commit(ticket, sig, [os.urandom(32) for _ in picked]))
        else:
            self._attempt(allowed, lambda: actor.assign(ticket, sig))

    @rule(worker=st.integers(0, 2))
    def commit(self, worker) -> None:
        actor = self.world.workers[worker]
        held = [i for i, r in self._records().items()
                if r.state == JobState.ASSIGNED and r.worker == actor.address]
        if held:
            self._attempt({"JobDeadlinePassed"},
                          lambda: self.world.commit(actor, held[:3], os.urandom(32)))

    @rule(seconds=st.sampled_from([1, TEST_PARAMS.challenge_window_s + 1,
                                   TEST_PARAMS.audit_window_s + 1, 3_601,
                                   TEST_PARAMS.unbonding_delay_s + 1]))
    def advance(self, seconds) -> None:
        self.world.advance(seconds)

    @rule(data=st.data(), batch=st.booleans())
    def finalize(self, data, batch) -> None:
        if not self.states:
            return
        ids = data.draw(st.lists(st.sampled_from(sorted(self.states)), min_size=1, max_size=4, unique=True))
        admin = self.world.admin
        if batch:
            admin.finalize_batch(ids)  # never reverts: unsettleable or stale jobs are skipped
        else:
            self._attempt({"NotYetSettleable", "AuditDrawPending", "InvalidJobState"},
                          lambda: admin.finalize(ids[0]))

    @rule(verifier=st.integers(0, 1), data=st.data(), passed=st.booleans())
    def resolve_audit(self, verifier, data, passed) -> None:
        candidates = self._jobs_in(JobState.COMMITTED, JobState.AUDITED)
        if candidates:
            job_id = data.draw(st.sampled_from(candidates))
            self._attempt({"NotDrawnForAudit", "WindowClosed", "AuditDrawPending"},
                          lambda: self.world.verifiers[verifier].resolve_audit(job_id, passed, os.urandom(32)))

    @rule(data=st.data())
    def appeal(self, data) -> None:
        candidates = self._jobs_in(JobState.AUDIT_FAILED)
        if candidates:
            job_id = data.draw(st.sampled_from(candidates))
            record = self.world.job(job_id)
            worker = next(a for a in self.world.workers if a.address == record.worker)
            self._attempt({"WindowClosed"}, lambda: worker.appeal(job_id, record))

    @rule(verifier=st.integers(0, 1), data=st.data(), wins=st.booleans())
    def resolve_appeal(self, verifier, data, wins) -> None:
        candidates = self._jobs_in(JobState.APPEALED)
        if candidates:
            job_id = data.draw(st.sampled_from(candidates))
            self._attempt({"VerifierConflict", "WindowClosed"},
                          lambda: self.world.verifiers[verifier].resolve_appeal(job_id, wins, os.urandom(32)))

    @rule(data=st.data())
    def reclaim(self, data) -> None:
        candidates = self._jobs_in(JobState.POSTED, JobState.ASSIGNED)
        if candidates:
            job_id = data.draw(st.sampled_from(candidates))
            record = self.world.job(job_id)
            client = next(a for a in self.world.clients if a.address == record.client)
            self._attempt({"DeadlineNotReached"}, lambda: client.reclaim(job_id, record))

    @rule(who=st.integers(0, 7))
    def withdraw(self, who) -> None:
        w = self.world
        actor = [w.admin, *w.clients, *w.workers, *w.verifiers][who]
        self._attempt({"NothingToWithdraw"}, actor.withdraw)

    @rule(verifier=st.integers(0, 1), passed=st.booleans())
    def drive_to_end(self, verifier, passed) -> None:
        """Several steps at once (so short runs reach every ending): move past the challenge
        window, settle everything, give every drawn job a verdict, move past the appeal
        window and settle again."""
        if not self.states:
            return
        w = self.world
        w.advance(TEST_PARAMS.challenge_window_s + 1)
        w.admin.finalize_batch(sorted(self.states))
        for job_id, record in w.admin.job_records(verify=False).items():
            if record.state == JobState.AUDITED:
                self._attempt({"WindowClosed", "VerifierConflict"},
                              lambda: w.verifiers[verifier].resolve_audit(job_id, passed, os.urandom(32), record))
        w.advance(TEST_PARAMS.appeal_window_s + 1)
        w.admin.finalize_batch(sorted(self.states))

    @rule(worker=st.integers(0, 2), amount=st.sampled_from([1 * TOKEN, STAKE // 2, 2 * STAKE]))
    def unstake(self, worker, amount) -> None:
        self._attempt({"InsufficientFreeStake"}, lambda: self.world.workers[worker].unstake(amount))

    @rule(worker=st.integers(0, 2))
    def withdraw_unbonded(self, worker) -> None:
        self._attempt({"NothingToWithdraw", "StillUnbonding"},
                      self.world.workers[worker].withdraw_unbonded)

    @rule(worker=st.integers(0, 2), amount=st.sampled_from([1 * TOKEN, 100 * TOKEN]))
    def stake(self, worker, amount) -> None:
        self.world.workers[worker].stake(amount)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def contracts_are_solvent_and_consistent(self) -> None:
        w = self.world
        admin = w.admin
        records = self._records()
        owed = sum(r.escrow for r in records.values())
        owed += sum(admin.account_of(a.address).withdrawable for a in w.actors)
        assert admin.balance_of(w.market.address) == owed
        stakes = {a.address: admin.stake_of(a.address) for a in w.workers}
        staked = sum(s.free + s.locked + s.unbonding for s in stakes.values())
        assert admin.balance_of(admin.stakes.address) == staked
        for address, position in stakes.items():
            held = sum(r.collateral for r in records.values()
                       if r.holds_collateral and r.worker == address)
            assert position.locked == held, f"locked stake of {address} != collateral held"
        assert admin.credit.functions.totalSupply().call() == self.supply

        head = w.w3.eth.block_number
        events = admin.events(self.block + 1, head) if head > self.block else []
        self.block = head
        # states only move forward
        for job_id, record in records.items():
            old = self.states.get(job_id, JobState.NONE)
            assert _reachable(old, record.state), f"job {job_id}: {old.name} -> {record.state.name}"
            self.states[job_id] = record.state
        # stake only shrinks by slash or withdrawal
        shrink_ok = {e.args.get("staker") or e.args.get("worker") for e in events
                     if e.name in ("StakeSlashed", "UnbondedWithdrawn")}
        for address, position in stakes.items():
            total = position.free + position.locked + position.unbonding
            if total < self.stake_totals[address]:
                assert address in shrink_ok, f"stake of {address} shrank without slash/withdrawal"
            self.stake_totals[address] = total

    @invariant()
    def no_job_settled_twice(self) -> None:
        if not self.states:
            return
        outcomes: Counter[int] = Counter()
        for e in self.world.admin.job_events():
            if e.name in ("JobPaid", "JobSlashed"):
                outcomes[e.args["jobId"]] += 1
            elif e.name == "JobRefunded" and self.states.get(e.args["jobId"]) == JobState.REFUNDED:
                outcomes[e.args["jobId"]] += 1
        assert all(count <= 1 for count in outcomes.values()), outcomes


@pytest.mark.property
def test_market_state_machine(anvil) -> None:
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    MarketMachine.world = world
    OUTCOMES.clear()
    try:
        run_state_machine_as_test(
            MarketMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
    finally:
        anvil.revert(snapshot)
        world.resync()
    print(f"terminal outcomes over {EXAMPLES} examples: {dict(OUTCOMES)}")
    # TODO(next session): the per-example terminal-outcome count reads empty even when runs
    # reach SLASHED/FINALIZED; find why before asserting non-vacuity here.
