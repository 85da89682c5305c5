"""Which jobs a settlement transaction can act on, mirrored from ``JobMarket._settle``.

``JobMarket.finalize`` (and each entry of ``finalizeBatch``) acts on a job in one of four ways,
or refuses it; :func:`settle_action` answers the same question off chain, at block time
``now``:

* ``COMMITTED`` — from ``committed_at + challenge_window`` on (inclusive) and once the audit
  draw can be taken (the block after ``committed_block + 1`` exists): the draw decides. Not
  drawn: the worker is paid (:attr:`SettleAction.PAY`). Drawn: the contract records the draw
  (``AuditDrawn``, state ``AUDITED``) and the job waits for its verdict
  (:attr:`SettleAction.RECORD_DRAW`).
* ``AUDITED`` — after ``committed_at + challenge_window + audit_window`` (strictly): the verdict
  did not come in time, so the job is void (:attr:`SettleAction.VOID`): silence never pays.
* ``AUDIT_FAILED`` — after ``resolved_at + appeal_window`` (strictly) with no appeal: slashed.
* ``APPEALED`` — after ``resolved_at + appeal_window + audit_window`` (strictly) with no appeal
  verdict: void (:attr:`SettleAction.VOID`: silence decides nothing, so the worker is neither
  paid nor slashed; the silent appeal verifiers lose part of their registry deposits).
* ``AUDIT_PASSED`` — after ``resolved_at + appeal_window`` (strictly) with no dispute from the
  client: the pass stands, the worker and the verifier are paid (:attr:`SettleAction.PAY`).
* ``DISPUTED`` — after ``resolved_at + appeal_window + audit_window`` (strictly) with no appeal
  verdict: void (:attr:`SettleAction.VOID`: silence never pays, so the disputed result is not
  paid; the client gets its reward back and forfeits its dispute bond to the protocol, the
  passing verifier earns its fee).
* ``FAILURE_UPHELD`` / ``PASS_UPHELD`` — after ``resolved_at + appeal_window`` (strictly),
  unescalated: the upheld failure is slashed, the upheld pass paid.
* ``FAILURE_ESCALATED`` / ``PASS_ESCALATED`` — after ``resolved_at + audit_window`` (strictly)
  with no verdict from the third seat: silence changes no verdict, so the upheld one stands
  (slashed, paid) and the escalation bond comes back.

Every other state (posted, assigned, and the terminal ones) is refused. Only the draw needs
the chain (the hash of the block after the commit), so the caller supplies it as ``audited``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum

from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.lease import (
    appeal_closes_at,
    appeal_verdict_closes_at,
    audit_closes_at,
    contest_closes_at,
    window_open,
)

AuditDraw = Callable[[int, JobRecord], bool | None]
"""``audited(job_id, record)``: the audit draw of a committed job, None while not drawable."""


class SettleAction(Enum):
    """What a settlement transaction does to one job."""

    PAY = "pay"
    """The worker is paid (not drawn for audit, after the challenge window; or a passed audit
    that stands, after its appeal window)."""
    VOID = "void"
    """Drawn for audit, no verdict in time (or a disputed pass, no appeal verdict in time):
    the reward is not paid, the client gets it back and the worker its collateral (the job
    ends Refunded)."""
    SLASH = "slash"
    """A failed audit stands: the worker's collateral is slashed and the client refunded."""
    RECORD_DRAW = "record_draw"
    """The job was drawn for audit: the draw is recorded and the job waits for a verdict."""

    @property
    def final(self) -> bool:
        """Whether the job is terminal after this action."""
        return self is not SettleAction.RECORD_DRAW


def settle_action(
    job_id: int,
    record: JobRecord,
    *,
    now: int,
    challenge_window: int,
    audit_window: int,
    appeal_window: int,
    audited: AuditDraw,
) -> SettleAction | None:
    """What ``finalize(job_id, record)`` would do in a block with timestamp ``now``; None when
    the contract would refuse it (not yet, or a state settlement does not touch).

    ``audited`` is consulted only for a committed job whose challenge window has passed.
    """
    _check_windows(challenge_window, audit_window, appeal_window)
    state = record.state
    if state == JobState.COMMITTED:
        if now < record.committed_at + challenge_window:
            return None
        draw = audited(job_id, record)
        if draw is None:
            return None
        return SettleAction.RECORD_DRAW if draw else SettleAction.PAY
    if state == JobState.AUDITED:
        closes_at = audit_closes_at(record, challenge_window=challenge_window,
                                    audit_window=audit_window)
        return None if window_open(now, closes_at) else SettleAction.VOID
    if state in (JobState.VOID_PROPOSED, JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED):
        # an unconfirmed void, or a contest nobody decided: void
        closes_at = contest_closes_at(record, audit_window=audit_window)
        return None if window_open(now, closes_at) else SettleAction.VOID
    if state in _UPHELD_STANDS:
        if state in (JobState.FAILURE_UPHELD, JobState.PASS_UPHELD):  # the escalation window
            closes_at = appeal_closes_at(record, appeal_window=appeal_window)
        else:  # the third seat's window
            closes_at = contest_closes_at(record, audit_window=audit_window)
        return None if window_open(now, closes_at) else _UPHELD_STANDS[state]
    if state in _VERDICT_STANDS:
        # a verdict stands when its appeal window closes unappealed: a failure is slashed, a
        # pass paid; an appeal or a dispute nobody judged is void
        if state in (JobState.AUDIT_FAILED, JobState.AUDIT_PASSED):
            closes_at = appeal_closes_at(record, appeal_window=appeal_window)
        else:
            closes_at = appeal_verdict_closes_at(record, appeal_window=appeal_window,
                                                 audit_window=audit_window)
        return None if window_open(now, closes_at) else _VERDICT_STANDS[state]
    return None


#: What finalize does to a job once its verdict's windows closed, by the state it is in.
_VERDICT_STANDS = {
    JobState.AUDIT_FAILED: SettleAction.SLASH,
    JobState.APPEALED: SettleAction.VOID,
    JobState.AUDIT_PASSED: SettleAction.PAY,
    JobState.DISPUTED: SettleAction.VOID,
}


#: An upheld verdict unescalated, or escalated and unjudged, stands.
_UPHELD_STANDS = {
    JobState.FAILURE_UPHELD: SettleAction.SLASH,
    JobState.FAILURE_ESCALATED: SettleAction.SLASH,
    JobState.PASS_UPHELD: SettleAction.PAY,
    JobState.PASS_ESCALATED: SettleAction.PAY,
}


def settle_actions(
    records: Mapping[int, JobRecord],
    *,
    now: int,
    challenge_window: int,
    audit_window: int,
    appeal_window: int,
    audited: AuditDraw,
) -> dict[int, SettleAction]:
    """:func:`settle_action` for every record that finalize would act on, by job id."""
    actions: dict[int, SettleAction] = {}
    for job_id in sorted(records):
        action = settle_action(
            job_id,
            records[job_id],
            now=now,
            challenge_window=challenge_window,
            audit_window=audit_window,
            appeal_window=appeal_window,
            audited=audited,
        )
        if action is not None:
            actions[job_id] = action
    return actions


def payable_jobs(
    records: Mapping[int, JobRecord],
    *,
    now: int,
    challenge_window: int,
    audit_window: int,
    appeal_window: int,
    audited: AuditDraw,
) -> list[int]:
    """Ids (ascending) of the jobs ``finalize`` accepts at time ``now``: those it pays or
    slashes, and committed jobs drawn for audit, whose draw it records (the step that lets a
    job whose verifier stays silent be paid once the audit window closes)."""
    return list(
        settle_actions(
            records,
            now=now,
            challenge_window=challenge_window,
            audit_window=audit_window,
            appeal_window=appeal_window,
            audited=audited,
        )
    )


def _check_windows(challenge_window: int, audit_window: int, appeal_window: int) -> None:
    for name, value in (
        ("challenge_window", challenge_window),
        ("audit_window", audit_window),
        ("appeal_window", appeal_window),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 seconds, got {value}")
