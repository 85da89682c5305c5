"""The verifier service: follow the chain, audit what was drawn, judge appeals, post verdicts.

Each poll (:meth:`VerifierService.poll_once`):

1. reads JobMarket events from the journal's cursor (the deployment block on first start) and
   turns every ``JobCommitted``/``AuditDrawn`` into an audit task and every ``AuditAppealed``
   into an appeal task (the journal is saved with the new cursor);
2. works through every pending task, each on the job's current record as the contract stores
   it (rebuilt from events and checked against the on-chain digest):

   - audit: a committed job whose draw is not yet available waits; one not drawn is dropped
     (for a job whose ``JobCommitted`` this run has seen, the draw is computed from the seed
     block's hash, :mod:`meshcompute.core.audit_draw`, before anything else is read: most
     committed jobs are not drawn and cost no further chain read);
     a drawn one (``Committed`` + drawn, or ``Audited``) is audited while its audit window is
     open (:meth:`meshcompute.verifier.audit.Auditor.audit`) and the verdict posted with ``resolveAudit``;
   - appeal: an ``Appealed`` job whose first audit was not ours and whose worker is not us is
     recomputed a third time and decided by majority (``resolveAppeal``); a ``Disputed`` pass
     is recomputed and judged alone;
   - contest (``AppealContested``): another seat's appeal verdict overturned the first; judged
     as an appeal, and ours decides (``resolveAppeal``);
   - confirm (``VoidProposed``): another seat proposed that the job cannot be judged; audited
     as a drawn job: our void confirms it, our pass or failure replaces it;
   - anything already settled on chain (a verdict posted by anyone, a finalized job) is skipped.

   Every verdict is assigned by the draw (``JobMarket.assignedVerifier``): a verifier works only
   on the audits and appeals assigned to it, waits on the others while they may still escalate
   to it (the assigned verifier silent past half the window) and drops them once they cannot.

Fairness when blobs are missing: if the spec, program or inputs cannot be fetched, that is not
the worker's fault and no verdict is posted (the job is void when the window closes: nobody is
paid, the client gets its escrow back, the worker its collateral). Only a
missing *worker output* fails a job, and only once the window is about to close
(``final_margin_s``), so a slow upload is not punished.

One bad job never stops the service: its error is logged, counted in the journal, and the
next job is processed. Recomputation failures are retried ``max_attempts`` times.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.draws import AuditDraws
from meshcompute.core.audit_draw import needs_contract
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.lease import (
    audit_closes_at,
    contest_closes_at,
    escalated,
    final_margin,
    in_final_margin,
    verdict_closes_at,
    window_open,
)
from meshcompute.errors import (
    AuthError,
    ChainError,
    ChainUnavailable,
    InsufficientFunds,
    ServiceUnavailable,
    StaleJobRecord,
    TooLate,
    WrongJobState,
)
from meshcompute.health import write_health
from meshcompute.units import format_mesh
from meshcompute.verifier.audit import (
    Auditor,
    MissingBlob,
    NotReproducible,
    RecomputeFailed,
    VerdictReady,
    WorkerOutputMissing,
)
from meshcompute.verifier.evidence import APPEAL, AUDIT
from meshcompute.verifier.journal import Journal
from meshcompute.verifier.verdicts import job_verdicts

log = logging.getLogger("meshcompute.verifier")

#: Tasks of the later verdicts (their recomputations are an audit's and an appeal's):
#: confirming or replacing a void another seat proposed, deciding a contested appeal, and
#: judging an escalated uphold.
CONFIRM = "confirm"
CONTEST = "contest"
ESCALATION = "escalation"

_TASK_EVENTS = {"JobCommitted": AUDIT, "AuditDrawn": AUDIT, "AuditAppealed": APPEAL,
                "VoidProposed": CONFIRM, "AppealContested": CONTEST,
                "AppealEscalated": ESCALATION}
_WANTED = {CONTEST: (JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED),
           ESCALATION: (JobState.FAILURE_ESCALATED, JobState.PASS_ESCALATED),
           APPEAL: (JobState.APPEALED, JobState.DISPUTED)}


@dataclass(frozen=True)
class ServiceConfig:
    poll_interval_s: float = 2.0
    """Seconds between polls of the chain."""
    final_margin_s: int = 60
    """How close to the end of a window a missing worker output becomes a fail (capped at
    half the window)."""
    max_attempts: int = 3
    """Recomputations tried for one task before it is given up."""
    max_errors: int = 10
    """Unexpected errors tolerated for one task before it is given up (its verdict then
    escalates to another verifier, or the job is void: silence never pays). The market or
    the chain being unreachable does not count. Between tries the task waits
    ``poll_interval_s`` x 2^(errors - 1), at most ``max_backoff_s``."""
    max_backoff_s: float = 120.0


@dataclass
class PollReport:
    """What one poll did (for logs and tests)."""

    cursor: int = 0
    posted: list[tuple[int, str, bool]] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def require_verifier_seat(actor: MeshActor) -> None:
    """AuthError (one line) unless the actor's account holds a seat in the verifier registry,
    which is what makes the draw assign it verdicts (anyone may take one with a deposit)."""
    seat = actor.verifier_seat(actor.address)
    if seat is None:
        minimum, _exit = actor.registry_terms()
        raise AuthError(
            f"{actor.address} holds no seat in the verifier registry "
            f"{actor.registry.address}: take one with `mesh verifier join AMOUNT` (at least "
            f"{format_mesh(minimum)} MESH, weighted by the deposit) before starting a verifier"
        )


class VerifierService:
    def __init__(
        self,
        actor: MeshActor,
        auditor: Auditor,
        journal: Journal,
        config: ServiceConfig | None = None,
        *,
        health_path: Path | None = None,
    ) -> None:
        self.actor = actor
        self.auditor = auditor
        self.journal = journal
        self.config = config or ServiceConfig()
        self.health_path = health_path
        self._windows = actor.config()
        self._commits: dict[int, tuple[int, int]] = {}
        """Job id -> (committed block, audit rate) from JobCommitted events seen this run."""
        self._retry_at: dict[tuple[int, str], float] = {}
        """(job id, kind) -> monotonic time before which a task that erred is not tried."""
        self._others_until: dict[tuple[int, str], int] = {}
        """(job id, kind) -> the last chain second in which the draw keeps that verdict with
        another verifier (before it may escalate to us): not read again until it has passed.
        Read every poll, such tasks (about half of all audits drawn, each waiting half its
        window) cost a market's verifier most of its time in chain reads."""

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set; errors of a whole poll (node or market down) are
        logged and retried on the next one."""
        stop = stop or threading.Event()
        _event(logging.INFO, "started", verifier=self.actor.address,
               job_market=self.actor.market.address, cursor=self.journal.cursor)
        while not stop.is_set():
            try:
                report = self.poll_once()
                self._write_health(report)
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                _event(logging.ERROR, "poll_failed", error=f"{type(exc).__name__}: {exc}")
            stop.wait(self.config.poll_interval_s)
        _event(logging.INFO, "stopped", cursor=self.journal.cursor)

    def poll_once(self) -> PollReport:
        report = PollReport()
        head = self._follow_events()
        report.cursor = int(self.journal.cursor or 0)
        now = int(self.actor.w3.eth.get_block("latest")["timestamp"])
        draws = AuditDraws(self.actor, head)
        dropped = 0
        pending = self.journal.pending()
        deep = self._deep_draws(draws, pending)
        for job_id, kind in pending:
            if kind == AUDIT and job_id in self._commits:
                committed_block, audit_bps = self._commits[job_id]
                drawn = draws.drawn(job_id, committed_block, audit_bps)
                if drawn is None and draws.head <= committed_block + 1:
                    report.waiting.append(job_id)  # the seed block is not mined yet
                    continue
                if drawn is None and job_id in deep:
                    drawn = deep[job_id]
                if drawn is False:
                    self._commits.pop(job_id, None)
                    self.journal.forget(job_id, AUDIT, save=False)
                    dropped += 1
                    continue
            if time.monotonic() < self._retry_at.get((job_id, kind), 0.0):
                report.waiting.append(job_id)  # backing off after an error
                continue
            if now <= self._others_until.get((job_id, kind), -1):
                report.waiting.append(job_id)  # another verifier's, not yet escalated
                continue
            self._others_until.pop((job_id, kind), None)
            try:
                outcome = self._process(job_id, kind, now)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others
                self._erred(job_id, kind, exc, report)
                continue
            self._retry_at.pop((job_id, kind), None)
            if isinstance(outcome, VerdictReady):
                report.posted.append((job_id, kind, outcome.verdict))
            elif outcome == "wait":
                report.waiting.append(job_id)
        if dropped:
            self.journal.save()
        return report

    def _deep_draws(self, draws: AuditDraws, pending: list[tuple[int, str]]) -> dict[int, bool]:
        """Whether each committed job whose seed block is too deep for the local draw
        (``needs_contract``: a verifier that fell ~200 blocks behind) still needs an audit:
        their records in one log query and the contract's draws in one batch of view calls
        (a stale record fails the batch, which the contract checks against its digest). False
        for a job not drawn, or ended without an audit. Read one by one instead, each costs a
        record read and a call: at a market's load, 80 jobs a second, that slowed the poll
        further, until the verifier judged almost nothing. A job missing here is read on its
        own as before."""
        deep = [job_id for job_id, kind in pending if kind == AUDIT and job_id in self._commits
                and needs_contract(self._commits[job_id][0], draws.head)
                and time.monotonic() >= self._retry_at.get((job_id, kind), 0.0)
                and (job_id, kind) not in self._others_until]
        if not deep:
            return {}
        try:
            # as of the block the draws are asked at: a job that moved since would make its
            # view call revert (a stale record) and fail the whole batch
            records = self.actor.job_records(deep, verify=False, at_block=draws.head)
            draws.prefetch(records)
            answers = {}
            for job_id, record in records.items():
                if record.state == JobState.COMMITTED:
                    drawable, audited = draws.status(job_id, record)
                    if drawable:
                        answers[job_id] = audited
                elif record.state == JobState.FINALIZED:
                    answers[job_id] = False  # paid without an audit: nothing to judge
            return answers
        except (ChainError, ValueError) as exc:
            _event(logging.WARNING, "deep_draws_failed", jobs=len(deep),
                   error=f"{type(exc).__name__}: {exc}")
            return {}

    def _erred(self, job_id: int, kind: str, exc: Exception, report: PollReport) -> None:
        """An unexpected error of one task: logged; tried again after a backoff; given up
        after ``max_errors`` (an unreachable market or chain never gives a task up)."""
        message = f"{type(exc).__name__}: {exc}"
        errors = self.journal.note_attempt(job_id, kind, message)
        _event(logging.ERROR, "job_error", job_id=job_id, task=kind, error=message,
               errors=errors)
        report.errors.append((job_id, message))
        if errors >= self.config.max_errors and not isinstance(
                exc, ServiceUnavailable | ChainUnavailable):
            self._retry_at.pop((job_id, kind), None)
            self._skip(job_id, kind, f"gave up after {errors} errors; the last: {message}")
            return
        wait = min(self.config.max_backoff_s,
                   self.config.poll_interval_s * 2 ** max(0, min(errors, 30) - 1))
        self._retry_at[(job_id, kind)] = time.monotonic() + wait

    # ------------------------------------------------------------------ events
    def _follow_events(self) -> int:
        """Turn new events into tasks; returns the head block read up to."""
        head = int(self.actor.w3.eth.block_number)
        cursor = self.journal.cursor
        start = self.actor.deployment.block if cursor is None else cursor + 1
        last = head
        if start <= head:
            for event in self.actor.job_events(from_block=start, to_block=head,
                                               names=_TASK_EVENTS):
                kind = _TASK_EVENTS.get(event.name)
                if kind is None or (event.name == "AuditDrawn" and not event.args["audited"]):
                    continue
                job_id = int(event.args["jobId"])
                if event.name == "JobCommitted":
                    self._commits[job_id] = (int(event.args["committedBlock"]),
                                             int(event.args["auditBps"]))
                if self.journal.task(job_id, kind) is None:
                    self.journal.ensure(job_id, kind, save=False)
                last = max(last, event.block_number)
        self.journal.set_cursor(last)
        return head

    # ------------------------------------------------------------------ one task
    def _process(self, job_id: int, kind: str, now: int) -> VerdictReady | str:
        record = self.actor.job(job_id)
        me = self.actor.address
        if record.worker == me:
            return self._skip(job_id, kind, "we are this job's worker")
        if kind == AUDIT:
            return self._audit(job_id, record, now)
        if kind == CONFIRM:
            if record.state != JobState.VOID_PROPOSED:
                return self._skip(job_id, kind, f"job is {record.state.name}, not VOID_PROPOSED")
            closes = contest_closes_at(record, audit_window=self._windows["audit_window_s"])
            return self._judge(job_id, CONFIRM, record, now, closes)
        wanted = _WANTED[kind]
        if record.state not in wanted:
            return self._skip(job_id, kind, f"job is {record.state.name}, not "
                              + " or ".join(s.name for s in wanted))
        if record.auditor == me:
            return self._skip(job_id, kind, "we did the first audit; another verifier judges")
        return self._appeal(job_id, record, now, kind)

    def _audit(self, job_id: int, record: JobRecord, now: int) -> VerdictReady | str:
        if record.state == JobState.COMMITTED:
            drawable, audited = self.actor.audit_status(job_id, record)
            if not drawable:
                return "wait"
            if not audited:
                self.journal.forget(job_id, AUDIT)
                return "not drawn"
        elif record.state != JobState.AUDITED:
            return self._skip(job_id, AUDIT, f"job is {record.state.name}: verdict already in")
        closes = audit_closes_at(record, challenge_window=self._windows["challenge_window_s"],
                                 audit_window=self._windows["audit_window_s"])
        return self._judge(job_id, AUDIT, record, now, closes)

    def _judge(self, job_id: int, kind: str, record: JobRecord, now: int,
               closes: int) -> VerdictReady | str:
        """An audit's recomputation: of a drawn job (``AUDIT``), or of a job whose void
        another seat proposed (``CONFIRM``: our void confirms it, our pass or failure replaces
        it)."""
        if not window_open(now, closes):
            return self._skip(job_id, kind, f"{kind} window closed")
        waiting = self._not_ours(job_id, kind, record, now, closes)
        if waiting is not None:
            return waiting
        final = in_final_margin(now, closes, self._margin())
        try:
            ready = self.auditor.audit(job_id, record, missing_output_is_final=final)
        except WorkerOutputMissing as exc:
            _event(logging.WARNING, "worker_output_missing", job_id=job_id, error=str(exc),
                   fail_from=closes - self._margin())
            return "wait"
        except MissingBlob as exc:
            _event(logging.WARNING, "job_blob_missing", job_id=job_id, role=exc.role,
                   sha256=exc.sha256, error=str(exc))
            if not final or self.auditor.worker_output_present(job_id, record):
                return "wait"
            ready = self.auditor.fail_without_output(job_id, record, str(exc))
        except NotReproducible as exc:
            # cannot be judged: propose a void on chain, or confirm another seat's proposal
            # (then the client gets its reward back, the proposer the audit fee for the
            # recomputations that showed it, nobody is slashed or paid the reward)
            _event(logging.WARNING, "not_reproducible", job_id=job_id, error=str(exc))
            ready = self.auditor.void(job_id, record, exc)
        except RecomputeFailed as exc:
            return self._recompute_failed(job_id, kind, exc)
        return self._post(replace(ready, kind=kind), record)

    def _appeal(self, job_id: int, record: JobRecord, now: int, kind: str) -> VerdictReady | str:
        """An appeal's (or dispute's) verdict, the contest of another seat's appeal verdict
        that overturned the first (``CONTEST``), or the escalation of one that upheld it
        (``ESCALATION``): the same recomputation, judged the same way."""
        closes = verdict_closes_at(record, challenge_window=self._windows["challenge_window_s"],
                                   appeal_window=self._windows["appeal_window_s"],
                                   audit_window=self._windows["audit_window_s"])
        if not window_open(now, closes):
            return self._skip(job_id, kind, f"{kind} verdict window closed")
        waiting = self._not_ours(job_id, kind, record, now, closes)
        if waiting is not None:
            return waiting
        first = job_verdicts(self.actor, job_id).audit
        if first is None:
            return self._skip(job_id, kind, "no first verdict found in the job's events")
        final = in_final_margin(now, closes, self._margin())
        try:
            ready = self.auditor.appeal(job_id, record, first.evidence_hash,
                                        missing_output_is_final=final)
        except WorkerOutputMissing as exc:
            _event(logging.WARNING, "worker_output_missing", job_id=job_id, error=str(exc))
            return "wait"
        except MissingBlob as exc:
            _event(logging.WARNING, "job_blob_missing", job_id=job_id, role=exc.role,
                   sha256=exc.sha256, error=str(exc))
            if not final or self.auditor.worker_output_present(job_id, record):
                return "wait"
            ready = self.auditor.fail_without_output(job_id, record, str(exc), kind=APPEAL,
                                                     first_evidence=first.evidence_hash)
        except RecomputeFailed as exc:
            return self._recompute_failed(job_id, kind, exc)
        return self._post(replace(ready, kind=kind), record)

    def _not_ours(self, job_id: int, kind: str, record: JobRecord, now: int,
                  closes: int) -> str | None:
        """None when the draw assigns this verdict to us now (``assignedVerifier``); else
        "wait" while the verdict may still escalate to us (the assigned verifier is silent
        until the second half of the window), and skipped once it went to someone else."""
        assigned = self.actor.assigned_verifier(job_id, record)
        if assigned == self.actor.address:
            return None
        window = self._windows["audit_window_s"]
        if escalated(now, closes, window):
            return self._skip(job_id, kind, f"the draw assigned this verdict to {assigned}")
        if assigned is not None:
            # another seat's until the second half of its window: look again then (if it
            # posts meanwhile, the job's state says so when we look). None is a draw not yet
            # seeded (its block is not mined): it may be ours, so it is read again next poll
            self._others_until[(job_id, kind)] = closes - window // 2
        return "wait"

    # ------------------------------------------------------------------ posting
    def _post(self, ready: VerdictReady, record: JobRecord, *, topped_up: bool = False) -> VerdictReady | str:
        if ready.void:
            def send(job_id: int, _verdict: bool, evidence: bytes, rec: JobRecord) -> Any:
                return self.actor.void_audit(job_id, evidence, rec)
        else:
            judging_audit = ready.kind in (AUDIT, CONFIRM)
            send = self.actor.resolve_audit if judging_audit else self.actor.resolve_appeal
        try:
            try:
                receipt = send(ready.job_id, ready.verdict, ready.evidence_hash, record)
            except StaleJobRecord:  # someone recorded the draw meanwhile: re-read once
                record = self.actor.job(ready.job_id)
                receipt = send(ready.job_id, ready.verdict, ready.evidence_hash, record)
        except (WrongJobState, TooLate) as exc:
            return self._skip(ready.job_id, ready.kind, f"verdict refused on chain: {exc}")
        except InsufficientFunds as exc:
            if exc.error_name == "DepositReserved" and not topped_up:
                # an overturn reserves what it would forfeit from our seat's deposit until its
                # contest ends; our other open overturns hold the rest: add the shortfall from
                # the wallet (it stays our deposit) rather than stay silent, which burns it
                if self._top_up(ready, exc):
                    return self._post(ready, self.actor.job(ready.job_id), topped_up=True)
                return self._skip(ready.job_id, ready.kind,
                                  f"the seat's unreserved deposit cannot cover the overturn: {exc}")
            # a verdict locks a bond from our free stake (the reward behind a failure, ten
            # behind a pass); without it we cannot back our verdict, so we declare the audit
            # void rather than stay silent: silence would burn our seat's deposit, and a client
            # could post jobs whose pass bond exceeds our stake for that purpose alone
            _event(logging.ERROR, "bond_unavailable", job_id=ready.job_id, task=ready.kind,
                   error=str(exc), fix="stake more: mesh provider stake AMOUNT")
            if ready.kind not in (AUDIT, CONFIRM) or ready.void:
                return self._skip(ready.job_id, ready.kind,
                                  f"no free stake for the verdict's bond: {exc}")
            record = self.actor.job(ready.job_id)
            unbacked = NotReproducible(f"this verifier's free stake cannot back the verdict's "
                                       f"bond ({exc})")
            return self._post(replace(self.auditor.void(ready.job_id, record, unbacked),
                                      kind=ready.kind), record)
        tx_hash = receipt["transactionHash"].to_0x_hex()
        self.journal.mark_posted(
            ready.job_id, ready.kind,
            verdict=ready.verdict,
            evidence_hash=ready.evidence.evidence_hash,
            evidence_sha256=ready.evidence_sha256,
            output_hashes=list(ready.evidence.output_hashes),
            tx_hash=tx_hash,
        )
        _event(logging.INFO, "verdict_posted", job_id=ready.job_id, task=ready.kind,
               verdict="void" if ready.void else ready.verdict, evidence_hash=ready.evidence.evidence_hash,
               evidence_record=ready.evidence_sha256, tx_hash=tx_hash,
               reason="; ".join(c.reason for c in ready.evidence.comparisons)
               or ready.evidence.note)
        return ready

    def _top_up(self, ready: VerdictReady, exc: InsufficientFunds) -> bool:
        """Add to the seat's deposit what an overturn lacks, when the wallet holds it."""
        shortfall = int(exc.args_dict.get("needed", 0)) - int(exc.args_dict.get("free", 0))
        balance = self.actor.balance_of(self.actor.address)
        if shortfall <= 0 or balance < shortfall:
            _event(logging.ERROR, "deposit_reserved", job_id=ready.job_id, task=ready.kind,
                   error=str(exc), wallet=format_mesh(balance),
                   fix=f"mesh verifier top-up {format_mesh(max(shortfall, 0))}")
            return False
        self.actor.top_up_verifier_deposit(shortfall)
        _event(logging.WARNING, "deposit_topped_up", job_id=ready.job_id, task=ready.kind,
               amount=format_mesh(shortfall))
        return True

    def _recompute_failed(self, job_id: int, kind: str, exc: Exception) -> str:
        attempts = self.journal.note_attempt(job_id, kind, str(exc))
        _event(logging.WARNING, "recompute_failed", job_id=job_id, task=kind, error=str(exc),
               attempts=attempts)
        if attempts >= self.config.max_attempts:
            return self._skip(job_id, kind, f"recomputation failed {attempts} times: {exc}")
        return "wait"

    def _skip(self, job_id: int, kind: str, reason: str) -> str:
        self.journal.mark_skipped(job_id, kind, reason)
        _event(logging.INFO, "job_skipped", job_id=job_id, task=kind, reason=reason)
        return "skipped"

    def _write_health(self, report: PollReport) -> None:
        if self.health_path is None:
            return
        write_health(self.health_path, {"ts": time.time(), "cursor": report.cursor,
                                        "address": self.actor.address,
                                        "pending": len(self.journal.pending())})

    def _margin(self) -> int:
        return final_margin(self.config.final_margin_s, self._windows["audit_window_s"])


def check_health(path: Path, *, max_age_s: float) -> tuple[bool, str]:
    """(ok, message): whether the verifier at ``path`` finished a poll in the last
    ``max_age_s`` seconds."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
        age = time.time() - float(body["ts"])
    except FileNotFoundError:
        return False, f"no verifier heartbeat at {path} yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"verifier heartbeat {path} unreadable: {exc}"
    if age > max_age_s:
        return False, f"verifier last polled {age:.0f} s ago (limit {max_age_s:.0f} s)"
    return True, f"verifier healthy: polled {age:.1f} s ago at block {body.get('cursor')}"


def _event(level: int, name: str, **fields: Any) -> None:
    """One log line per event; the JSON formatter prints ``fields`` as they are."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "%s %s", name, text, extra={"event": name, "fields": fields})
