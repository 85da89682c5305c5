"""The provider's worker node: lease jobs from the market, run them, commit results on chain.

    node = WorkerNode(config, account, market, actor)
    node.run(stop_event)          # until stop_event is set (the CLI sets it on SIGTERM)

One main loop asks the market for work while slots are free, renews leases before they
expire, watches the node's committed jobs for failed audits (and appeals once, if honest) and
reads its earnings from the chain. A heartbeat thread keeps the registration alive and
re-registers when the market has forgotten the worker. Each leased job runs on its own thread:

    leased -> downloading (sha256 checked) -> running (sandboxed run_job) -> uploading
           -> submit_result -> committing (JobMarket.assignAndCommit with the lease's ticket)

A job that cannot run ends with ``market.fail(job_id, reason)`` (the reason is shown to the
client) and the node takes the next one. A commit that reverts (ticket expired, another worker
committed first, stale record) is reported and dropped. On stop the node takes no more work,
releases leases whose jobs have not started, lets running jobs finish within ``grace_s`` and
releases the rest.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.tickets import AssignTicket
from meshcompute.core.job import JobRecord
from meshcompute.errors import (
    AuthError,
    ConfigError,
    ContractRevert,
    JobFailed,
    MeshError,
    NotFound,
    SandboxUnavailable,
    ServiceUnavailable,
)
from meshcompute.market_client import Hardware, Lease, MarketClient
from worker.adversary import Adversary
from worker.config import WorkerConfig, parse_price
from worker.runners import RunnerPool
from worker.status import Event, EventSink, write_health
from worker.watch import CommitWatch

__all__ = ["WorkerConfig", "WorkerNode", "parse_price"]

class JobOutcomeLike(Protocol):
    ok: bool
    output: bytes | None
    output_sha256: str | None
    reason: str | None
    wall_s: float
    compute_s: float


Runner = Callable[..., JobOutcomeLike]


@dataclass
class _ActiveJob:
    lease: Lease
    received: float
    renew_at: float
    phase: str = "leased"
    running: bool = False
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    @property
    def job_id(self) -> int:
        return self.lease.job_id


@dataclass
class _TicketBatch:
    """Results of the jobs of one multi-job ticket, committed together in one transaction."""

    ticket: AssignTicket
    signature: bytes
    results: dict[int, tuple[bytes, JobRecord]] = field(default_factory=dict)
    broken: bool = False
    error: MeshError | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class _Abandoned(Exception):
    """The job was given up (stop after the grace period); drop it silently."""


class _Released(Exception):
    """The job must go back to the market (its multi-job ticket cannot be committed)."""


class WorkerNode:
    """One provider's worker: see the module docstring."""

    def __init__(
        self,
        config: WorkerConfig,
        account: LocalAccount,
        market: MarketClient,
        actor: MeshActor,
        *,
        hardware: Hardware | None = None,
        on_event: EventSink | None = None,
        adversary: Adversary | None = None,
        runner: Runner | None = None,
    ) -> None:
        if actor.address != account.address:
            raise ConfigError("the chain actor and the worker account differ")
        self.config = config
        self.account = account
        self.market = market
        self.actor = actor
        self.adversary = adversary
        self._hardware = hardware
        self._pool = RunnerPool() if runner is None else None
        self._runner: Runner = runner or self._pool  # type: ignore[assignment]
        self._sink = on_event or (lambda event: None)
        self._active: dict[int, _ActiveJob] = {}
        self.watch = CommitWatch(actor, appeal=adversary is None, emit=self._emit)
        self._batches: dict[tuple[tuple[int, ...], bytes], _TicketBatch] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_event: threading.Event | None = None
        self._hb_stop = threading.Event()
        self._lease_s = 60.0
        self.counts = {"done": 0, "failed": 0, "lost": 0, "released": 0}

    # ------------------------------------------------------------------ public
    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def hardware(self) -> Hardware:
        if self._hardware is None:
            from worker.hardware import detect_hardware

            self._hardware = detect_hardware()
        return self._hardware

    def set_event_sink(self, sink: EventSink) -> None:
        """Where events go (the live status table or JSON logs)."""
        self._sink = sink

    def running_job_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._active)

    def run(self, stop_event: threading.Event) -> None:
        """Work until ``stop_event`` is set, then wind down (see :meth:`_shut_down`)."""
        self._stop_event = stop_event
        self._emit("started", address=self.address, market=self.market.base_url,
                   slots=self.config.slots, threads=self.config.threads,
                   device=self.hardware.device, adversary=self.adversary is not None)
        while True:
            try:
                self.register()
                break
            except ServiceUnavailable as exc:
                self._emit("warning", message=f"registration failed, retrying: {exc}")
                if stop_event.wait(self.config.poll_interval_s):
                    self._emit("stopped", appealed=self.watch.appealed, **self.counts)
                    return
        if self._pool is not None:
            self._pool.prepare(device="cpu", threads=self.config.threads,
                               scratch_root=self.config.scratch_dir,
                               allow_unsandboxed=self.config.allow_unsandboxed,
                               count=self.config.slots)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="mesh-heartbeat",
                                     daemon=True)
        heartbeat.start()
        next_ask = 0.0
        next_audit = time.monotonic() + self.config.audit_poll_s
        next_earnings = 0.0
        try:
            while not stop_event.is_set():
                now = time.monotonic()
                self._renew_due_leases(now)
                free = self.config.slots - len(self._active)
                if free > 0 and now >= next_ask:
                    got = self._ask_for_work(free)
                    more = got and len(self._active) < self.config.slots
                    next_ask = now if more else now + self.config.poll_interval_s
                if now >= next_audit:
                    self.watch.check()
                    next_audit = now + self.config.audit_poll_s
                if now >= next_earnings:
                    self.watch.refresh_earnings()
                    next_earnings = now + self.config.earnings_poll_s
                timeout = min(0.25, max(0.0, next_ask - time.monotonic()))
                if self._wake.wait(timeout):
                    self._wake.clear()
                    next_ask = min(next_ask, time.monotonic())
        finally:
            self._shut_down()
            if self._pool is not None:
                self._pool.close()
            self._hb_stop.set()
            heartbeat.join(timeout=5)
            self._write_health(state="stopped")
            self._emit("stopped", appealed=self.watch.appealed, **self.counts)

    # ------------------------------------------------------------------ registration
    def register(self) -> None:
        """Register (or re-register) with the market; AuthError means no stake on chain."""
        answer = self.market.register(
            self.hardware,
            price_wei=self.config.price_wei,
            slots=self.config.slots,
            operator=self.config.operator,
        )
        lease_s = answer.get("lease_s") if isinstance(answer, dict) else None
        if lease_s:
            self._lease_s = float(lease_s)
        self._emit("registered", hardware=self.hardware.to_json(),
                   price_wei=str(self.config.price_wei), slots=self.config.slots)

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.is_set():
            try:
                self._lease_s = float(self.market.heartbeat(self.running_job_ids()))
                self._write_health(state="stopping" if self._stopping.is_set() else "running")
            except (NotFound, AuthError) as exc:
                self._emit("warning", message=f"market does not know this worker ({exc}); "
                                              "registering again")
                try:
                    self.register()
                except MeshError as again:
                    self._emit("error", message=f"re-registration failed: {again}")
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any hiccup
                self._emit("warning", message=f"heartbeat failed: {exc}")
            self._hb_stop.wait(max(0.5, min(self._lease_s / 3, 20.0)))

    def _write_health(self, *, state: str) -> None:
        if self.config.health_path is None:
            return
        try:
            write_health(self.config.health_path, {
                "address": self.address,
                "state": state,
                "last_heartbeat": time.time(),
                "lease_s": self._lease_s,
                "running": len(self._active),
                **self.counts,
            })
        except OSError as exc:
            self._emit("warning", message=f"cannot write health record: {exc}")

    # ------------------------------------------------------------------ leasing
    def _ask_for_work(self, free: int) -> bool:
        if self._stopping.is_set():
            return False
        try:
            leases = self.market.lease(free)
        except (NotFound, AuthError) as exc:
            self._emit("warning", message=f"lease refused ({exc}); registering again")
            try:
                self.register()
            except MeshError as again:
                self._emit("error", message=f"re-registration failed: {again}")
            return False
        except MeshError as exc:
            self._emit("warning", message=f"asking for work failed: {exc}")
            return False
        for lease in leases:
            if self._stop_event is not None and self._stop_event.is_set():
                # stopped while asking (SIGTERM): hand the job straight back, unstarted
                self._release(lease.job_id, "worker stopping")
            else:
                self._start(lease)
        return bool(leases)

    def _start(self, lease: Lease) -> None:
        now = time.monotonic()
        job = _ActiveJob(lease=lease, received=now, renew_at=now + self._renew_after(lease))
        with self._lock:
            if lease.job_id in self._active:
                return  # the market offered a job we already hold
            self._active[lease.job_id] = job
            if len(lease.ticket.job_ids) > 1:
                key = (lease.ticket.job_ids, lease.signature)
                self._batches.setdefault(key, _TicketBatch(lease.ticket, lease.signature))
        self._emit("phase", job_id=lease.job_id, phase="leased", device=lease.spec.device,
                   lease_expiry=lease.lease_expiry)
        job.thread = threading.Thread(target=self._run_job, args=(job,), daemon=True,
                                      name=f"mesh-job-{lease.job_id}")
        job.thread.start()

    def _renew_after(self, lease: Lease) -> float:
        """Seconds after receipt at which to renew: half of what is left of the lease."""
        left = min(float(lease.lease_expiry) - time.time(), self._lease_s)
        return max(1.0, left / 2)

    def _renew_due_leases(self, now: float) -> None:
        with self._lock:
            due = [job for job in self._active.values()
                   if job.renew_at <= now and not job.abandoned and job.phase != "committing"]
        for job in due:
            try:
                lease = self.market.renew(job.job_id)
            except MeshError as exc:
                self._emit("warning", job_id=job.job_id, message=f"lease renewal failed: {exc}")
                job.renew_at = now + 2.0
                continue
            with self._lock:
                job.lease = lease
                job.renew_at = time.monotonic() + self._renew_after(lease)
            self._emit("lease_renewed", job_id=job.job_id, lease_expiry=lease.lease_expiry)

    # ------------------------------------------------------------------ one job
    def _phase(self, job: _ActiveJob, phase: str) -> None:
        if job.abandoned:
            raise _Abandoned
        job.phase = phase
        self._emit("phase", job_id=job.job_id, phase=phase, device=job.lease.spec.device)

    def _run_job(self, job: _ActiveJob) -> None:
        job_id = job.job_id
        started = time.monotonic()
        try:
            output, sha, outcome = self._compute(job)
            self._phase(job, "uploading")
            uploaded = self.market.put_blob(output)
            if uploaded != sha:
                raise JobFailed(f"uploaded output hashes to {uploaded}, expected {sha}")
            self.market.submit_result(job_id, sha)
            self._phase(job, "committing")
            self._commit(job, sha)
            self._emit("job_done", job_id=job_id, output_sha256=sha,
                       wall_s=round(time.monotonic() - started, 3),
                       compute_s=round(getattr(outcome, "compute_s", 0.0) or 0.0, 3))
            with self._lock:
                self.counts["done"] += 1
        except _Abandoned:
            self._emit("job_abandoned", job_id=job_id)
        except _Released as exc:
            self._release(job_id, str(exc))
        except JobFailed as exc:
            self._fail(job, str(exc))
        except SandboxUnavailable as exc:
            self._fail(job, f"this worker cannot isolate the job: {exc}")
        except ContractRevert as exc:
            self._commit_reverted(job, exc)
        except MeshError as exc:
            # The market or the chain could not be reached; the lease will lapse and the
            # market hands the job to someone else.
            self._emit("error", job_id=job_id, message=f"job {job_id} interrupted: {exc}")
            self._break_batch(job)
            with self._lock:
                self.counts["failed"] += 1
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the node down
            self._emit("error", job_id=job_id, message=f"job {job_id}: internal error "
                       f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            self._fail(job, f"worker internal error ({type(exc).__name__})")
        finally:
            with self._lock:
                self._active.pop(job_id, None)
            self._wake.set()

    def _compute(self, job: _ActiveJob) -> tuple[bytes, str, Any]:
        """Download, check and run the job; returns (output, its sha256, the outcome)."""
        lease = job.lease
        spec = lease.spec
        self._check_lease(lease)
        if spec.device == "cuda" and not self.hardware.gpus:
            raise JobFailed("the job asks for device 'cuda' but this worker has no CUDA GPU")
        self._phase(job, "downloading")
        program = self._download(spec.program, "program")
        inputs = self._download(spec.inputs, "inputs")
        cheating = self.adversary is not None and self.adversary.should_cheat(job.job_id)
        if cheating and self.adversary is not None:
            fake = self.adversary.cheap_output(spec.program, inputs)
            if fake is not None:
                self._phase(job, "running")
                self._emit("cheated", job_id=job.job_id, how="zeros without computing")
                return fake, hashlib.sha256(fake).hexdigest(), None
        with job.lock:
            if job.abandoned:
                raise _Abandoned
            job.running = True
        self._phase_unchecked(job, "running")
        outcome = self._runner(
            program,
            inputs,
            device=spec.device,
            time_limit_s=spec.time_limit_s,
            memory_limit_mb=spec.memory_limit_mb,
            max_output_bytes=spec.max_output_bytes,
            threads=self.config.threads,
            scratch_root=self.config.scratch_dir,
            allow_unsandboxed=self.config.allow_unsandboxed,
        )
        if not outcome.ok or outcome.output is None:
            raise JobFailed(outcome.reason or "the job failed without a reason")
        output = bytes(outcome.output)
        sha = hashlib.sha256(output).hexdigest()
        if self.adversary is not None:
            self.adversary.remember(spec.program, inputs, output)
            if cheating:
                output = self.adversary.corrupt(output)
                sha = hashlib.sha256(output).hexdigest()
                self._emit("cheated", job_id=job.job_id, how=f"{self.adversary.mode} of output")
        return output, sha, outcome

    def _phase_unchecked(self, job: _ActiveJob, phase: str) -> None:
        job.phase = phase
        self._emit("phase", job_id=job.job_id, phase=phase, device=job.lease.spec.device)

    def _check_lease(self, lease: Lease) -> None:
        """The lease must describe one job consistently and name this worker."""
        if lease.spec.sha256 != lease.spec_sha256:
            raise JobFailed(f"lease spec hashes to {lease.spec.sha256}, "
                            f"not the announced {lease.spec_sha256}")
        if lease.record.spec_hash != bytes.fromhex(lease.spec_sha256):
            raise JobFailed("lease spec is not the one escrowed on chain (specHash differs)")
        if lease.ticket.worker.lower() != self.address.lower():
            raise JobFailed(f"lease ticket names worker {lease.ticket.worker}, not this worker")
        if lease.job_id not in lease.ticket.job_ids:
            raise JobFailed(f"lease ticket does not cover job {lease.job_id}")

    def _download(self, sha256: str, what: str) -> bytes:
        try:
            data = self.market.get_blob(sha256, verify=False)
        except NotFound as exc:
            raise JobFailed(f"{what} blob {sha256} is not in the market's store") from exc
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise JobFailed(f"{what} blob {sha256} failed its hash check on download "
                            f"(the bytes hash to {got}); the job was not run")
        return data

    def _fail(self, job: _ActiveJob, reason: str) -> None:
        self._break_batch(job)
        if job.abandoned:  # already released at shutdown: the market no longer expects us
            self._emit("job_abandoned", job_id=job.job_id, reason=reason)
            return
        with self._lock:
            self.counts["failed"] += 1
        self._emit("job_failed", job_id=job.job_id, reason=reason)
        try:
            self.market.fail(job.job_id, reason)
        except MeshError as exc:
            self._emit("warning", job_id=job.job_id,
                       message=f"could not report failure of job {job.job_id}: {exc}")

    # ------------------------------------------------------------------ commit
    def _commit(self, job: _ActiveJob, output_sha256: str) -> None:
        """Commit the output hash on chain with the lease's (latest) ticket.

        A multi-job ticket is committed in one transaction by the last of its jobs to finish;
        the others wait for it (still holding their leases, which keep being renewed).
        """
        lease = job.lease
        result = bytes.fromhex(output_sha256)
        if len(lease.ticket.job_ids) == 1:
            receipt = self.actor.assign_and_commit(lease.ticket, lease.signature, [result],
                                                   [lease.record])
            self._committed([lease.job_id], receipt)
            return
        key = (lease.ticket.job_ids, lease.signature)
        with self._lock:
            batch = self._batches.setdefault(key, _TicketBatch(lease.ticket, lease.signature))
            if batch.broken:
                raise _Released("another job of its ticket failed")
            batch.results[lease.job_id] = (result, lease.record)
            last = len(batch.results) == len(lease.ticket.job_ids)
        if not last:
            self._emit("waiting_for_batch", job_id=lease.job_id,
                       batch=list(lease.ticket.job_ids))
            while not batch.finished.wait(0.2):
                if job.abandoned:
                    raise _Abandoned
            if batch.error is not None:
                raise batch.error
            if batch.broken:
                raise _Released("another job of its ticket failed")
            return
        ids = list(lease.ticket.job_ids)
        try:
            receipt = self.actor.assign_and_commit(
                lease.ticket, lease.signature, [batch.results[i][0] for i in ids],
                [batch.results[i][1] for i in ids],
            )
        except MeshError as exc:
            batch.error = exc
            raise
        finally:
            with self._lock:
                self._batches.pop(key, None)
            batch.finished.set()
        self._committed(ids, receipt)

    def _committed(self, job_ids: list[int], receipt: Any) -> None:
        tx = HexBytes(receipt["transactionHash"]).to_0x_hex()
        self.watch.watch(job_ids)
        self._emit("committed", job_ids=job_ids, tx=tx, gas_used=int(receipt["gasUsed"]))

    def _commit_reverted(self, job: _ActiveJob, exc: ContractRevert) -> None:
        with self._lock:
            self.counts["lost"] += 1
        self._emit("commit_reverted", job_id=job.job_id, error=exc.error_name, message=str(exc))

    def _break_batch(self, job: _ActiveJob) -> None:
        """A job of a multi-job ticket failed: its partners cannot commit with that ticket,
        so the ones waiting give their jobs back (``_Released`` in their threads)."""
        if len(job.lease.ticket.job_ids) == 1:
            return
        key = (job.lease.ticket.job_ids, job.lease.signature)
        with self._lock:
            batch = self._batches.pop(key, None)
        if batch is not None:
            batch.broken = True
            batch.finished.set()

    # ------------------------------------------------------------------ stopping
    def _shut_down(self) -> None:
        """Take no more work; release unstarted leases; give running jobs ``grace_s``."""
        self._stopping.set()
        with self._lock:
            jobs = list(self._active.values())
        self._emit("stopping", running=len(jobs), grace_s=self.config.grace_s)
        for job in jobs:
            with job.lock:
                if job.running:
                    continue
                job.abandoned = True
            self._release(job.job_id, "not started before shutdown")
        deadline = time.monotonic() + self.config.grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._active:
                    break
            self._renew_due_leases(time.monotonic())
            self._wake.wait(0.1)
            self._wake.clear()
        with self._lock:
            left = [job for job in self._active.values() if not job.abandoned]
        for job in left:
            if job.phase == "committing":
                continue  # the transaction is on its way; releasing now would only confuse
            with job.lock:
                job.abandoned = True
            self._release(job.job_id, f"still {job.phase} after the {self.config.grace_s:g} s "
                                      "grace period")
        for job in left:
            if job.phase == "committing" and job.thread is not None:
                job.thread.join(timeout=60)

    def _release(self, job_id: int, why: str) -> None:
        try:
            self.market.release(job_id)
        except MeshError as exc:
            self._emit("warning", job_id=job_id, message=f"release of job {job_id} failed: {exc}")
            return
        with self._lock:
            self.counts["released"] += 1
            self._active.pop(job_id, None)
        self._emit("job_released", job_id=job_id, reason=why)

    # ------------------------------------------------------------------ events
    def _emit(self, name: str, **fields: Any) -> None:
        event: Event = {"ts": round(time.time(), 3), "event": name, **fields}
        try:
            self._sink(event)
        except Exception:  # noqa: BLE001, S110 - a broken display must not stop the work
            pass

