"""The provider's worker node: lease jobs from the market, run them, commit results on chain.

    node = WorkerNode(config, account, market, actor)
    node.run(stop_event)          # until stop_event is set (the CLI sets it on SIGTERM)

One main loop asks the market for work while slots are free, renews leases before they
expire, watches the node's committed jobs for failed audits (and appeals once, unless its
:class:`~meshcompute.worker.policy.OutputPolicy` says not to) and reads its earnings from the
chain. A heartbeat thread keeps the registration alive and re-registers when the market has
forgotten the worker. Each leased job runs on its own thread:

    leased -> downloading (sha256 checked) -> running (sandboxed run_job) -> uploading
           -> submit_result -> committing (JobMarket.assignAndCommit with the lease's ticket)

A job that cannot run ends with ``market.fail(job_id, reason)`` (the reason is shown to the
client) and the node takes the next one. With ``probe_stability`` (``--probe-stability``) a
job's output is checked before upload as an audit would check it (:mod:`meshcompute.worker.
probe`: inputs moved by one ulp, the verifiers' alternate numeric setup, once per program, input
layout and tolerance); a job unstable under its tolerance, whose audit would be void, is handed
back the same way, unpaid and without penalty (``job_handed_back``), and never committed. A
commit that reverts (ticket expired, another worker committed first, stale record) is reported
and dropped. On stop the node takes no more work,
releases leases whose jobs have not started, lets running jobs finish within ``grace_s`` and
releases the rest.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.draws import draw_seed
from meshcompute.core.availability import ACTIVE, Availability
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec
from meshcompute.core.training import (
    DEFAULT_AUDITED_SEGMENTS,
    audit_segments,
    manifest_bytes,
    parse_manifest,
    parse_steps,
    plan_sha256,
    segments,
    steps_bytes,
    validate_plan,
)
from meshcompute.errors import (
    AuthError,
    BadInput,
    ConfigError,
    ContractRevert,
    JobFailed,
    MeshError,
    NotFound,
    SandboxUnavailable,
    ServiceUnavailable,
)
from meshcompute.execution.train_runner import run_training_job
from meshcompute.health import write_health
from meshcompute.wire.market_client import Hardware, Lease, MarketClient, PartialWork
from meshcompute.worker.config import WorkerConfig, parse_price
from meshcompute.worker.owner import Freezer, OwnerWatch, descendants, run_state, send_signal
from meshcompute.worker.policy import HONEST, OutputPolicy
from meshcompute.worker.probe import (
    EXTRA_RUNS,
    ProbeCache,
    ProbeFailed,
    ProbeKey,
    ProbeVerdict,
    judge_output,
    probe_key,
    run_alternate_setup,
)
from meshcompute.worker.runners import RunnerPool
from meshcompute.worker.status import Event, EventSink
from meshcompute.worker.watch import CommitWatch

__all__ = ["WorkerConfig", "WorkerNode", "parse_price"]

#: Outputs of one batch uploaded (and their results submitted) at the same time.
UPLOAD_THREADS = 8
#: Programs kept in memory between batches (the most recent ones), each at most this big.
_PROGRAM_CACHE = 4
_PROGRAM_CACHE_MAX_BYTES = 32 * 1024 * 1024
#: A failure reason the market takes is at most 2000 characters.
_MAX_REASON = 1900


class JobOutcomeLike(Protocol):
    ok: bool
    output: bytes | None
    output_sha256: str | None
    reason: str | None
    wall_s: float
    compute_s: float


Runner = Callable[..., JobOutcomeLike]


@dataclass(frozen=True)
class _Partial:
    """Training work this worker handed back, held for the job that pays for it: the
    manifest (uploaded, with what it names but the states), its sha256, the states (withheld
    until that job is committed), the client of the job handed back and the least reward a
    job paying for it must offer (that job's reward, pro rata to the steps)."""

    manifest: bytes
    sha256: str
    states: list[bytes]
    client: str
    min_reward: int


@dataclass(frozen=True)
class _Withheld:
    """The outcome of a job paying for handed-back work: its checkpoints, uploaded once the
    job is committed."""

    checkpoints: list[bytes]


#: Tries to upload withheld checkpoints after their job's commit.
_UPLOAD_TRIES = 5
#: How long a training job handed back gets to finish its step and save its state.
_STOP_WAIT_S = 10.0


def _partial_key(spec: JobSpec, plan: Any = None) -> tuple[str, ...]:
    """What identifies a training job's work: its program, data, initial state and plan
    (``plan``, else the spec's own)."""
    plan = validate_plan(spec.training) if plan is None else plan
    return (spec.program, spec.inputs, spec.state or "", plan_sha256(plan))


@dataclass(eq=False)
class _ActiveJob:
    lease: Lease
    received: float
    renew_at: float
    batch: _Batch | None = None
    phase: str = "leased"
    running: bool = False
    abandoned: bool = False
    frozen: bool = False
    """Its processes were stopped for the machine's owner at some time."""
    committed: bool = False
    """Its result was committed on chain by this node."""
    claimed: _Partial | None = None
    """The handed-back work this (reserved) job pays for, taken from the node's store; put
    back if the job is not committed."""
    process_group: int | None = None
    """A running training job's process group (its sandbox and job process)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop a running training job after its current step (a hand-back)."""
    handing_back: bool = False
    """A training job killed while frozen, its lease running out: its thread hands it back
    with the finished checkpoints (:meth:`WorkerNode._hand_back_partial`)."""
    done: bool = False
    """Finished here (failed, committed, reverted or released): nothing more to do."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    @property
    def job_id(self) -> int:
        return self.lease.job_id


@dataclass(eq=False)
class _Batch:
    """The jobs of one lease (one ticket; a single job is a batch of one), run by one thread
    and committed in one transaction."""

    jobs: list[_ActiveJob] = field(default_factory=list)
    thread: threading.Thread | None = None

    def pending(self) -> list[_ActiveJob]:
        return [job for job in self.jobs if not job.done and not job.abandoned]


_RECOMMIT_TRIES = 5


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
        policy: OutputPolicy = HONEST,
        runner: Runner | None = None,
        alternate_runner: Runner | None = None,
        owner: Any | None = None,
    ) -> None:
        if actor.address != account.address:
            raise ConfigError("the chain actor and the worker account differ")
        self.config = config
        self.account = account
        self.market = market
        self.actor = actor
        self.policy = policy
        self._hardware = hardware
        self._pool = RunnerPool() if runner is None else None
        self._runner: Runner = runner or self._pool  # type: ignore[assignment]
        self._sink = on_event or (lambda event: None)
        self._active: dict[int, _ActiveJob] = {}
        # yielding to the machine's owner (--when idle, --hours): ``owner.availability()``
        # decides; the freezer stops and resumes the jobs' processes
        if owner is None and (config.when_idle or config.hours is not None
                              or config.pause_file is not None):
            owner = OwnerWatch(config.when_idle, config.hours, pause_file=config.pause_file,
                               other_load_cpus=config.idle_load_cpus)
        self.owner = owner
        self.freezer = Freezer()
        self.availability = Availability(ACTIVE, "working")
        self.active_s = self.paused_s = 0.0
        self._availability_at = time.monotonic()
        self.watch = CommitWatch(actor, appeal=policy.appeals, emit=self._emit,
                                 before_appeal=self._prepare_appeal)
        self._lock = threading.RLock()
        self._uploads = ThreadPoolExecutor(max_workers=UPLOAD_THREADS,
                                           thread_name_prefix="mesh-upload")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_event: threading.Event | None = None
        self._hb_stop = threading.Event()
        self._lease_s = 60.0
        self.counts = {"done": 0, "failed": 0, "lost": 0, "released": 0, "handed_back": 0}
        self._partials: dict[tuple[str, ...], _Partial] = {}
        """Finished training work handed back, by :func:`_partial_key` of the job that pays
        for it: its manifest, the manifest's sha256 (uploaded with what it names but the
        checkpoints) and the checkpoints, withheld until that job is committed."""
        self._programs: dict[str, bytes] = {}
        self.probes: ProbeCache | None = ProbeCache() if config.probe_stability else None
        """Stability verdicts by program, input layout and tolerance (``probe_stability``)."""
        self._alternate: Runner = alternate_runner or run_alternate_setup
        """Runs a job under the verifiers' alternate numeric setup (for the probe)."""

    # ------------------------------------------------------------------ public
    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def hardware(self) -> Hardware:
        if self._hardware is None:
            from meshcompute.worker.hardware import detect_hardware

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
                   device=self.hardware.device, policy=self.policy.name)
        self._announce_probing()
        self._announce_limits()
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
                paused = self._yield_to_owner()
                if not self.freezer.active:
                    self._renew_due_leases(now)
                free = self.config.slots - self._busy_slots()
                # paused for the owner: only jobs paying for work already done (no compute)
                may_ask = free > 0 and (not paused or bool(self._partials))
                if may_ask and now >= next_ask:
                    got = self._ask_for_work(free, reserved_only=paused)
                    more = got and self._busy_slots() < self.config.slots
                    next_ask = now if more else now + self.config.poll_interval_s
                if now >= next_audit:
                    self.watch.check()
                    next_audit = now + self.config.audit_poll_s
                if now >= next_earnings:
                    self.watch.refresh_earnings()
                    next_earnings = now + self.config.earnings_poll_s
                # nothing to ask for (every slot busy, or paused): wait for a wake-up or the
                # next look at the owner, never spin (a lapsed next_ask would be 0 s)
                timeout = min(0.25, max(0.0, next_ask - time.monotonic())) if may_ask else 0.25
                if self._wake.wait(timeout):
                    self._wake.clear()
                    next_ask = min(next_ask, time.monotonic())
        finally:
            self._shut_down()
            if self._pool is not None:
                self._pool.close()
            self._hb_stop.set()
            heartbeat.join(timeout=5)
            self._uploads.shutdown(wait=False)
            self._write_health(state="stopped")
            self._emit("stopped", appealed=self.watch.appealed, **self.counts)

    # ------------------------------------------------------------------ the owner
    def _yield_to_owner(self) -> bool:
        """True while this worker must not work (the owner is using the machine, or it is
        outside its hours): no new lease, and the running jobs' processes frozen (stopped,
        not killed) until it may work again. A frozen job whose lease would run out is
        handed back first, so the market offers it to someone else at no penalty."""
        if self.owner is None:
            return False
        answer = self.owner.availability()
        now = time.monotonic()
        spent = now - self._availability_at
        self._availability_at = now
        if self.availability.active:
            self.active_s += spent
        else:
            self.paused_s += spent
        if answer.state != self.availability.state:
            self.availability = answer
            self._emit("availability", state=answer.state, reason=answer.reason)
        if answer.active:
            if self.freezer.active:
                self._emit("resumed", processes=self.freezer.thaw())
            return False
        with self._lock:
            running = any(not j.done and not j.abandoned for j in self._active.values())
        if running or self.freezer.active:
            with self._lock:
                for job in self._active.values():
                    job.frozen = True
            first = not self.freezer.active
            count = self.freezer.freeze()  # again each time: a process started meanwhile too
            if first and count:
                self._emit("paused", processes=count, reason=answer.reason)
            self._hand_back_expiring()
        return True

    def _hand_back_expiring(self) -> None:
        """While frozen: when any held lease has under ``hand_back_margin_s`` left, give every
        held job back (its processes are killed) rather than let the lease lapse, which the
        market counts against us. An inference job is done again elsewhere; a training job
        is handed back with the checkpoints it finished, which its client pays this worker
        for (a job reserved for it) while another worker continues from the last one."""
        with self._lock:
            held = [j for j in self._active.values() if not j.done and not j.abandoned]
        soon = time.time() + self.config.hand_back_margin_s
        if not any(float(j.lease.lease_expiry) <= soon for j in held):
            return
        for job in held:
            if job.phase == "committing":
                continue
            with job.lock:
                job.abandoned = True
                # a training run: its thread hands it back once killed, with what it finished
                job.handing_back = job.running and job.lease.spec.is_training
            if not job.handing_back:
                self._release(job.job_id, "the owner is using the machine and the lease "
                                          "would run out while the job is frozen")
        stopping = {job.process_group for job in held
                    if job.handing_back and job.process_group is not None}
        for job in held:
            if job.handing_back:
                job.stop.set()
        if stopping:
            self._let_stop(stopping)
        for pid, born in list(self.freezer.frozen.items()):
            send_signal(pid, born, signal.SIGKILL)  # delivered to a stopped process too
        self.freezer.frozen.clear()

    def _let_stop(self, groups: set[int]) -> None:
        """Thaw the frozen processes of these training jobs, asked to stop after their
        current step, keeping every step done (each named by its sandbox's pid: the job
        process below it has a session of its own), and wait, at most :data:`_STOP_WAIT_S`,
        until they have ended; the caller kills what is left."""
        members = set(groups)  # each group's leader (the sandbox) and everything below it
        for leader in groups:
            members |= set(descendants(leader))
        woken = {}
        for pid, born in self.freezer.frozen.items():
            if pid in members and send_signal(pid, born, signal.SIGCONT):
                woken[pid] = born
        give_up = time.monotonic() + min(_STOP_WAIT_S, self.config.hand_back_margin_s / 2)
        while woken and time.monotonic() < give_up:
            woken = {pid: born for pid, born in woken.items()
                     if run_state(pid) not in (None, "Z", "X")}
            time.sleep(0.02)
        for pid in list(self.freezer.frozen):
            if pid not in woken and run_state(pid) in (None, "Z", "X"):
                del self.freezer.frozen[pid]

    def _announce_limits(self) -> None:
        """One line at start: what of this machine the worker may use, and when."""
        hardware = self.hardware
        gpus = hardware.gpus
        when = []
        if self.config.when_idle:
            when.append("only while the owner is away (--when idle)")
        if self.config.hours is not None:
            when.append(f"only within {self.config.hours} (--hours)")
        message = (f"uses at most {self.config.slots} job(s) at a time of {self.config.threads} "
                   f"CPU thread(s) each ({self.config.slots * self.config.threads} threads), each "
                   f"job under its own memory limit (the market offers none over this machine's "
                   f"{hardware.memory_mb} MB){', and its share of the GPU' if gpus else ''}; "
                   + (", ".join(when) if when else "whenever it is running"))
        self._emit("limits", slots=self.config.slots, threads=self.config.threads,
                   memory_mb=hardware.memory_mb, when_idle=self.config.when_idle,
                   hours=str(self.config.hours) if self.config.hours else None,
                   message=message)

    def _announce_probing(self) -> None:
        """One line at start: whether jobs are probed for stability, and what it costs."""
        if self.probes is not None:
            message = (f"stability probe on: each new program (per input layout and tolerance) "
                       f"costs about {EXTRA_RUNS} extra runs before its first commit (inputs "
                       "moved by one ulp, the verifiers' alternate numeric setup); a job "
                       "unstable under its tolerance is handed back unpaid, no penalty")
        else:
            message = ("stability probe off: jobs are committed without it "
                       "(--probe-stability hands back jobs whose audits would be void)")
        self._emit("stability_probe_config", enabled=self.probes is not None,
                   extra_runs_per_program=EXTRA_RUNS if self.probes is not None else 0,
                   message=message)

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
                "availability": {"state": self.availability.state,
                                 "reason": self.availability.reason,
                                 "frozen_processes": len(self.freezer.frozen),
                                 "active_s": round(self.active_s, 1),
                                 "paused_s": round(self.paused_s, 1),
                                 "earned_since_start_wei": str(
                                     (self.watch.earned or 0)
                                     - (self.watch.earned_at_start or 0))},
                **self.counts,
            })
        except OSError as exc:
            self._emit("warning", message=f"cannot write health record: {exc}")

    # ------------------------------------------------------------------ leasing
    def _ask_for_work(self, free: int, *, reserved_only: bool = False) -> bool:
        if self._stopping.is_set():
            return False
        try:
            leases = self.market.lease(free, reserved_only=True) if reserved_only \
                else self.market.lease(free)
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
        units: dict[tuple[tuple[int, ...], bytes] | int, list[Lease]] = {}
        for lease in leases:
            if self._stop_event is not None and self._stop_event.is_set():
                # stopped while asking (SIGTERM): hand the job straight back, unstarted
                self._release(lease.job_id, "worker stopping")
                continue
            key = ((lease.ticket.job_ids, lease.signature) if len(lease.ticket.job_ids) > 1
                   else lease.job_id)
            units.setdefault(key, []).append(lease)
        for unit in units.values():
            self._start(unit)
        return bool(leases)

    def _busy_slots(self) -> int:
        """Slots in use: a lease batch (one ticket) occupies one slot."""
        with self._lock:
            return len({id(job.batch) for job in self._active.values()})

    def _start(self, leases: list[Lease]) -> None:
        now = time.monotonic()
        batch = _Batch()
        with self._lock:
            for lease in leases:
                if lease.job_id in self._active:
                    continue  # the market offered a job we already hold
                job = _ActiveJob(lease=lease, received=now,
                                 renew_at=now + self._renew_after(lease), batch=batch)
                self._active[lease.job_id] = job
                batch.jobs.append(job)
        if not batch.jobs:
            return
        for job in batch.jobs:
            self._emit("phase", job_id=job.job_id, phase="leased",
                       device=job.lease.spec.device, lease_expiry=job.lease.lease_expiry)
        first = batch.jobs[0].job_id
        batch.thread = threading.Thread(target=self._run_batch, args=(batch,), daemon=True,
                                        name=f"mesh-batch-{first}")
        for job in batch.jobs:
            job.thread = batch.thread
        batch.thread.start()

    def _renew_after(self, lease: Lease) -> float:
        """Seconds after receipt at which to renew: half of what is left of the lease."""
        left = min(float(lease.lease_expiry) - time.time(), self._lease_s)
        return max(1.0, left / 2)

    def _renew_due_leases(self, now: float) -> None:
        """Renew leases due for it; one renewal per batch (the market re-signs the ticket over
        every job of the batch this node still holds)."""
        with self._lock:
            due: dict[int, _ActiveJob] = {}
            for job in self._active.values():
                if job.renew_at <= now and not job.abandoned and job.phase != "committing" \
                        and not job.done:
                    due.setdefault(id(job.batch), job)
        for job in due.values():
            try:
                lease = self.market.renew(job.job_id)
            except MeshError as exc:
                self._emit("warning", job_id=job.job_id, message=f"lease renewal failed: {exc}")
                job.renew_at = now + 2.0
                continue
            self._apply_renewal(job, lease)

    def _apply_renewal(self, job: _ActiveJob, lease: Lease) -> None:
        """Give ``lease``'s ticket to every job of ``job``'s batch that it covers."""
        with self._lock:
            renew_at = time.monotonic() + self._renew_after(lease)
            for member in job.batch.jobs if job.batch is not None else [job]:
                if member.job_id == lease.job_id:
                    member.lease = lease
                elif member.job_id in lease.ticket.job_ids:
                    member.lease = replace(member.lease, ticket=lease.ticket,
                                           signature=lease.signature,
                                           lease_expiry=lease.lease_expiry)
                else:
                    continue
                member.renew_at = renew_at
        self._emit("lease_renewed", job_id=job.job_id, lease_expiry=lease.lease_expiry,
                   batch=list(lease.ticket.job_ids))

    # ------------------------------------------------------------------ one batch
    def _phase(self, job: _ActiveJob, phase: str) -> None:
        if job.abandoned:
            raise _Abandoned
        job.phase = phase
        self._emit("phase", job_id=job.job_id, phase=phase, device=job.lease.spec.device)

    def _run_batch(self, batch: _Batch) -> None:
        """Run the jobs of one lease batch: download, run (one sandbox process per client and
        program), upload each output, submit each result, commit them in one transaction.

        A job that fails is reported failed to the market; the others still commit, with a
        ticket the market re-signs over the jobs still held (``renew``)."""
        started = time.monotonic()
        try:
            done = self._compute_batch(batch)
            self._upload_all(done)
            if done:
                self._commit(batch, {job: sha for job, (_, sha, _) in done.items()})
                for job, (_, _, outcome) in done.items():
                    if isinstance(outcome, _Withheld) and job.committed:
                        self._upload_withheld(job, outcome)
                for job, (_, sha, outcome) in done.items():
                    self._emit("job_done", job_id=job.job_id, output_sha256=sha,
                               wall_s=round(time.monotonic() - started, 3),
                               compute_s=round(getattr(outcome, "compute_s", 0.0) or 0.0, 3))
                    with self._lock:
                        self.counts["done"] += 1
        except _Abandoned:
            for job in batch.jobs:
                if not job.done:
                    self._emit("job_abandoned", job_id=job.job_id)
        except _Released as exc:
            for job in batch.pending():
                self._release(job.job_id, str(exc))
        except ContractRevert as exc:
            for job in batch.pending():
                self._commit_reverted(job, exc)
        except MeshError as exc:
            # The market or the chain could not be reached; the leases will lapse and the
            # market hands the jobs to someone else.
            for job in batch.pending():
                self._emit("error", job_id=job.job_id,
                           message=f"job {job.job_id} interrupted: {exc}")
                with self._lock:
                    self.counts["failed"] += 1
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the node down
            for job in batch.pending():
                self._emit("error", job_id=job.job_id, message=f"job {job.job_id}: internal "
                           f"error {type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                self._fail(job, f"worker internal error ({type(exc).__name__})")
        finally:
            with self._lock:
                for job in batch.jobs:
                    self._active.pop(job.job_id, None)
                    if job.claimed is not None and not job.committed:
                        # not committed (cancelled, reverted, unreachable chain): the work
                        # waits for another job paying for it
                        self._partials.setdefault(_partial_key(job.lease.spec), job.claimed)
            self._wake.set()

    def _upload_all(self, done: dict[_ActiveJob, tuple[bytes, str, Any]]) -> None:
        """Upload every output and submit every result: for several jobs one bundle and one
        results request (:meth:`_upload_bundle`); when the market refuses those, or for one
        job, each job on its own, several at a time, so that a job whose upload fails is
        reported failed and dropped from ``done``. Any other error is raised once every
        upload has ended."""
        if len(done) > 1 and self._upload_bundle(done):
            return

        def upload(job: _ActiveJob, output: bytes, sha: str) -> None:
            self._phase(job, "uploading")
            uploaded = self.market.put_blob(output)
            if uploaded != sha:
                raise JobFailed(f"uploaded output hashes to {uploaded}, expected {sha}")
            self.market.submit_result(job.job_id, sha)

        if len(done) == 1:
            ((job, (output, sha, _)),) = done.items()
            try:
                upload(job, output, sha)
            except JobFailed as exc:
                self._fail(job, str(exc))
                del done[job]
            return
        futures = {job: self._uploads.submit(upload, job, output, sha)
                   for job, (output, sha, _) in done.items()}
        error: BaseException | None = None
        for job, future in futures.items():
            try:
                future.result()
            except JobFailed as exc:
                self._fail(job, str(exc))
                del done[job]
            except AuthError as exc:
                if job.job_id in self._taken_away([job.job_id]):
                    # its client cancelled it (or it moved on): only this job is lost
                    self._commit_reverted(job, ContractRevert(
                        "JobClosed", {"jobId": job.job_id}, detail=f"no longer posted: {exc}"))
                    del done[job]
                else:
                    error = error or exc
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the rest
                error = error or exc
        if error is not None:
            raise error

    def _upload_bundle(self, done: dict[_ActiveJob, tuple[bytes, str, Any]]) -> bool:
        """All outputs in bundles, then all results in one all-or-none request. False when
        the market refused either (nothing is lost: blobs are content-addressed and no
        result was saved), so the caller goes job by job and the refusal names its job."""
        jobs = list(done)
        for job in jobs:
            self._phase(job, "uploading")
        try:
            uploaded = self.market.put_blobs([done[job][0] for job in jobs])
            if uploaded != [done[job][1] for job in jobs]:
                return False
            self.market.submit_results([(job.job_id, done[job][1]) for job in jobs])
        except ServiceUnavailable:
            raise
        except MeshError as exc:
            self._emit("warning", message=f"bundled upload refused ({exc}); uploading job "
                       "by job")
            return False
        return True

    def _compute_batch(self, batch: _Batch) -> dict[_ActiveJob, tuple[bytes, str, Any]]:
        """Check, download and run every job of the batch; failed jobs are reported and left
        out. Returns each good job's (output, sha256, outcome)."""
        ready: list[tuple[_ActiveJob, bytes, bytes]] = []
        checked: list[_ActiveJob] = []
        for job in batch.jobs:
            try:
                lease = job.lease
                self._check_lease(lease)
                self._check_reserved(job)
                if lease.spec.device == "cuda" and not self.hardware.gpus:
                    raise JobFailed("the job asks for device 'cuda' but this worker has no "
                                    "CUDA GPU")
                self._phase(job, "downloading")
            except JobFailed as exc:
                self._fail(job, str(exc))
                continue
            checked.append(job)
        fetched = self._prefetch(checked)
        for job in checked:
            spec = job.lease.spec
            try:
                program = self._program(spec.program, fetched)
                inputs = fetched.get(spec.inputs)
                if inputs is None:
                    inputs = self._download(spec.inputs, "inputs")
            except JobFailed as exc:
                self._fail(job, str(exc))
                continue
            except SandboxUnavailable as exc:
                self._fail(job, f"this worker cannot isolate the job: {exc}")
                continue
            ready.append((job, program, inputs))
        done: dict[_ActiveJob, tuple[bytes, str, Any]] = {}
        to_run: list[tuple[_ActiveJob, bytes, bytes]] = []
        keys: dict[_ActiveJob, ProbeKey] = {}
        for job, program, inputs in [r for r in ready if r[0].lease.spec.is_training]:
            trained = self._train(job, program, inputs)
            if trained is not None:
                done[job] = trained
        ready = [r for r in ready if not r[0].lease.spec.is_training]
        for job, program, inputs in ready:
            if self.probes is not None:
                keys[job] = probe_key(job.lease.spec, inputs)
                cached = self.probes.get(keys[job])
                if cached is not None and cached.hand_back:
                    self._hand_back(job, cached, cached=True)  # not computed at all
                    continue
            given = self.policy.before_run(job.job_id, job.lease.spec.program, inputs,
                                           self._emit)
            if given is not None:
                self._phase(job, "running")
                done[job] = (given, hashlib.sha256(given).hexdigest(), None)
                continue
            to_run.append((job, program, inputs))
        for job, *_ in to_run:
            with job.lock:
                if job.abandoned:
                    raise _Abandoned
                job.running = True
        # One sandbox process per (client, program, limits): never mix clients or programs.
        groups: dict[tuple[Any, ...], list[tuple[_ActiveJob, bytes, bytes]]] = {}
        for item in to_run:
            spec = item[0].lease.spec
            key = (item[0].lease.record.client.lower(), spec.program, spec.device,
                   spec.memory_limit_mb, spec.max_output_bytes)
            groups.setdefault(key, []).append(item)
        for (client, _, device, memory_mb, max_output), items in groups.items():
            for job, *_ in items:
                self._phase_unchecked(job, "running")
            outcomes = self._run_group(client, device, memory_mb, max_output, items)
            computed: list[tuple[_ActiveJob, bytes, bytes, Any]] = []
            for (job, program, inputs), outcome in zip(items, outcomes, strict=True):
                if not outcome.ok or outcome.output is None:
                    self._fail(job, outcome.reason or "the job failed without a reason")
                    continue
                computed.append((job, program, inputs, outcome))
            if self.probes is not None and computed:
                computed = self._probe_group(client, device, memory_mb, max_output, computed,
                                             keys)
            for job, _program, inputs, outcome in computed:
                output = self.policy.after_run(job.job_id, job.lease.spec.program, inputs,
                                               bytes(outcome.output), self._emit)
                done[job] = (output, hashlib.sha256(output).hexdigest(), outcome)
        return done

    def _check_reserved(self, job: _ActiveJob) -> None:
        """A job reserved for this worker (``postJobsFor``) claims the finished work it pays
        for (``job.claimed``, taken at once so no other job can claim it too), or is refused
        (JobFailed): it must be posted by the client of the job handed back and pay at least
        that job's reward pro rata to the steps. Such a job is only ever committed from that
        work, never computed: a reserved job is offered to its worker whatever it pays, so
        anyone could otherwise have this worker train for them at any price, or buy its
        withheld states for a wei."""
        record = job.lease.record
        if record.state != JobState.POSTED or record.worker.lower() != self.address.lower():
            return
        if job.lease.spec.training is not None:
            with self._lock:
                key = _partial_key(job.lease.spec)
                held = self._partials.get(key)
                if held is not None and held.client.lower() == record.client.lower() \
                        and record.reward >= held.min_reward:
                    job.claimed = self._partials.pop(key)
                    return
        raise JobFailed("this job is reserved for this worker but pays for no work it handed "
                        "back (or not its client, or under its share of the reward): a "
                        "reserved job is committed from finished work, never computed")

    def _train(self, job: _ActiveJob, program: bytes,
               data: bytes) -> tuple[bytes, str, Any] | None:
        """Run a training job in the sandbox and upload its checkpoints and loss curve; the
        result to commit is the manifest naming them (None, and the job reported failed, when
        the run did not finish: refused, over a limit, or its loss stopped being finite)."""
        spec = job.lease.spec
        assert spec.training is not None
        if job.claimed is not None:  # a job paying for work this worker handed back
            self._emit("partial_claimed", job_id=job.job_id, manifest=job.claimed.sha256)
            return job.claimed.manifest, job.claimed.sha256, _Withheld(job.claimed.states)
        try:
            state = self._download(spec.state, "training state") if spec.state else None
            with job.lock:
                if job.abandoned:
                    raise _Abandoned
                job.running = True
            self._phase(job, "running")
            outcome = run_training_job(
                program, data, spec.training, state, threads=self.config.threads,
                time_limit_s=spec.time_limit_s, memory_limit_mb=spec.memory_limit_mb,
                max_output_bytes=spec.max_output_bytes, scratch_root=self.config.scratch_dir,
                allow_unsandboxed=self.config.allow_unsandboxed, record="hashes",
                stop=job.stop, on_start=lambda pid: setattr(job, "process_group", pid))
        except (JobFailed, BadInput) as exc:
            self._fail(job, str(exc))
            return None
        except SandboxUnavailable as exc:
            self._fail(job, f"this worker cannot isolate the job: {exc}")
            return None
        if job.handing_back:
            self._hand_back_partial(job, outcome)
            return None
        if not outcome.ok:
            self._fail(job, outcome.reason or "the training failed without a reason")
            return None
        if outcome.diverged_at is not None:
            self._fail(job, f"training diverged: the loss was not finite at step "
                       f"{outcome.diverged_at} (the job's outcome, not this worker's fault)")
            return None
        checkpoints = self.policy.after_training(job.job_id, list(outcome.checkpoints),
                                                 self._emit)
        self._phase(job, "uploading")
        try:
            manifest = self._upload_training(validate_plan(spec.training), checkpoints,
                                             outcome.losses, outcome.step_hashes)
        except ServiceUnavailable:
            raise
        except MeshError as exc:  # refused (over a quota or a limit): only this job is lost
            self._fail(job, f"the market refused the training's checkpoints: {exc}")
            return None
        return manifest, hashlib.sha256(manifest).hexdigest(), outcome

    def _upload_training(self, plan: Any, checkpoints: list[bytes], losses: list[float],
                         step_hashes: list[str], *, withhold: bool = False) -> bytes:
        """Upload the checkpoints, loss curve and step records of ``plan``'s steps; the
        manifest naming them (the result to commit). ``withhold``: all but the checkpoints
        (work handed back: its states are uploaded once a job paying for it is committed,
        so nobody can take them unpaid). MeshError when the market refuses."""
        ends = [hashlib.sha256(c).hexdigest() for c in checkpoints]
        base = plan.start_step  # step_hashes[0]: the state after the job's first step
        records = [steps_bytes(segment=i, first_step=start, states=[
            *step_hashes[start - base:end - 1 - base], ends[i]])
            for i, (start, end) in enumerate(segments(plan))]
        blobs = [json.dumps(losses).encode(), *records]
        if not withhold:
            blobs = [*checkpoints, *blobs]
        uploaded = self.market.put_blobs(blobs)
        if uploaded != [hashlib.sha256(b).hexdigest() for b in blobs]:
            raise JobFailed("the market stored the training's checkpoints under other hashes")
        losses_sha, records_sha = uploaded[-len(records) - 1], uploaded[-len(records):]
        return manifest_bytes(plan_sha256=plan_sha256(plan), checkpoints=ends,
                              losses=losses_sha, final_state=ends[-1], steps=records_sha)

    def _upload_withheld(self, job: _ActiveJob, withheld: _Withheld) -> None:
        """After committing a job that pays for work this worker handed back: upload the
        checkpoints it withheld till then (the audit and the client need them)."""
        for attempt in range(_UPLOAD_TRIES):
            try:
                self.market.put_blobs(withheld.checkpoints)
            except MeshError as exc:
                if attempt + 1 == _UPLOAD_TRIES:
                    self._emit("error", job_id=job.job_id,
                               message=f"could not upload the checkpoints of job {job.job_id} "
                                       f"({exc}): an audit would find them missing")
                    return
                time.sleep(1.0 + attempt)
                continue
            self._emit("partial_states_uploaded", job_id=job.job_id,
                       checkpoints=len(withheld.checkpoints))
            return

    def _hand_back_partial(self, job: _ActiveJob, outcome: Any) -> None:
        """Hand back a training job killed while frozen for the owner (its lease running out)
        with the checkpoints it finished: their steps, as a job of their own would give them,
        are uploaded with their manifest and named to the market (``PartialWork``), so the
        client can pay this worker for them (a job reserved for it, which this worker then
        commits without computing) and have another worker continue from the last one. With
        no finished checkpoint, it is simply given back."""
        job.done = True
        spec = job.lease.spec
        reason = ("the owner is using the machine and the lease would run out while the job "
                  "is frozen")
        plan = validate_plan(spec.training)
        bounds = segments(plan)
        states = list(outcome.checkpoints[:len(bounds) - 1])
        end = bounds[len(states) - 1][1] if states else plan.start_step
        if outcome.stopped_at is not None and end < outcome.stopped_at < plan.last:
            end = outcome.stopped_at  # stopped after this step: every step done is kept
            states.append(outcome.last_state)
        if end == plan.start_step or len(outcome.losses) < end - plan.start_step:
            self._release(job.job_id, reason)
            return
        part = plan.part(plan.start_step, end)
        steps = end - plan.start_step
        try:
            manifest = self._upload_training(part, states, outcome.losses[:steps],
                                             outcome.step_hashes[:steps], withhold=True)
            sha = self.market.put_blob(manifest)
            if sha != hashlib.sha256(manifest).hexdigest():
                raise JobFailed("the market stored the manifest under another hash")
            partial = PartialWork(worker=self.address, end_step=end, manifest_sha256=sha,
                                  state_sha256=hashlib.sha256(states[-1]).hexdigest())
            self.market.fail(job.job_id, f"{reason}; steps {plan.start_step} to {end} are done "
                             "and uploaded, to be paid for", partial=partial)
        except MeshError as exc:
            self._emit("warning", job_id=job.job_id,
                       message=f"could not hand back job {job.job_id} with its finished "
                               f"checkpoints ({exc}); giving it back without them")
            self._release(job.job_id, reason)
            return
        with self._lock:
            key = _partial_key(spec, part)
            share = max(1, job.lease.record.reward * steps // (plan.last - plan.start_step))
            self._partials[key] = _Partial(manifest, sha, states, job.lease.record.client,
                                           share)
            self.counts["handed_back"] += 1
        self._emit("job_handed_back", job_id=job.job_id, program=spec.program,
                   verdict="owner", cached=False, reason=reason, partial_end_step=end,
                   steps_run=len(outcome.losses), manifest=sha)

    def _probe_group(self, client: str, device: str, memory_mb: int, max_output: int,
                     computed: list[tuple[_ActiveJob, bytes, bytes, Any]],
                     keys: dict[_ActiveJob, ProbeKey]) -> list[tuple[_ActiveJob, bytes, bytes,
                                                                      Any]]:
        """The stability verdict of each (program, input layout, tolerance) among ``computed``
        (cached, or probed once on its first job's computed output); the jobs of an unstable
        one are handed back. Returns the jobs to upload and commit."""
        assert self.probes is not None
        by_key: dict[ProbeKey, list[tuple[_ActiveJob, bytes, bytes, Any]]] = {}
        for item in computed:
            by_key.setdefault(keys[item[0]], []).append(item)
        handed: set[_ActiveJob] = set()
        for key, members in by_key.items():
            verdict, fresh = self.probes.verdict(
                key, partial(self._probe, client, device, memory_mb, max_output, members))
            if verdict.hand_back:
                for member, *_ in members:
                    self._hand_back(member, verdict, cached=member is not members[0][0]
                                    or not fresh)
                    handed.add(member)
        return [item for item in computed if item[0] not in handed]

    def _probe(self, client: str, device: str, memory_mb: int, max_output: int,
               members: list[tuple[_ActiveJob, bytes, bytes, Any]]) -> ProbeVerdict:
        """Probe the program of ``members`` (jobs of one probe key) on the first one's computed
        output: its inputs moved by one ulp run in this worker's own setup (the runner the job
        ran in), the verifiers' alternate setup in a fresh process. A probe that cannot run is
        ``inconclusive`` (the jobs are committed as usual)."""
        job, program, inputs, outcome = members[0]
        spec = job.lease.spec
        for member, *_ in members:
            self._phase_unchecked(member, "probing")
        started = time.monotonic()

        def ours(moved: bytes) -> Any:
            return self._run_group(client, device, memory_mb, max_output,
                                   [(job, program, moved)])[0]

        def alternate() -> Any:
            return self._alternate(program, inputs, device=device,
                                   time_limit_s=spec.time_limit_s, memory_limit_mb=memory_mb,
                                   max_output_bytes=max_output, threads=self.config.threads,
                                   scratch_root=self.config.scratch_dir,
                                   allow_unsandboxed=self.config.allow_unsandboxed)

        try:
            verdict = judge_output(bytes(outcome.output), inputs, dict(spec.tolerance),
                                   run_ours=ours, run_alternate=alternate)
        except ProbeFailed as exc:
            verdict = ProbeVerdict("inconclusive", str(exc),
                                   probe_s=time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - a probe problem must not cost the job
            verdict = ProbeVerdict("inconclusive",
                                   f"internal error {type(exc).__name__}: {exc}",
                                   probe_s=time.monotonic() - started)
        self._emit("stability_probe", job_id=job.job_id, program=spec.program,
                   tolerance=dict(spec.tolerance), shards=len(members), **verdict.fields())
        if verdict.verdict == "inconclusive":
            self._emit("warning", job_id=job.job_id, message="stability probe inconclusive, "
                       f"committing as usual: {verdict.reason}")
        return verdict

    def _run_group(self, client: str, device: str, memory_mb: int, max_output: int,
                   items: list[tuple[_ActiveJob, bytes, bytes]]) -> list[Any]:
        """Run jobs of one client and one program: one ``run_batch`` call when the runner has
        it, else one call per job."""
        program = items[0][1]
        common = {"device": device, "memory_limit_mb": memory_mb,
                  "max_output_bytes": max_output, "threads": self.config.threads,
                  "scratch_root": self.config.scratch_dir,
                  "allow_unsandboxed": self.config.allow_unsandboxed}
        run_batch = getattr(self._runner, "run_batch", None)
        if run_batch is not None:
            return list(run_batch(program, [inputs for _, _, inputs in items],
                                  time_limit_s=[job.lease.spec.time_limit_s
                                                for job, *_ in items],
                                  client=client, **common))
        return [self._runner(program, inputs, time_limit_s=job.lease.spec.time_limit_s,
                             **common)
                for job, _, inputs in items]

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

    def _prefetch(self, jobs: list[_ActiveJob]) -> dict[str, bytes]:
        """The programs (not cached yet) and inputs of ``jobs`` in one bundle request, each
        checked against its sha256 by the client. Empty when that fails: the jobs then fetch
        one blob at a time, so a missing or corrupt blob fails only its own job."""
        wanted = sorted({job.lease.spec.inputs for job in jobs}
                        | {job.lease.spec.program for job in jobs
                           if job.lease.spec.program not in self._programs})
        if not wanted:
            return {}
        try:
            return self.market.get_blobs(wanted)
        except MeshError as exc:
            self._emit("warning", message=f"bundle download failed ({exc}); fetching blobs "
                       "one by one")
            return {}

    def _program(self, sha256: str, fetched: dict[str, bytes]) -> bytes:
        """A program's bytes from the node's small cache, the prefetched bundle, or the
        market (hash-checked either way)."""
        with self._lock:
            program = self._programs.get(sha256)
        if program is None:
            program = fetched.get(sha256)
            if program is None:
                program = self._download(sha256, "program")
            if len(program) <= _PROGRAM_CACHE_MAX_BYTES:
                with self._lock:
                    self._programs[sha256] = program
                    while len(self._programs) > _PROGRAM_CACHE:
                        self._programs.pop(next(iter(self._programs)))
        return program

    def _prepare_appeal(self, job_id: int, record: JobRecord) -> None:
        """Before appealing a failed training audit: run again, from our own checkpoints, each
        segment the audit recomputed, keeping the state after every step; upload the states
        whose hashes match the step record our manifest committed, so the appeal judges the
        segment one step at a time (:meth:`meshcompute.verifier.training_audit.TrainingJudge.
        _narrow`). Nothing to do for an inference job."""
        spec = JobSpec.from_bytes(self._download(bytes(record.spec_hash).hex(), "spec"))
        if spec.training is None:
            return
        plan = validate_plan(spec.training)
        doc = parse_manifest(self._download(bytes(record.result_hash).hex(), "manifest"), plan)
        if not doc.get("steps"):
            return  # committed without step records: nothing to judge step by step
        program = self._download(spec.program, "program")
        data = self._download(spec.inputs, "data")
        bounds = segments(plan)
        seed = draw_seed(self.actor.w3, record)
        for index in audit_segments(plan, seed, DEFAULT_AUDITED_SEGMENTS):
            start, end = bounds[index]
            wanted = parse_steps(self._download(doc["steps"][index], "step record"), plan, index,
                                 doc["checkpoints"][index])
            if index > 0:
                before: bytes | None = self._download(doc["checkpoints"][index - 1],
                                                      "checkpoint")
            else:
                before = self._download(spec.state, "training state") if spec.state else None
            outcome = run_training_job(
                program, data, spec.training, before, start=start, end=end, record="states",
                threads=self.config.threads, time_limit_s=spec.time_limit_s,
                memory_limit_mb=spec.memory_limit_mb,
                max_output_bytes=spec.max_output_bytes * (end - start),
                scratch_root=self.config.scratch_dir,
                allow_unsandboxed=self.config.allow_unsandboxed)
            if not outcome.ok or outcome.step_hashes != wanted:
                self._emit("warning", job_id=job_id, message=(
                    f"job {job_id}: segment {index} run again does not give the states our "
                    f"step record names ({outcome.reason or 'other states'}); its appeal "
                    "rests on the segment alone"))
                continue
            self.market.put_blobs(outcome.step_states)
            self._emit("appeal_states", job_id=job_id, segment=index, steps=end - start)

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
        job.done = True
        if job.abandoned:  # already released at shutdown: the market no longer expects us
            self._emit("job_abandoned", job_id=job.job_id, reason=reason)
            return
        if job.frozen and "time limit" in reason:
            # its wall-clock limit ran while it was stopped for the owner: not the job's fault
            # nor the client's; it goes back to the market for someone else
            self._release(job.job_id, f"{reason}, having been frozen while the owner used "
                                      "the machine")
            return
        with self._lock:
            self.counts["failed"] += 1
        self._emit("job_failed", job_id=job.job_id, reason=reason)
        try:
            self.market.fail(job.job_id, reason)
        except MeshError as exc:
            self._emit("warning", job_id=job.job_id,
                       message=f"could not report failure of job {job.job_id}: {exc}")

    def _hand_back(self, job: _ActiveJob, verdict: ProbeVerdict, *, cached: bool) -> None:
        """Give ``job`` back to the market without committing it: the refusal path of
        :meth:`_fail` (``market.fail``: the market records the reason for the client and offers
        the job to other workers, never again to this one). Nothing happened on chain (the
        ticket was never used), so nobody pays and nobody is penalised."""
        job.done = True
        reason = verdict.hand_back_reason()
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON - 1] + "…"
        if job.abandoned:  # already released at shutdown
            self._emit("job_abandoned", job_id=job.job_id, reason=reason)
            return
        with self._lock:
            self.counts["handed_back"] += 1
        self._emit("job_handed_back", job_id=job.job_id, program=job.lease.spec.program,
                   verdict=verdict.verdict, cached=cached, reason=reason)
        try:
            self.market.fail(job.job_id, reason)
        except MeshError as exc:
            self._emit("warning", job_id=job.job_id,
                       message=f"could not hand back job {job.job_id}: {exc}")

    # ------------------------------------------------------------------ commit
    def _commit(self, batch: _Batch, results: dict[_ActiveJob, str]) -> None:
        """Commit the output hashes on chain in one transaction with the batch's (latest)
        ticket. When some jobs of a multi-job ticket failed, the ticket no longer matches the
        jobs to commit (the contract takes a ticket's jobs all at once), so the node asks the
        market for a ticket over the jobs it still holds (``renew``) and commits with that.

        When the commit reverts because the client cancelled some jobs of the batch meanwhile
        (their on-chain job is no longer posted), those are dropped and the rest is committed
        once more with a ticket over them: one client's cancel costs this node the cancelled
        jobs' work only, never the whole batch's."""
        remaining = dict(results)
        cancelled = False
        for attempt in range(_RECOMMIT_TRIES):
            try:
                self._commit_once(batch, remaining)
                return
            except ContractRevert:
                if len(results) == 1:
                    raise
                gone = self._taken_away([job.job_id for job in remaining])
                if not gone:
                    raise
                for job in list(remaining):
                    if job.job_id in gone:
                        del remaining[job]
                        self._commit_reverted(job, ContractRevert(
                            "JobClosed", {"jobId": job.job_id}, detail="cancelled by its "
                            "client or taken by another worker before this node's commit"))
                if not remaining:
                    return
                cancelled = True
                self._emit("warning", message=f"jobs {sorted(gone)} of the batch were "
                           f"cancelled before the commit; committing the other "
                           f"{len(remaining)} again")
            except _Released:
                # after a cancel, the market's renewed ticket still names the cancelled job
                # until it has indexed the cancel: ask again shortly
                if not cancelled or attempt == _RECOMMIT_TRIES - 1:
                    raise
                time.sleep(1.0)
        raise _Released("the batch could not be committed after its jobs were cancelled")

    def _taken_away(self, job_ids: list[int]) -> set[int]:
        """Those of ``job_ids`` whose on-chain job is no longer posted (cancelled, or taken)."""
        gone = set()
        for job_id in job_ids:
            try:
                if self.actor.job(job_id).state is not JobState.POSTED:
                    gone.add(job_id)
            except MeshError:
                continue
        return gone

    def _commit_once(self, batch: _Batch, results: dict[_ActiveJob, str]) -> None:
        jobs = list(results)
        for job in jobs:
            self._phase(job, "committing")
        ticket = jobs[0].lease.ticket
        signature = jobs[0].lease.signature
        wanted = {job.job_id for job in jobs}
        if set(ticket.job_ids) != wanted:
            try:
                lease = self.market.renew(jobs[0].job_id)
            except MeshError as exc:
                raise _Released(f"no ticket for the batch's remaining jobs ({exc})") from exc
            self._apply_renewal(jobs[0], lease)
            ticket, signature = lease.ticket, lease.signature
            if not set(ticket.job_ids) <= wanted:
                raise _Released("the renewed ticket covers jobs this node has no result for")
        by_id = {job.job_id: job for job in jobs}
        ids = list(ticket.job_ids)
        receipt = self.actor.assign_and_commit(
            ticket, signature, [bytes.fromhex(results[by_id[i]]) for i in ids],
            [by_id[i].lease.record for i in ids])
        for i in ids:
            by_id[i].done = by_id[i].committed = True
        for job in jobs:
            if job.job_id not in ticket.job_ids:
                self._release(job.job_id, "left out of the renewed ticket")
                job.done = True
        self._committed(ids, receipt)

    def _committed(self, job_ids: list[int], receipt: Any) -> None:
        tx = HexBytes(receipt["transactionHash"]).to_0x_hex()
        self.watch.watch(job_ids)
        self._emit("committed", job_ids=job_ids, tx=tx, gas_used=int(receipt["gasUsed"]))

    def _commit_reverted(self, job: _ActiveJob, exc: ContractRevert) -> None:
        job.done = True
        with self._lock:
            self.counts["lost"] += 1
        self._emit("commit_reverted", job_id=job.job_id, error=exc.error_name, message=str(exc))

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

