"""After the commit: follow this worker's jobs on chain, appeal a failed audit, read earnings.

:class:`CommitWatch` keeps the ids of the jobs the node committed and, on each
:meth:`~CommitWatch.check`, rebuilds their records from the chain's events. A job that failed
its audit is appealed exactly once (``JobMarket.appeal``, inside the appeal window the contract
enforces) unless the node's output policy never appeals (``appeal=False``), and a failure upheld
on appeal is escalated once the same way (a third verifier judges it; the node's collateral is
locked again as the escalation's bond until then); paid, slashed and refunded jobs are reported
and dropped. Earnings come from ``JobMarket.accountOf``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshcompute.chain.contracts import MeshActor
from meshcompute.core.job import JobRecord, JobState
from meshcompute.errors import ContractRevert, MeshError

#: Reverts after which an appeal can never pass: the window closed, or the job is no longer an
#: open failed audit (appealed already, settled, closed).
_FINAL_APPEAL_REVERTS = frozenset({"WindowClosed", "InvalidJobState", "JobClosed",
                                   "NotAssignedWorker"})


@dataclass
class _Watched:
    job_id: int
    audit_failed_seen: bool = False
    appealed: bool = False
    escalated: bool = False
    preparing: threading.Thread | None = None
    send_by: float = 0.0


class CommitWatch:
    """The committed jobs of one worker address, followed until they settle."""

    def __init__(self, actor: MeshActor, *, appeal: bool, emit: Callable[..., None],
                 before_appeal: Callable[[int, JobRecord], None] | None = None) -> None:
        self.actor = actor
        self.appeal = appeal
        self.before_appeal = before_appeal
        """Run once, in a thread of its own, before a job's first appeal is sent (a training
        job's worker uploads the states its appeal is judged on); the appeal waits for it at
        most half the appeal window, and an error is reported and the appeal sent."""
        self._emit = emit
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._last_earnings: tuple[int, int] | None = None
        self.earned_at_start: int | None = None
        self.earned: int | None = None
        self.appealed = 0
        self.escalated = 0

    @property
    def address(self) -> str:
        return str(self.actor.address)

    def watch(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._watched.setdefault(int(job_id), _Watched(int(job_id)))

    def job_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._watched)

    def check(self) -> None:
        """One pass over the watched jobs (one ``eth_getLogs`` for all of them)."""
        ids = self.job_ids()
        if not ids:
            return
        try:
            records = self.actor.job_records(ids, verify=False)
        except Exception as exc:  # noqa: BLE001 - a flaky node must not stop the worker
            self._emit("warning", message=f"reading committed jobs failed: {exc}")
            return
        for job_id in ids:
            record = records.get(job_id)
            with self._lock:
                watched = self._watched.get(job_id)
            if record is not None and watched is not None:
                self._follow(watched, record)

    def _follow(self, watched: _Watched, record: JobRecord) -> None:
        job_id = watched.job_id
        if record.worker.lower() != self.address.lower():
            self._emit("warning", job_id=job_id,
                       message=f"job {job_id} is held by {record.worker} on chain, not us")
            self._drop(job_id)
            return
        state = record.state
        if state == JobState.AUDIT_FAILED:
            if not watched.audit_failed_seen:
                watched.audit_failed_seen = True
                self._emit("audit_failed", job_id=job_id)
            if self.appeal and not watched.appealed:
                self._appeal(watched, record)
        elif state == JobState.FAILURE_UPHELD:
            if self.appeal and not watched.escalated:
                self._escalate(watched, record)
        elif state == JobState.FINALIZED:
            self._emit("paid", job_id=job_id)
            self._drop(job_id)
        elif state == JobState.SLASHED:
            self._emit("slashed", job_id=job_id)
            self._drop(job_id)
        elif state.terminal:
            self._drop(job_id)

    def _appeal(self, watched: _Watched, record: JobRecord) -> None:
        job_id = watched.job_id
        if self.before_appeal is not None:
            if watched.preparing is None:  # in the background: the node's loop goes on
                watched.send_by = time.monotonic() + self._preparation_budget()
                watched.preparing = threading.Thread(
                    target=self._prepare, args=(job_id, record), daemon=True,
                    name=f"mesh-appeal-{job_id}")
                watched.preparing.start()
            if watched.preparing.is_alive() and time.monotonic() < watched.send_by:
                return  # the appeal goes once it is ready, or at half its window
        watched.appealed = True
        sent = self._send(job_id, record, "appeal")
        watched.appealed = sent is not None
        if sent:
            self.appealed += 1
            self._emit("appealed", job_id=job_id)

    def _escalate(self, watched: _Watched, record: JobRecord) -> None:
        watched.escalated = True
        sent = self._send(watched.job_id, record, "escalation")
        watched.escalated = sent is not None
        if sent:
            self.escalated += 1
            self._emit("escalated", job_id=watched.job_id)

    def _send(self, job_id: int, record: JobRecord, what: str) -> bool | None:
        """Send an appeal (or an escalation, the same call): True when sent, False when it
        never can be, None when it should be tried again on the next pass."""
        try:
            self.actor.appeal(job_id, record)
        except ContractRevert as exc:
            if exc.error_name in _FINAL_APPEAL_REVERTS:  # window closed, or the job moved on
                self._emit("error", job_id=job_id,
                           message=f"{what} of job {job_id} reverted: {exc}")
                return False
            # anything else may pass later (a stale record, a node hiccup, stake not yet free
            # for the escalation's bond): try again on the next pass, until the window closes
            self._emit("warning", job_id=job_id,
                       message=f"{what} of job {job_id} reverted, will retry: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - not sent: try again on the next pass
            self._emit("warning", job_id=job_id, message=f"{what} of job {job_id} failed: {exc}")
            return None
        return True

    def _prepare(self, job_id: int, record: JobRecord) -> None:
        assert self.before_appeal is not None
        try:
            self.before_appeal(job_id, record)
        except Exception as exc:  # noqa: BLE001 - the appeal is sent all the same
            self._emit("warning", job_id=job_id,
                       message=f"preparing the appeal of job {job_id} failed: {exc}")

    def _preparation_budget(self) -> float:
        """Half the appeal window: the appeal itself is sent by then, ready or not."""
        try:
            return max(1.0, float(self.actor.config()["appeal_window_s"]) / 2)
        except Exception:  # noqa: BLE001 - unknown: a minute
            return 60.0

    def _drop(self, job_id: int) -> None:
        with self._lock:
            self._watched.pop(job_id, None)

    def refresh_earnings(self) -> None:
        """Report earnings so far (``JobMarket.accountOf``) when they changed."""
        try:
            state: Any = self.actor.account_of(self.address)
        except (MeshError, Exception) as exc:  # noqa: BLE001 - shown, never fatal
            self._emit("warning", message=f"reading earnings failed: {exc}")
            return
        current = (state.earned, state.withdrawable)
        if self.earned_at_start is None:
            self.earned_at_start = int(state.earned)
        self.earned = int(state.earned)
        if current != self._last_earnings:
            self._last_earnings = current
            self._emit("earnings", earned_wei=str(state.earned),
                       withdrawable_wei=str(state.withdrawable), completed=state.completed)
