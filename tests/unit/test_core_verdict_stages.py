"""The later verdicts in the pure core: a contested appeal verdict and a proposed void, as the
event reducer, the draw's stage and cover, the windows and settlement see them (mirrors of
JobMarketSettlement; the contract tests hold the reducer to the stored digests)."""

from __future__ import annotations

from meshcompute.core.audit_draw import STAGES, verdict_covers, verdict_stage
from meshcompute.core.dashboard import audit_story
from meshcompute.core.job import PASS_BOND_REWARDS, JobState, apply_event, can_transition
from meshcompute.core.lease import verdict_closes_at
from meshcompute.core.settlement import SettleAction, settle_action
from tests.unit.test_core import POSTED

WORKER, FIRST, SECOND = "0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20
WINDOWS = {"challenge_window": 60, "appeal_window": 300, "audit_window": 600}


def _judged(passed: bool):
    record = apply_event(None, "JobPosted", POSTED)
    record = apply_event(record, "JobCommitted", {"resultHash": b"\x02" * 32, "committedAt": 600,
                                                  "committedBlock": 9, "worker": WORKER,
                                                  "leaseExpiry": 500, "auditBps": 10_000})
    record = apply_event(record, "AuditResolved", {"verifier": FIRST, "passed": passed,
                                                   "resolvedAt": 700, "evidenceHash": b""})
    return apply_event(record, "AuditAppealed", {"appellant": WORKER})


def test_an_overturned_failure_is_contested_and_keeps_the_first_bond_locked() -> None:
    appealed = _judged(False)
    assert verdict_stage(appealed.state) == STAGES["appeal"]
    # + the failure's bond, or the reward and collateral alone where no seat covers that much
    assert verdict_covers(appealed, STAGES["appeal"]) == (100 + 50 + 100, 150)
    contested = apply_event(appealed, "AppealContested", {
        "verifier": SECOND, "workerWins": True, "evidenceHash": b"\x05" * 32,
        "contestedAt": 1500})
    assert can_transition(appealed.state, contested.state)
    assert (contested.state, contested.resolved_at) == (JobState.APPEAL_CONTESTED, 1500)
    assert contested.auditor == FIRST  # the first verdict's verifier, whose bond is at stake
    assert contested.locks() == {WORKER: 50, FIRST: 100}
    assert verdict_stage(contested.state) == STAGES["contest"]
    assert verdict_covers(contested, STAGES["contest"]) == (150,)
    assert verdict_closes_at(contested, **WINDOWS) == 1500 + 600
    now_open = {"now": 2100, **WINDOWS, "audited": lambda *_: None}
    assert settle_action(1, contested, **now_open) is None
    assert settle_action(1, contested, **{**now_open, "now": 2101}) == SettleAction.VOID
    assert apply_event(contested, "JobRefunded", {}).state == JobState.REFUNDED
    assert apply_event(contested, "JobPaid", {}).state == JobState.FINALIZED


def test_a_contested_dispute_holds_the_dispute_bond_and_the_pass_bond() -> None:
    disputed = _judged(True)
    assert disputed.state == JobState.DISPUTED
    assert verdict_covers(disputed, STAGES["appeal"])[0] == 150 + PASS_BOND_REWARDS * 100
    contested = apply_event(disputed, "AppealContested", {
        "verifier": SECOND, "workerWins": False, "evidenceHash": b"\x05" * 32,
        "contestedAt": 1500})
    assert contested.state == JobState.DISPUTE_CONTESTED
    assert contested.escrow == 100 + 2 * 10  # reward, audit fee, dispute bond
    assert contested.locks() == {WORKER: 50, FIRST: PASS_BOND_REWARDS * 100}
    assert apply_event(contested, "JobSlashed", {}).state == JobState.SLASHED


def test_a_proposed_void_waits_for_a_second_seat() -> None:
    record = apply_event(None, "JobPosted", POSTED)
    record = apply_event(record, "JobCommitted", {"resultHash": b"\x02" * 32, "committedAt": 600,
                                                  "committedBlock": 9, "worker": WORKER,
                                                  "leaseExpiry": 500, "auditBps": 10_000})
    record = apply_event(record, "AuditDrawn", {"audited": True})
    proposed = apply_event(record, "VoidProposed", {"verifier": FIRST, "evidenceHash": b"\x06" * 32,
                                                    "proposedAt": 900})
    assert (proposed.state, proposed.auditor, proposed.resolved_at) == (
        JobState.VOID_PROPOSED, FIRST, 900)
    assert proposed.locks() == {WORKER: 50, FIRST: 100 + 10}  # the proposer's bond: reward + fee
    assert proposed.escrow == 110
    assert verdict_stage(proposed.state) == STAGES["confirm"]
    assert verdict_closes_at(proposed, **WINDOWS) == 1500
    # the second seat's pass replaces the proposal as the job's verdict
    passed = apply_event(proposed, "AuditResolved", {"verifier": SECOND, "passed": True,
                                                     "resolvedAt": 1000, "evidenceHash": b""})
    assert (passed.state, passed.auditor) == (JobState.AUDIT_PASSED, SECOND)
    # ... or its void confirms it
    voided = apply_event(apply_event(proposed, "AuditVoided", {"verifier": SECOND}),
                         "JobRefunded", {})
    assert voided.state == JobState.REFUNDED


def test_the_audit_story_tells_a_contest_apart_from_the_appeal() -> None:
    class E:
        def __init__(self, n, name, **args):
            self.block_number, self.log_index, self.name, self.args = n, 0, name, args

    story = audit_story([
        E(1, "AuditDrawn", audited=True),
        E(2, "VoidProposed", verifier=FIRST, evidenceHash=b"\x06" * 32),
        E(3, "AuditResolved", verifier=SECOND, passed=False, evidenceHash=b"\x07" * 32),
        E(4, "AuditAppealed", appellant=WORKER),
        E(5, "AppealContested", verifier=FIRST, workerWins=True, evidenceHash=b"\x08" * 32),
        E(6, "AppealResolved", verifier="0x" + "55" * 20, workerWins=True,
          evidenceHash=b"\x09" * 32),
    ])
    assert (story["verdict"], story["verifier"]) == ("failed", SECOND)
    assert story["appeal"]["verifier"] == FIRST and story["appeal"]["worker_wins"] is True
    assert story["contest"]["verifier"] == "0x" + "55" * 20
    assert story["contest"]["worker_wins"] is True
    plain = audit_story([E(1, "AuditDrawn", audited=True),
                         E(2, "VoidProposed", verifier=FIRST, evidenceHash=b"\x06" * 32)])
    assert plain["verdict"] == "void proposed" and plain["contest"] is None


def _upheld(passed: bool):
    appealed = _judged(passed)
    return apply_event(appealed, "AppealUpheld", {
        "verifier": SECOND, "workerWins": passed, "evidenceHash": b"\x05" * 32,
        "upheldAt": 1500})


def test_an_upheld_failure_waits_its_escalation_window_then_stands() -> None:
    upheld = _upheld(False)
    assert can_transition(JobState.APPEALED, upheld.state)
    assert (upheld.state, upheld.resolved_at) == (JobState.FAILURE_UPHELD, 1500)
    assert upheld.locks() == {WORKER: 50, FIRST: 100}  # the first verdict's bond stays at stake
    now = {"now": 1500 + 300, **WINDOWS, "audited": lambda *_: None}
    assert settle_action(1, upheld, **now) is None  # the worker may still escalate
    assert settle_action(1, upheld, **{**now, "now": 1801}) == SettleAction.SLASH
    assert apply_event(upheld, "JobSlashed", {}).state == JobState.SLASHED


def test_an_escalated_failure_locks_the_bond_and_waits_for_a_third_seat() -> None:
    escalated = apply_event(_upheld(False), "AppealEscalated", {
        "appellant": WORKER, "bond": 150, "escalatedAt": 1700})
    assert can_transition(JobState.FAILURE_UPHELD, escalated.state)
    assert (escalated.state, escalated.resolved_at) == (JobState.FAILURE_ESCALATED, 1700)
    # the collateral, and the bond: the collateral again and the reward
    assert escalated.locks() == {WORKER: 50 + 150, FIRST: 100}
    assert verdict_stage(escalated.state) == STAGES["escalation"]
    assert verdict_covers(escalated, STAGES["escalation"]) == (150,)
    assert verdict_closes_at(escalated, **WINDOWS) == 1700 + 600
    now = {"now": 2300, **WINDOWS, "audited": lambda *_: None}
    assert settle_action(1, escalated, **now) is None
    # unjudged, the upheld failure stands
    assert settle_action(1, escalated, **{**now, "now": 2301}) == SettleAction.SLASH
    assert apply_event(escalated, "JobRefunded", {}).state == JobState.REFUNDED  # a tie: void


def test_an_escalated_pass_holds_the_reward_bond_in_escrow() -> None:
    upheld = _upheld(True)
    assert upheld.state == JobState.PASS_UPHELD
    assert upheld.escrow == 100 + 2 * 10
    assert upheld.locks() == {WORKER: 50, FIRST: PASS_BOND_REWARDS * 100}
    now = {"now": 1801, **WINDOWS, "audited": lambda *_: None}
    assert settle_action(1, upheld, **now) == SettleAction.PAY
    escalated = apply_event(upheld, "AppealEscalated", {
        "appellant": "0x" + "11" * 20, "bond": 120, "escalatedAt": 1700})
    assert escalated.state == JobState.PASS_ESCALATED
    # reward, audit fee, dispute bond, and the escalation bond: the reward and two audit fees
    assert escalated.escrow == 100 + 2 * 10 + 120
    assert escalated.locks() == {WORKER: 50, FIRST: PASS_BOND_REWARDS * 100}
    assert apply_event(escalated, "JobPaid", {}).state == JobState.FINALIZED


def test_the_audit_story_tells_an_escalation_apart_from_the_appeal() -> None:
    class E:
        def __init__(self, n, name, **args):
            self.block_number, self.log_index, self.name, self.args = n, 0, name, args

    third = "0x" + "55" * 20
    story = audit_story([
        E(1, "AuditDrawn", audited=True),
        E(2, "AuditResolved", verifier=FIRST, passed=False, evidenceHash=b"\x07" * 32),
        E(3, "AuditAppealed", appellant=WORKER),
        E(4, "AppealUpheld", verifier=SECOND, workerWins=False, evidenceHash=b"\x08" * 32),
        E(5, "AppealEscalated", appellant=WORKER, bond=60),
        E(6, "AppealResolved", verifier=third, workerWins=True, evidenceHash=b"\x09" * 32),
    ])
    assert story["appeal"]["verifier"] == SECOND and story["appeal"]["worker_wins"] is False
    assert story["contest"] is None
    assert story["escalation"] == {"by": WORKER, "verifier": third, "worker_wins": True,
                                   "evidence": "0x" + "09" * 32}
