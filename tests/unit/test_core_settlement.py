"""The pure settlement selection: JobMarket._settle's rules as written, at their boundaries.

The differential test against the deployed contract (eth_call of ``finalize`` on fabricated
records) lives in tests/market/test_settlement_rules.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcompute.core.job import ZERO_ADDRESS, ZERO_HASH, JobRecord, JobState
from meshcompute.core.settlement import SettleAction, payable_jobs, settle_action

CHALLENGE, AUDIT, APPEAL = 60, 300, 200
WINDOWS = {"challenge_window": CHALLENGE, "audit_window": AUDIT, "appeal_window": APPEAL}
WORKER = "0x" + "11" * 20
CLIENT = "0x" + "22" * 20


def record(state: JobState, *, committed_at: int = 1_000, resolved_at: int = 0) -> JobRecord:
    return JobRecord(
        client=CLIENT,
        worker=WORKER,
        auditor=ZERO_ADDRESS,
        reward=100,
        audit_fee=10,
        collateral=50,
        deadline=10_000,
        lease_expiry=5_000,
        committed_at=committed_at,
        committed_block=7,
        resolved_at=resolved_at,
        audit_bps=0,
        state=state,
        spec_hash=b"\x01" * 32,
        result_hash=ZERO_HASH if state < JobState.COMMITTED else b"\x02" * 32,
    )


def never_audited(_job_id: int, _record: JobRecord) -> bool:
    return False


def action(rec: JobRecord, now: int, audited=never_audited, job_id: int = 1) -> SettleAction | None:
    return settle_action(job_id, rec, now=now, audited=audited, **WINDOWS)


def test_settle_action_committed_opens_at_challenge_window_inclusive() -> None:
    rec = record(JobState.COMMITTED, committed_at=1_000)
    assert action(rec, 1_000 + CHALLENGE - 1) is None
    assert action(rec, 1_000 + CHALLENGE) is SettleAction.PAY


def test_settle_action_committed_waits_for_the_draw() -> None:
    rec = record(JobState.COMMITTED)
    assert action(rec, 10**9, audited=lambda *_: None) is None
    assert action(rec, 10**9, audited=lambda *_: True) is SettleAction.RECORD_DRAW
    assert not SettleAction.RECORD_DRAW.final


def test_settle_action_draw_not_consulted_before_challenge_window() -> None:
    calls: list[int] = []

    def audited(job_id: int, _rec: JobRecord) -> bool:
        calls.append(job_id)
        return False

    assert action(record(JobState.COMMITTED, committed_at=1_000), 1_000, audited) is None
    assert calls == []


def test_settle_action_audited_voids_strictly_after_audit_window() -> None:
    rec = record(JobState.AUDITED, committed_at=1_000)
    closes = 1_000 + CHALLENGE + AUDIT
    assert action(rec, closes) is None
    assert action(rec, closes + 1) is SettleAction.VOID  # silence never pays


def test_settle_action_audit_failed_slashes_strictly_after_appeal_window() -> None:
    rec = record(JobState.AUDIT_FAILED, resolved_at=2_000)
    assert action(rec, 2_000 + APPEAL) is None
    assert action(rec, 2_000 + APPEAL + 1) is SettleAction.SLASH


def test_settle_action_appealed_without_appeal_verdict_is_void() -> None:
    """Silence decides nothing: an appeal nobody judged in time leaves the job void."""
    rec = record(JobState.APPEALED, resolved_at=2_000)
    assert action(rec, 2_000 + APPEAL + AUDIT) is None
    assert action(rec, 2_000 + APPEAL + AUDIT + 1) is SettleAction.VOID


def test_settle_action_audit_passed_pays_strictly_after_appeal_window() -> None:
    """A pass waits for the client's dispute window before the worker is paid."""
    rec = record(JobState.AUDIT_PASSED, resolved_at=2_000)
    assert action(rec, 2_000 + APPEAL) is None
    assert action(rec, 2_000 + APPEAL + 1) is SettleAction.PAY


def test_settle_action_disputed_pass_without_appeal_verdict_is_void() -> None:
    """Silence never pays: a disputed pass nobody judged in time is not paid."""
    rec = record(JobState.DISPUTED, resolved_at=2_000)
    assert action(rec, 2_000 + APPEAL + AUDIT) is None
    assert action(rec, 2_000 + APPEAL + AUDIT + 1) is SettleAction.VOID


@pytest.mark.parametrize(
    "state",
    [JobState.POSTED, JobState.ASSIGNED, JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED],
)
def test_settle_action_refuses_states_settlement_does_not_touch(state: JobState) -> None:
    assert action(record(state), 10**12, audited=lambda *_: False) is None


def test_settle_action_rejects_negative_window() -> None:
    with pytest.raises(ValueError, match="audit_window"):
        settle_action(
            1, record(JobState.AUDITED), now=0, challenge_window=1, audit_window=-1,
            appeal_window=1, audited=never_audited,
        )


states = st.sampled_from(list(JobState)[1:])
draws = st.sampled_from([None, False, True])


@st.composite
def records(draw: st.DrawFn) -> dict[int, tuple[JobRecord, bool | None]]:
    n = draw(st.integers(0, 12))
    out: dict[int, tuple[JobRecord, bool | None]] = {}
    for job_id in draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True)):
        rec = replace(
            record(draw(states)),
            committed_at=draw(st.integers(0, 5_000)),
            resolved_at=draw(st.integers(0, 5_000)),
        )
        out[job_id] = (rec, draw(draws))
    return out


@given(records(), st.integers(0, 10_000), st.integers(0, 10_000))
def test_payable_jobs_stays_payable_as_time_passes(jobs, now: int, later: int) -> None:
    """Every window only opens: a job finalize accepts now it still accepts later (with the
    same draw), and the action does not change."""
    recs = {job_id: rec for job_id, (rec, _) in jobs.items()}

    def audited(job_id: int, _rec: JobRecord) -> bool | None:
        return jobs[job_id][1]

    t0, t1 = sorted((now, later))
    early = payable_jobs(recs, now=t0, audited=audited, **WINDOWS)
    late = payable_jobs(recs, now=t1, audited=audited, **WINDOWS)
    assert set(early) <= set(late)
    for job_id in early:
        rec = recs[job_id]
        assert action(rec, t0, audited, job_id) == action(rec, t1, audited, job_id)


@given(records(), st.integers(0, 10_000))
def test_payable_jobs_matches_the_contract_rules(jobs, now: int) -> None:
    """Each id returned satisfies _settle's rule for its state, each id left out fails it."""
    recs = {job_id: rec for job_id, (rec, _) in jobs.items()}

    def audited(job_id: int, _rec: JobRecord) -> bool | None:
        return jobs[job_id][1]

    chosen = payable_jobs(recs, now=now, audited=audited, **WINDOWS)
    assert chosen == sorted(chosen)
    for job_id, (rec, draw) in jobs.items():
        if rec.state == JobState.COMMITTED:
            expected = now - rec.committed_at >= CHALLENGE and draw is not None
        elif rec.state == JobState.AUDITED:
            expected = now - rec.committed_at > CHALLENGE + AUDIT
        elif rec.state in (JobState.AUDIT_FAILED, JobState.AUDIT_PASSED):
            expected = now - rec.resolved_at > APPEAL
        elif rec.state in (JobState.APPEALED, JobState.DISPUTED):
            expected = now - rec.resolved_at > APPEAL + AUDIT
        elif rec.state in (JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED,
                           JobState.VOID_PROPOSED, JobState.FAILURE_ESCALATED,
                           JobState.PASS_ESCALATED):
            # an unconfirmed void, an undecided contest, an unjudged escalation
            expected = now - rec.resolved_at > AUDIT
        elif rec.state in (JobState.FAILURE_UPHELD, JobState.PASS_UPHELD):
            expected = now - rec.resolved_at > APPEAL  # unescalated, the uphold stands
        else:
            expected = False
        assert (job_id in chosen) == expected, (rec.state, now, draw)
        if job_id in chosen:
            act = action(rec, now, audited, job_id)
            assert act is not None
            assert act.final == (rec.state != JobState.COMMITTED or draw is False)
            # an unjudged appeal is void; an upheld failure stands, escalated or not
            slash = rec.state in (JobState.AUDIT_FAILED, JobState.FAILURE_UPHELD,
                                  JobState.FAILURE_ESCALATED)
            assert (act is SettleAction.SLASH) == slash
