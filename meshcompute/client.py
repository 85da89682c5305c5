"""The Python SDK for clients: export a model, submit it with a payment, get the output back.

    from meshcompute import Client

    client = Client.from_wallet()                      # keystore at ~/.mesh/wallet.json
    job = client.submit(model, (x,), shards=4, pay="40", tolerance="allclose")
    outputs = client.wait(job, progress=print)         # list of tensors, assembled in order

What the client trusts: nothing but the chain. Payment is escrowed from the client's own wallet
with one permit transaction; each shard's output is fetched by the result hash its worker
committed on chain and checked against it; a shard whose worker was caught cheating is refunded
(and compensated) on chain and, by default, posted again so the assembled output is complete.
The market only stores blobs and hands out work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshcompute.core.job import JobState
from meshcompute.core.spec import DEFAULT_TOLERANCE, JobSpec, client_group, sha256_hex
from meshcompute.errors import BadInput, JobFailed, MeshError
from meshcompute.units import TOKEN, parse_mesh

if TYPE_CHECKING:
    import torch
    from eth_account.signers.local import LocalAccount

    from meshcompute.chain.connect import ChainConnection
    from meshcompute.execution.stability import StabilityReport
    from meshcompute.settings import Settings
    from meshcompute.wire.market_client import MarketClient, WorkerCapacity

log = logging.getLogger("meshcompute.client")

#: :meth:`Client.wait` reads the market's live workers at most this often (seconds).
CAPACITY_POLL_S = 10.0
#: Shards serialised and uploaded per round trip (a bundle of inputs, then their specs).
_UPLOAD_STEP = 256
Progress = Callable[["SubmissionStatus"], None]


def parse_amount(value: str | int | Decimal) -> int:
    """MESH amount to wei: ``"12.5"`` -> 12.5e18; an int is taken as wei already."""
    if isinstance(value, int):
        return value
    return parse_mesh(value)


def parse_duration(text: str | float) -> int:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or seconds -> seconds."""
    if isinstance(text, int | float):
        seconds = int(text)
    else:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        raw = text.strip().lower()
        try:
            seconds = int(float(raw[:-1]) * units[raw[-1]]) if raw[-1:] in units else int(raw)
        except (ValueError, IndexError) as exc:
            raise BadInput(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h)") from exc
    if seconds <= 0:
        raise BadInput(f"duration must be positive: {text!r}")
    return seconds


@dataclass
class Shard:
    index: int
    spec: JobSpec
    job_id: int
    attempts: list[int] = field(default_factory=list)
    """Every on-chain job id posted for this shard, oldest first (reposts after a slash)."""


@dataclass(frozen=True)
class TrainingResult:
    """A finished training job: the trained parameters (by the program's parameter names),
    the loss of every step, the final state's bytes (parameters and optimizer slots: the
    initial state of a next job) and the manifest's sha256 (the result hash on chain)."""

    parameters: dict[str, Any]
    losses: list[float]
    state: bytes
    manifest_sha256: str
    """The last job's, for a training in parts."""
    job_ids: list[int] = field(default_factory=list)
    """The paid job of each part (one for a single job)."""


@dataclass
class Submission:
    """What :meth:`Client.submit` posted: one on-chain job per shard."""

    group: str | None
    """The market's id of this submission's group (:func:`~meshcompute.core.spec.client_group`
    of the client and its specs' ``group``), or None for a single job."""
    program: str
    shards: list[Shard]
    reward_per_shard: int
    audit_fee_per_shard: int
    collateral_per_shard: int
    audit_bps: int
    deadline_s: int

    @property
    def job_ids(self) -> list[int]:
        return [shard.job_id for shard in self.shards]

    @property
    def name(self) -> str:
        """How the CLI refers to it: the group id, or the job id of a single job."""
        return self.group or str(self.shards[0].job_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group, "program": self.program,
            "shards": [
                {"index": s.index, "spec": s.spec.to_json(), "job_id": s.job_id,
                 "attempts": s.attempts}
                for s in self.shards
            ],
            "reward_per_shard": str(self.reward_per_shard),
            "audit_fee_per_shard": str(self.audit_fee_per_shard),
            "collateral_per_shard": str(self.collateral_per_shard),
            "audit_bps": self.audit_bps, "deadline_s": self.deadline_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Submission:
        try:
            return cls(
                group=data["group"], program=data["program"],
                shards=[
                    Shard(index=s["index"], spec=JobSpec.from_json(s["spec"]),
                          job_id=int(s["job_id"]), attempts=[int(a) for a in s["attempts"]])
                    for s in data["shards"]
                ],
                reward_per_shard=int(data["reward_per_shard"]),
                audit_fee_per_shard=int(data["audit_fee_per_shard"]),
                collateral_per_shard=int(data["collateral_per_shard"]),
                audit_bps=int(data["audit_bps"]), deadline_s=int(data["deadline_s"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"not a saved submission: {exc}") from exc


@dataclass(frozen=True)
class SubmissionStatus:
    """A snapshot for progress display. ``phase``: ``uploading``, ``posting``, ``posted``
    while :meth:`Client.submit` works, then ``running``, ``stuck`` (see ``stuck``) or
    ``done``. ``counts``: while submitting, what was uploaded or posted; after, the shards'
    current jobs by on-chain state (``posted``, ``committed``, ``finalized``, ...)."""

    phase: str
    counts: dict[str, int]
    total: int
    detail: str = ""
    phases: dict[str, int] = field(default_factory=dict)
    """After submitting: shards per phase (:data:`PHASES`, every phase present, in order)."""
    failures: tuple[FailureSummary, ...] = ()
    """Why workers could not run shards still waiting for one, deduplicated."""
    stuck: Stuck | None = None
    """Shards that will never run (:func:`diagnose_stuck`)."""
    shards: tuple[ShardProgress, ...] = ()
    """After submitting: each shard, in order."""
    deadline: int | None = None
    """The latest deadline of the shards still waiting for a worker (unix, chain time)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "total": self.total, "phases": dict(self.phases),
            "states": dict(self.counts),
            "failures": [failure.to_json() for failure in self.failures],
            "stuck": self.stuck.to_json() if self.stuck is not None else None,
            "deadline": self.deadline,
        }


class Client:
    """A client of the marketplace: one wallet, one chain, one market."""

    def __init__(
        self,
        account: LocalAccount,
        *,
        connection: ChainConnection | None = None,
        market: MarketClient | None = None,
        settings: Settings | None = None,
    ) -> None:
        from meshcompute.chain.connect import actor_for, connect
        from meshcompute.settings import get_settings
        from meshcompute.wire.market_client import MarketClient

        self.settings = settings or get_settings()
        self.connection = connection or connect(self.settings)
        self.actor = actor_for(self.connection, account)
        self.market = market or MarketClient(
            self.settings.market_url, account, self.connection.deployment.chain_id,
            contract=self.connection.deployment.address("JobMarket"),
        )
        self.account = account

    @classmethod
    def from_wallet(cls, settings: Settings | None = None, *, prompt: bool = True) -> Client:
        """A client using the keystore wallet (password from env, file or prompt)."""
        from meshcompute.wallet import unlock

        return cls(unlock(settings, prompt=prompt), settings=settings)

    # ------------------------------------------------------------------ submit
    def submit(
        self,
        program: torch.nn.Module | bytes | Path,
        inputs: Sequence[torch.Tensor] | bytes | Path,
        *,
        shards: int = 1,
        pay: str | int = "1",
        tolerance: str | dict[str, Any] | None = None,
        device: str = "cpu",
        deadline: str | int = "1h",
        collateral: str | int | None = None,
        audit_fee: str | int | None = None,
        audit_bps: int = 0,
        time_limit_s: float | None = None,
        memory_limit_mb: int | None = None,
        progress: Progress | None = None,
        check_stability: bool = False,
    ) -> Submission:
        """Upload the program and each shard's inputs, then escrow payment for every shard in
        one permit transaction. ``pay`` is the total reward (MESH, split over the shards);
        ``collateral`` per shard defaults to twice the shard's reward; ``audit_fee`` per shard
        defaults to the shard's reward (a verifier recomputes the whole shard, so it is paid
        as the worker is; the fee comes back for a shard the draw does not pick).

        ``check_stability``: before uploading or paying anything, run the program on shard 0
        as an audit would (:func:`check_stability`): a tolerance no honest worker can meet
        (``exact`` on floating outputs, or ``allclose`` wholly under the rounding floor) raises
        :class:`BadInput`; a program unstable under its tolerance (its audits would be void)
        gives an :class:`UnstableProgramWarning` with the reason.

        Always, before uploading or paying anything, the program and the shards' inputs go
        through the checks a worker runs before running a job (:func:`check_before_paying`):
        a job every worker would refuse raises :class:`BadInput` naming the problem. An
        archive written by ``torch.export.save`` with its example inputs (pickled, which
        workers refuse) is posted with that member emptied, and a line is logged."""
        from meshcompute.execution.programs import export_program, load_tensors, save_tensors

        tensors = _as_tensors(inputs, load_tensors)
        if not 1 <= shards <= max(1, len(tensors[0])):
            raise BadInput(f"shards must be between 1 and the batch size {len(tensors[0])}")
        if isinstance(program, bytes | Path):
            program_bytes = Path(program).read_bytes() if isinstance(program, Path) else program
        else:
            program_bytes = export_program(program, tuple(t[:2] for t in tensors))
        policy = _as_policy(tolerance)
        pieces = _split(tensors, shards)
        program_bytes = check_before_paying(
            program_bytes, pieces, device=device, tolerance=policy, time_limit_s=time_limit_s,
            memory_limit_mb=memory_limit_mb, name=str(program) if isinstance(program, Path)
            else None)
        if check_stability:
            check_stability_of(program_bytes, save_tensors(pieces[0], prefix="args"), policy,
                               time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb)
        total = parse_amount(pay)
        reward = total // shards
        if reward == 0:
            raise BadInput("pay is too small to split over that many shards")
        self._check_min_reward(reward)
        fee = parse_amount(audit_fee) if audit_fee is not None else reward
        stake = parse_amount(collateral) if collateral is not None else 2 * reward
        self._check_verifier_cover(reward + stake)
        deadline_s = parse_duration(deadline)
        self._check_balance(shards * (reward + fee))

        _report(progress, "uploading", {}, shards, "program")
        program_sha = self.market.put_blob(program_bytes)
        group = sha256_hex(os.urandom(32)) if shards > 1 else None
        limits = _limits(time_limit_s, memory_limit_mb)
        specs: list[JobSpec] = []
        # shards go up in bundles (a few requests for the whole submission, not two each)
        step = _UPLOAD_STEP
        for start in range(0, shards, step):
            chunk = [save_tensors(piece, prefix="args")
                     for piece in pieces[start:start + step]]
            input_shas = self.market.put_blobs(chunk)
            step_specs = [
                JobSpec(program=program_sha, inputs=inputs_sha, device=device,
                        tolerance=policy, group=group, shard=start + offset, shards=shards,
                        **limits)
                for offset, inputs_sha in enumerate(input_shas)
            ]
            self.market.put_specs(step_specs)
            specs.extend(step_specs)
            _report(progress, "uploading", {"uploaded": len(specs)}, shards,
                    f"shards {start}-{len(specs) - 1}")

        submission = Submission(
            group=client_group(self.account.address, group) if group else None,
            program=program_sha, shards=[],
            reward_per_shard=reward, audit_fee_per_shard=fee, collateral_per_shard=stake,
            audit_bps=audit_bps, deadline_s=deadline_s,
        )
        _report(progress, "posting", {}, shards, "escrow on chain")
        job_ids = self._post(submission, specs)
        submission.shards = [
            Shard(index=i, spec=spec, job_id=job_id, attempts=[job_id])
            for i, (spec, job_id) in enumerate(zip(specs, job_ids, strict=True))
        ]
        _report(progress, "posted", {"posted": shards}, shards, f"jobs {job_ids}")
        return submission

    def submit_training(
        self,
        model: torch.nn.Module | bytes | Path,
        data: Sequence[torch.Tensor] | bytes | Path,
        plan: dict[str, Any],
        *,
        state: bytes | None = None,
        pay: str | int = "1",
        deadline: str | int = "1h",
        collateral: str | int | None = None,
        audit_fee: str | int | None = None,
        audit_bps: int = 0,
        time_limit_s: float | None = None,
        memory_limit_mb: int | None = None,
        progress: Progress | None = None,
    ) -> Submission:
        """Post a training job: ``model`` is the forward pass with its loss (``forward(*batch)
        -> scalar``; a module is exported in training mode, or give a ``.pt2``), ``data`` the
        shard (tensors with one row per sample), ``plan`` the training plan
        (:func:`meshcompute.core.training.validate_plan`: optimizer, schedule, steps, batch
        size, seed, checkpoint interval), ``state`` an initial state (safetensors
        ``param.*``/``opt.*``; None: the program's own parameters). Payment works as for
        :meth:`submit`; ``audit_fee`` defaults to the reward (an audit recomputes only a few
        segments, see BENCHMARKS.md).

        Before anything is uploaded or paid, the plan is checked and the first step is run
        here on the loaded program, as a worker would run it: a plan off the allowlist, a loss
        that is not a scalar, data that does not fit the program, or a state that does not fit
        it raises :class:`BadInput` naming the problem."""
        from meshcompute.core.spec import TRAINING_SPEC_VERSION
        from meshcompute.core.training import validate_plan
        from meshcompute.execution.programs import export_program, load_tensors, save_tensors
        from meshcompute.execution.training import run_steps

        checked = validate_plan(plan)
        tensors = _as_tensors(data, load_tensors)
        if isinstance(model, bytes | Path):
            program_bytes = Path(model).read_bytes() if isinstance(model, Path) else model
        else:
            program_bytes = export_program(model.train(), tuple(t[:2] for t in tensors))
        first = checked.part(checked.start_step, checked.start_step + 1)
        trial = run_steps(program_bytes, tensors, first, state)
        if trial.diverged_at is not None:
            raise BadInput("the loss of the first step is not finite: check the data and the "
                           "initial state (nothing was uploaded or paid)")
        _check_training_fits(trial.last_state, tensors, memory_limit_mb)
        reward = parse_amount(pay)
        self._check_min_reward(reward)
        fee = parse_amount(audit_fee) if audit_fee is not None else reward
        stake = parse_amount(collateral) if collateral is not None else 2 * reward
        self._check_verifier_cover(reward + stake)
        deadline_s = parse_duration(deadline)
        self._check_balance(reward + fee)
        _report(progress, "uploading", {}, 1, "program, data and state")
        blobs = [program_bytes, save_tensors(list(tensors), prefix="args")]
        if state is not None:
            blobs.append(state)
        shas = self.market.put_blobs(blobs)
        limits = _limits(time_limit_s, memory_limit_mb)
        spec = JobSpec(program=shas[0], inputs=shas[1], training=checked.to_json(),
                       state=shas[2] if state is not None else None,
                       version=TRAINING_SPEC_VERSION, **limits)
        self.market.put_specs([spec])
        submission = Submission(group=None, program=shas[0], shards=[],
                                reward_per_shard=reward, audit_fee_per_shard=fee,
                                collateral_per_shard=stake, audit_bps=audit_bps,
                                deadline_s=deadline_s)
        _report(progress, "posting", {}, 1, "escrow on chain")
        (job_id,) = self._post(submission, [spec])
        submission.shards = [Shard(index=0, spec=spec, job_id=job_id, attempts=[job_id])]
        _report(progress, "posted", {"posted": 1}, 1, f"job {job_id}")
        return submission

    def _post(self, submission: Submission, specs: Sequence[JobSpec]) -> list[int]:
        from meshcompute.chain.contracts import JobParams

        now = int(self.connection.w3.eth.get_block("latest")["timestamp"])
        params = [
            JobParams(
                spec_hash=bytes.fromhex(spec.sha256),
                reward=submission.reward_per_shard,
                audit_fee=submission.audit_fee_per_shard,
                collateral=submission.collateral_per_shard,
                deadline=now + submission.deadline_s,
                audit_bps=submission.audit_bps,
            )
            for spec in specs
        ]
        return self.actor.post_jobs_with_permit(params)

    def _check_balance(self, needed: int) -> None:
        have = self.actor.balance_of(self.account.address)
        if have < needed:
            raise BadInput(
                f"you have {have / TOKEN:g} MESH, this job needs {needed / TOKEN:g}; "
                "get test credits with `mesh wallet faucet`"
            )

    # ------------------------------------------------------------------ follow
    def states(self, submission: Submission) -> dict[int, JobState]:
        """On-chain state of each shard's current job (rebuilt from events)."""
        records = self.connection.contracts.job_records(submission.job_ids)
        return {job_id: records[job_id].state for job_id in submission.job_ids}

    def verification(self, submission: Submission) -> dict[int, str]:
        """How each shard's current job was accepted, by shard index, read from the chain:
        ``audited`` (drawn for audit and passed, or won its appeal: a verifier recomputed
        it), ``undrawn`` (paid without an audit: the draw did not pick it; post with
        ``audit_bps=10_000`` to have every shard audited), or, while unpaid, its state."""
        states = self.states(submission)
        paid = {int(e.args["jobId"]): bool(e.args["audited"])
                for e in self.actor.job_events(submission.job_ids, names=("JobPaid",))}
        return {
            s.index: ("audited" if paid[s.job_id] else "undrawn") if s.job_id in paid
            else states[s.job_id].name.lower()
            for s in submission.shards
        }

    def status(self, submission: Submission, *, market: bool = True) -> SubmissionStatus:
        """Where the submission stands: its shards by on-chain state (``counts``) and by
        phase (``phases``, :data:`PHASES`), why workers could not run the shards still
        waiting for one (``failures``, deduplicated) and, when some shards will never run,
        what is wrong (``stuck``, :func:`diagnose_stuck`; phase ``stuck``). ``market``
        False reads the chain only: no lease or failure is known, so a leased shard counts
        as posted and only a deadline makes a shard stuck."""
        records = self.connection.contracts.job_records(submission.job_ids)
        return self._status(submission, records, market=market)

    def _status(self, submission: Submission, records: dict[int, Any], *,
                market: bool = True,
                capacity: Callable[[], WorkerCapacity | None] | None = None,
                ) -> SubmissionStatus:
        shards = self._market_failures(submission, records, ask_market=market)
        chain_now = None
        live = None
        if any(shard.phase == "posted" for shard in shards):
            chain_now = int(self.connection.w3.eth.get_block("latest")["timestamp"])
            if market and capacity is not None:
                live = capacity()
        return submission_status(
            shards, chain_now=chain_now,
            escrow_per_shard=submission.reward_per_shard + submission.audit_fee_per_shard,
            capacity=live, needs=submission_needs(submission) if live is not None else None)

    def _capacity_reader(self) -> Callable[[], WorkerCapacity | None]:
        """Reads the market's live workers (``GET /workers/capacity``) at most once per
        :data:`CAPACITY_POLL_S`; None when it cannot be read or the market has no such
        route (then no ``no_worker_fits`` diagnosis is made)."""
        last: list[Any] = [None, None]  # [monotonic time of the read, the read]

        def read() -> WorkerCapacity | None:
            now = time.monotonic()
            if last[0] is None or now - last[0] >= CAPACITY_POLL_S:
                try:
                    last[1] = self.market.worker_capacity()
                except MeshError:
                    last[1] = None
                last[0] = now
            return last[1]

        return read

    def wait(
        self,
        submission: Submission,
        *,
        timeout_s: float = 600.0,
        poll_s: float = 0.5,
        repost_slashed: bool = True,
        progress: Progress | None = None,
        stop_on_partial: bool = False,
        skip_partials: frozenset[str] = frozenset(),
    ) -> list[torch.Tensor] | TrainingResult:
        """Wait until every shard is paid, re-posting any shard whose worker was slashed or
        whose job was refunded (or void: drawn for audit, no verdict in time), then return
        the assembled outputs (a :class:`TrainingResult` for a training job). A shard a
        verifier declared void (the program is not
        reproducible within its tolerance) raises :class:`JobFailed` instead: it would only
        end void again. :meth:`verification` tells, shard by shard, whether a paid
        result was audited and passed or accepted undrawn.

        ``progress`` gets a :class:`SubmissionStatus` every poll (phases, the workers'
        failure reasons, a stuck diagnosis). Shards that will never run (the market gave up
        on every shard still posted, or their deadline is too close: :func:`diagnose_stuck`)
        raise :class:`SubmissionStuck` (a :class:`JobFailed`) once no other shard is moving,
        instead of waiting out ``timeout_s``. When no worker live at the market now can take
        any posted shard (its device, memory or price; read from ``GET /workers/capacity``),
        ``progress`` gets a ``no_worker_fits`` diagnosis, but the wait goes on: a worker may
        still come online. ``stop_on_partial``: a training job handed back with finished
        checkpoints (and still posted) raises :class:`HandedBack` instead, for the caller to pay
        for them and go on from them (:meth:`train_in_parts`)."""
        give_up = time.monotonic() + timeout_s
        capacity = self._capacity_reader()
        while True:
            records = self.connection.contracts.job_records(submission.job_ids)
            states = {job_id: records[job_id].state for job_id in submission.job_ids}
            failed = [
                s for s in submission.shards
                if states[s.job_id] in (JobState.SLASHED, JobState.REFUNDED)
            ]
            if failed:
                unstable = self._voided_as_unstable(failed)
                if unstable:
                    raise JobFailed(
                        "a verifier found the program not reproducible within its tolerance "
                        f"(shards {unstable}): its own recomputations under two numeric setups, "
                        "or under a one-ulp change of the inputs, disagree beyond it. Nobody was "
                        "paid for those shards and the reward is back in your balance (`mesh "
                        "wallet withdraw`); loosen the tolerance or make the program stable "
                        "before posting again"
                    )
                if not repost_slashed:
                    raise JobFailed(
                        f"shards {[s.index for s in failed]} were not paid "
                        f"({', '.join(states[s.job_id].name.lower() for s in failed)})"
                    )
                self._repost(submission, failed)
                continue
            status = self._status(submission, records, capacity=capacity)
            if progress is not None:
                progress(status)
            if stop_on_partial:
                for shard in status.shards:
                    claims = [p for p in shard.partials
                              if p.manifest_sha256 not in skip_partials]
                    if claims and shard.state == JobState.POSTED:
                        raise HandedBack(shard.job_id, max(claims, key=lambda p: p.end_step))
            if status.phase == "done":
                if submission.shards[0].spec.is_training:
                    return self.training_result(submission)
                return self.result(submission)
            if status.stuck is not None and status.stuck.final:
                raise SubmissionStuck(status)
            if time.monotonic() > give_up:
                where = ", ".join(f"{k} {v}" for k, v in status.phases.items() if v)
                why = f" (worker failures: {status.detail})" if status.detail else ""
                raise JobFailed(
                    f"timed out after {timeout_s:.0f}s waiting for shards: {where}{why}; "
                    "after the deadline, `mesh job reclaim` returns the escrow"
                )
            time.sleep(poll_s)

    def _voided_as_unstable(self, shards: Sequence[Shard]) -> list[int]:
        """Indexes of ``shards`` whose job a verifier declared void (``AuditVoided``): the
        program cannot be judged under its tolerance, so posting it again would end the same
        way. (A job void because no verdict came in time is re-posted.)"""
        voided = {int(e.args["jobId"])
                  for e in self.actor.job_events([s.job_id for s in shards],
                                                 names=("AuditVoided",))}
        return [s.index for s in shards if s.job_id in voided]

    def _market_failures(
        self, submission: Submission, records: dict[int, Any], *, ask_market: bool = True
    ) -> list[ShardProgress]:
        """Each shard with what the market says about its job while it waits for a worker
        (its lease, the workers that failed it and why, whether the market gave up on it);
        a market that cannot be reached says nothing. One worker's failure report is not
        final (the market offers the job to others; one malicious worker must not make the
        client give up), so it is shown; only the market giving up makes a shard stuck."""
        out = []
        for shard in submission.shards:
            record = records[shard.job_id]
            view = None
            if ask_market and record.state in _WAITING_STATES:
                try:
                    view = self.market.job(shard.job_id)
                except MeshError:
                    view = None
            out.append(shard_progress(shard.index, shard.job_id, record.state,
                                      record.deadline, view))
        return out

    def _repost(self, submission: Submission, shards: Sequence[Shard]) -> None:
        job_ids = self._post(submission, [s.spec for s in shards])
        for shard, job_id in zip(shards, job_ids, strict=True):
            shard.job_id = job_id
            shard.attempts.append(job_id)

    def result(self, submission: Submission) -> list[torch.Tensor]:
        """The assembled outputs of a finished submission, each shard checked against the
        result hash its worker committed on chain."""
        import torch

        from meshcompute.execution.programs import load_tensors

        events = self.connection.contracts.job_events(submission.job_ids)
        committed: dict[int, str] = {}
        for event in events:
            if event.name == "JobCommitted":
                committed[int(event.args["jobId"])] = bytes(event.args["resultHash"]).hex()
        pieces: list[list[torch.Tensor]] = []
        for shard in submission.shards:
            result_hash = committed.get(shard.job_id)
            if result_hash is None:
                raise JobFailed(f"shard {shard.index} (job {shard.job_id}) has no committed result")
            data = self.market.get_blob(result_hash, verify=True)
            pieces.append(load_tensors(data, prefix="out"))
        return [torch.cat(parts, dim=0) for parts in zip(*pieces, strict=True)]

    def training_result(self, submission: Submission) -> TrainingResult:
        """The result of a finished training job: its manifest (checked against the result
        hash its worker committed on chain), the final state and the loss curve it names
        (each checked against its hash)."""
        from safetensors.torch import load as load_state

        from meshcompute.core.training import parse_manifest, validate_plan

        (shard,) = submission.shards
        assert shard.spec.training is not None
        committed = [bytes(e.args["resultHash"]).hex()
                     for e in self.connection.contracts.job_events([shard.job_id])
                     if e.name == "JobCommitted"]
        if not committed:
            raise JobFailed(f"training job {shard.job_id} has no committed result")
        manifest = self.market.get_blob(committed[-1], verify=True)
        doc = parse_manifest(manifest, validate_plan(shard.spec.training))
        state = self.market.get_blob(doc["final_state"], verify=True)
        losses = [float(x) for x in json.loads(self.market.get_blob(doc["losses"], verify=True))]
        tensors = load_state(state)
        parameters = {name[len("param."):]: t for name, t in sorted(tensors.items())
                      if name.startswith("param.")}
        return TrainingResult(parameters=parameters, losses=losses, state=state,
                              manifest_sha256=committed[-1], job_ids=[shard.job_id])

    def train(
        self,
        model: torch.nn.Module | bytes,
        data: Sequence[torch.Tensor],
        *,
        optimizer: dict[str, Any],
        workers: int,
        rounds: int,
        steps_per_round: int,
        batch_size: int,
        run_dir: Path | str,
        seed: int = 0,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        pay: str = "1",
        audit_bps: int = 0,
        round_timeout_s: float = 1800.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        """Train across machines: ``rounds`` rounds of one training job per shard of ``data``
        (``workers`` shards), each ``steps_per_round`` steps of ``optimizer`` from the current
        global parameters, combined by an outer Nesterov step (DiLoCo style:
        :mod:`meshcompute.rounds`). The run lives in ``run_dir`` and resumes from it after a
        restart; it ends with ``weights.safetensors`` and ``loss.png`` there. Each job is
        paid ``pay`` once verified. Returns a :class:`meshcompute.rounds.TrainRunResult`."""
        from meshcompute.rounds import RunConfig, TrainingRun

        config = RunConfig(workers=workers, rounds=rounds, steps_per_round=steps_per_round,
                           batch_size=batch_size, optimizer=dict(optimizer), seed=seed,
                           outer_lr=outer_lr, outer_momentum=outer_momentum, pay=str(pay),
                           audit_bps=audit_bps, round_timeout_s=round_timeout_s)
        return TrainingRun(self, model, data, config, Path(run_dir), progress=progress).run()

    def funds(self) -> int:
        """This client's credits: its wallet's MESH and what the market holds for it to
        withdraw, in wei."""
        address = self.account.address
        return int(self.actor.balance_of(address)) + int(
            self.connection.contracts.account_of(address).withdrawable)

    @staticmethod
    def submission_from_json(doc: dict[str, Any]) -> Submission:
        return Submission.from_json(doc)

    def train_in_parts(
        self,
        model: torch.nn.Module | bytes | Path,
        data: Sequence[torch.Tensor] | bytes | Path,
        plan: dict[str, Any],
        *,
        parts: int,
        state: bytes | None = None,
        timeout_s: float = 3600.0,
        progress: Progress | None = None,
        **job: Any,
    ) -> TrainingResult:
        """Train ``plan`` as ``parts`` training jobs run one after another, each from the
        verified final state of the one before, so each may be taken by another worker and no
        worker holds the whole training: the parts split the plan's steps at its checkpoints
        (:meth:`~meshcompute.core.training.TrainingPlan.part`: the learning rates, batches and
        optimizer step counts are the whole run's, so the result is the one a single job of
        the plan gives). Each part is paid only once verified (:meth:`wait`, which re-posts a
        part whose worker was slashed); ``job`` takes :meth:`submit_training`'s payment and
        limits, per part. Returns the last part's state with the whole loss curve.

        A part handed back with finished checkpoints loses none of them
        (:meth:`wait_training`)."""
        from meshcompute.core.training import validate_plan
        from meshcompute.execution.programs import export_program, load_tensors

        checked = validate_plan(plan)
        tensors = _as_tensors(data, load_tensors)
        if not isinstance(model, bytes | Path):
            model = export_program(model.train(), tuple(t[:2] for t in tensors))
        every, first, last = checked.checkpoint_every, checked.start_step, checked.last
        segments_total = -(-(last - first) // every)
        if not 1 <= parts <= segments_total:
            raise BadInput(f"a training of {segments_total} checkpoint segments splits into 1 "
                           f"to {segments_total} parts, not {parts}")
        cuts = [first + every * (segments_total * i // parts) for i in range(parts)] + [last]
        give_up = time.monotonic() + timeout_s
        losses: list[float] = []
        job_ids: list[int] = []
        result: TrainingResult | None = None
        for start, end in pairwise(cuts):
            submission = self.submit_training(model, list(tensors),
                                              checked.part(start, end).to_json(),
                                              state=state, progress=progress, **job)
            done = self.wait_training(submission,
                                      timeout_s=max(1.0, give_up - time.monotonic()),
                                      progress=progress)
            result, state = done, done.state
            losses += done.losses
            job_ids += done.job_ids
        assert result is not None
        return TrainingResult(parameters=result.parameters, losses=losses, state=result.state,
                              manifest_sha256=result.manifest_sha256, job_ids=job_ids)

    def wait_training(self, submission: Submission, *, timeout_s: float = 3600.0,
                      progress: Progress | None = None) -> TrainingResult:
        """:meth:`wait` for a training job, losing no finished work: a job handed back with
        finished checkpoints (its worker's owner came back and its lease would have run out
        while it was frozen) is cancelled, the steps done are paid to that worker pro rata
        by a job reserved for it (:meth:`pay_for_partial`: it commits the result it uploaded
        without computing it; verified and audited like any job), and once they are verified
        the rest is posted from the state they end in, for any worker (again and again, if
        it is handed back again). Returns the whole result: the loss of every step, the last
        job's state, and every job paid."""
        from meshcompute.core.training import validate_plan

        give_up = time.monotonic() + timeout_s
        losses: list[float] = []
        job_ids: list[int] = []
        skipped: set[str] = set()  # claims not worth paying for (see pay_for_partial)
        while True:
            try:
                done = self.wait(submission, timeout_s=max(1.0, give_up - time.monotonic()),
                                 progress=progress, stop_on_partial=True,
                                 skip_partials=frozenset(skipped))
            except HandedBack as back:
                try:
                    paid = self.pay_for_partial(submission, back.partial)
                except BadInput as exc:  # a claim not worth paying for: keep waiting
                    logging.getLogger(__name__).warning(
                        "not paying for handed-back work: %s", exc)
                    skipped.add(back.partial.manifest_sha256)
                    continue
                if paid is None:  # taken meanwhile: follow it as it is
                    continue
                try:
                    first = self.wait(paid, timeout_s=max(1.0, give_up - time.monotonic()),
                                      progress=progress)
                except SubmissionStuck:
                    # its worker refused it (restarted, so it no longer holds that work):
                    # cancel it and post the whole job again, for anyone
                    with contextlib.suppress(MeshError):
                        self.reclaim(paid.job_ids[0])
                    submission = self._post_training_spec(
                        submission.shards[0].spec, submission,
                        reward=submission.reward_per_shard,
                        audit_fee=submission.audit_fee_per_shard,
                        collateral=submission.collateral_per_shard)
                    continue
                assert isinstance(first, TrainingResult)
                losses += first.losses
                job_ids += first.job_ids
                (shard,) = submission.shards
                plan = validate_plan(shard.spec.training)
                # from the state the paid job was verified with (its worker's, or an honest
                # recomputation's if that worker was slashed and the steps posted again)
                rest = replace(shard.spec, training=plan.part(back.partial.end_step,
                                                              plan.last).to_json(),
                               state=hashlib.sha256(first.state).hexdigest())
                submission = self._post_training_spec(
                    rest, submission,
                    reward=submission.reward_per_shard - paid.reward_per_shard,
                    audit_fee=submission.audit_fee_per_shard - paid.audit_fee_per_shard,
                    collateral=submission.collateral_per_shard - paid.collateral_per_shard)
                continue
            assert isinstance(done, TrainingResult)
            return TrainingResult(parameters=done.parameters, losses=losses + done.losses,
                                  state=done.state, manifest_sha256=done.manifest_sha256,
                                  job_ids=job_ids + done.job_ids)

    def _post_training_spec(self, spec: JobSpec, like: Submission, *, reward: int,
                            audit_fee: int, collateral: int) -> Submission:
        """Post ``spec`` (its blobs already stored) as a one-job submission with ``like``'s
        audit rate and deadline and these amounts."""
        self.market.put_specs([spec])
        submission = Submission(group=None, program=spec.program, shards=[],
                                reward_per_shard=max(1, reward), audit_fee_per_shard=audit_fee,
                                collateral_per_shard=collateral, audit_bps=like.audit_bps,
                                deadline_s=like.deadline_s)
        (job_id,) = self._post(submission, [spec])
        submission.shards = [Shard(index=0, spec=spec, job_id=job_id, attempts=[job_id])]
        return submission

    def pay_for_partial(self, submission: Submission, partial: Any) -> Submission | None:
        """Pay for the finished checkpoints a worker handed back on ``submission``'s training
        job (a :class:`~meshcompute.wire.market_client.PartialWork`): the job is cancelled
        (its escrow comes back) and its steps up to ``partial.end_step`` are posted as a job
        reserved on chain for that worker (``postJobsFor``: it alone may take it, committing
        the result it uploaded), paying the reward, fee and collateral pro rata to the steps.
        That job is an ordinary job from then on: drawn for audit, verified, its worker
        slashed and the steps posted again for anyone if its result is wrong. Returns it as a
        submission to :meth:`wait` for; None when the job was taken meanwhile (nothing is
        posted). BadInput, before anything is cancelled or paid, when the partial work is not
        steps of the job, its manifest is not that of those steps, or a part would pay under
        the market's minimum job reward."""
        from meshcompute.chain.contracts import JobParams
        from meshcompute.core.training import parse_manifest, plan_sha256, validate_plan

        (shard,) = submission.shards
        if shard.spec.training is None:
            raise BadInput(f"job {shard.job_id} is not a training job")
        plan = validate_plan(shard.spec.training)
        if not plan.start_step < partial.end_step < plan.last:
            raise BadInput(f"job {shard.job_id}: partial work up to step {partial.end_step} is "
                           f"not part of its steps [{plan.start_step}, {plan.last}) (nothing "
                           "was paid)")
        part = plan.part(plan.start_step, partial.end_step)
        manifest = self.market.get_blob(partial.manifest_sha256, verify=True)
        doc = parse_manifest(manifest, part)
        if doc.get("plan") != plan_sha256(part) or doc.get("final_state") != partial.state_sha256:
            raise BadInput(f"job {shard.job_id}: the partial work's manifest does not end in "
                           "the state it names (nothing was paid)")
        record = self.actor.job(shard.job_id)
        if record.state != JobState.POSTED:
            return None
        share = partial.end_step - plan.start_step, plan.last - plan.start_step
        floor = int(self.market.info().extra.get("min_job_reward_wei", 0) or 0)
        reward = max(1, record.reward * share[0] // share[1])
        if min(reward, record.reward - reward) < floor:
            raise BadInput(f"job {shard.job_id}: paying for {share[0]} of its {share[1]} steps "
                           f"would split its reward into a part under the market's minimum "
                           f"job reward (nothing was paid)")
        try:
            self.actor.reclaim(shard.job_id, record)
        except MeshError:
            if self.actor.job(shard.job_id).state != JobState.POSTED:
                return None  # a worker committed it meanwhile
            raise
        spec = replace(shard.spec, training=part.to_json())
        self.market.put_specs([spec])
        paid = Submission(group=None, program=submission.program, shards=[],
                          reward_per_shard=reward,
                          audit_fee_per_shard=record.audit_fee * share[0] // share[1],
                          collateral_per_shard=record.collateral * share[0] // share[1],
                          audit_bps=submission.audit_bps, deadline_s=submission.deadline_s)
        now = int(self.connection.w3.eth.get_block("latest")["timestamp"])
        (job_id,) = self.actor.post_jobs_for([JobParams(
            spec_hash=bytes.fromhex(spec.sha256), reward=paid.reward_per_shard,
            audit_fee=paid.audit_fee_per_shard, collateral=paid.collateral_per_shard,
            deadline=now + paid.deadline_s, audit_bps=paid.audit_bps)], partial.worker)
        paid.shards = [Shard(index=0, spec=spec, job_id=job_id, attempts=[job_id])]
        return paid

    def _check_min_reward(self, reward: int) -> None:
        """BadInput, before anything is uploaded or paid, when the market ignores jobs paying
        ``reward`` per shard (``min_job_reward_wei`` in its ``/info``)."""
        from meshcompute.units import format_mesh

        floor = int(self.market.info().extra.get("min_job_reward_wei", 0) or 0)
        if reward < floor:
            raise BadInput(
                f"the market offers no worker a job paying under {format_mesh(floor)} MESH per "
                f"shard, and this one pays {format_mesh(reward)}: raise --pay (nothing was "
                "uploaded or paid)")

    def _check_verifier_cover(self, cover: int) -> None:
        """BadInput, before anything is uploaded or paid, unless two verifier seats (other than
        this client's own) could judge a shard whose reward plus collateral is ``cover``: the
        registry assigns a job only to seats whose weight covers that, so a drawn shard beyond
        every seat would end void, and one judged by a lone seat could not be appealed."""
        from meshcompute.units import format_mesh

        unit, _exit = self.actor.registry_terms()
        me = self.account.address.lower()
        covers = sorted((seat.units * unit for seat in self.actor.verifier_seats()
                         if not seat.leaving and seat.verifier.lower() != me), reverse=True)
        if len(covers) < 2 or cover > covers[1]:
            best = covers[1] if len(covers) > 1 else 0
            raise BadInput(
                f"fewer than two verifier seats cover a shard of {format_mesh(cover)} MESH "
                f"(reward plus collateral; the second largest seat covers {format_mesh(best)}): "
                "a shard drawn for audit could not be judged and appealed. Split it over more "
                "shards or lower --pay or --collateral (nothing was uploaded or paid)")

    def reclaim(self, job_id: int) -> None:
        """Take back a job's escrow: at once for a job no worker holds on chain (a cancel),
        after its deadline for one a worker took without committing a result."""
        self.actor.reclaim(job_id)

    def dispute(self, job_id: int) -> bool:
        """Dispute the passed audit of one of this client's jobs, within its appeal window:
        another verifier recomputes it. The client escrows a bond of the job's audit fee: it
        comes back if the pass is overturned (then the worker is slashed and the client also
        gets the passing verifier's bond, the job's reward) and pays the appeal verifier if the
        pass is upheld. This is how a canary job catches a verifier that passes results
        without recomputing them.

        A pass upheld on dispute (PASS_UPHELD, where a third verifier exists) is escalated by
        the same call, within an appeal window after the uphold: the client escrows the reward
        and two audit fees as its bond; a third verifier confirms the pass (the bond pays it and the protocol) or
        disagrees (the job is void: the client gets its reward and both bonds back).
        Returns whether it escalated (True) or disputed a pass (False)."""
        record = self.actor.job(job_id)
        if record.client.lower() != self.actor.address.lower():
            raise BadInput(f"job {job_id} is not yours: its client is {record.client}")
        if record.state not in (JobState.AUDIT_PASSED, JobState.PASS_UPHELD):
            raise BadInput(f"job {job_id} is {record.state.name}: only a passed audit, or a pass "
                           "upheld on dispute, within its appeal window, can be disputed")
        self.actor.dispute(job_id, record)
        return record.state == JobState.PASS_UPHELD


# ---------------------------------------------------------------------- checks before paying
_NOTHING_PAID = "nothing was uploaded or paid"


def check_before_paying(
    program: bytes,
    shards: Sequence[Sequence[torch.Tensor]],
    *,
    device: str = "cpu",
    tolerance: dict[str, Any] | None = None,
    time_limit_s: float | None = None,
    memory_limit_mb: int | None = None,
    name: str | None = None,
) -> bytes:
    """The program bytes to post, after the checks every worker runs before a job
    (:func:`meshcompute.execution.precheck.check_job`) on ``program`` with the first shard's
    inputs and the limits, and the signature check on every other shard whose shapes differ.

    An archive refused only for its pickled example inputs (``torch.export.save`` writes them
    by default) comes back with that member emptied (zip surgery, nothing unpickled) and one
    logged line saying so. Anything else a worker would refuse raises :class:`BadInput` naming
    the problem (and the shard) and saying that nothing was uploaded or paid."""
    from meshcompute.execution.precheck import check_inputs, check_job, prepare_program

    what = name or "the program"
    try:
        prepared = prepare_program(program)
    except BadInput as exc:
        raise BadInput(f"{what} would be refused by every worker: {exc}; {_NOTHING_PAID}") \
            from None
    if prepared.stripped is not None:
        log.warning("%s holds pickled example inputs (%s, written by torch.export.save), which "
                    "workers refuse; posting it with that member emptied (nothing unpickled; "
                    "program sha256 %s)", what, prepared.stripped,
                    sha256_hex(prepared.program))
    try:
        checked = check_job(prepared.program, shards[0], device=device, tolerance=tolerance,
                            time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb,
                            shards=len(shards))
    except BadInput as exc:
        where = " (shard 0)" if len(shards) > 1 else ""
        raise BadInput(f"job refused before posting{where}: {exc}; {_NOTHING_PAID}") from None
    seen = {_shapes(shards[0])}
    for index, piece in enumerate(shards[1:], start=1):
        shapes = _shapes(piece)
        if shapes in seen:
            continue
        seen.add(shapes)
        try:
            check_inputs(checked.inputs, piece)
        except BadInput as exc:
            raise BadInput(f"job refused before posting (shard {index}): {exc}; "
                           f"{_NOTHING_PAID}") from None
    return prepared.program


def _shapes(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in tensors)


# ---------------------------------------------------------------------- stability
class UnstableProgramWarning(UserWarning):
    """The program cannot be judged under its tolerance: its audits would be void."""


def check_stability_of(
    program: bytes,
    inputs: bytes,
    tolerance: str | dict[str, Any] | None = None,
    *,
    time_limit_s: float | None = None,
    memory_limit_mb: int | None = None,
    threads: int = 1,
) -> StabilityReport:
    """Probe ``program`` on one shard's ``inputs`` (safetensors) as an audit would judge it
    (:func:`meshcompute.execution.stability.probe_stability`: our run, the verifiers'
    alternate numeric setup and a one-ulp change of the inputs, under the tolerance with the
    rounding floors). Raises :class:`BadInput` naming the problem when the tolerance is refused
    (no honest worker can meet it) or the program does not run; warns with
    :class:`UnstableProgramWarning` (and logs) when it is unstable; returns the report.

    The program runs on this machine, in the job sandbox when bubblewrap works here and
    without it otherwise (it is the program this client is about to post)."""
    from meshcompute.core.spec import DEFAULT_MEMORY_LIMIT_MB, DEFAULT_TIME_LIMIT_S
    from meshcompute.execution.stability import probe_stability

    report = probe_stability(
        program, inputs, _as_policy(tolerance), threads=threads,
        time_limit_s=time_limit_s or DEFAULT_TIME_LIMIT_S,
        memory_limit_mb=memory_limit_mb or DEFAULT_MEMORY_LIMIT_MB,
        allow_unsandboxed=True,
    )
    if report.refused is not None:
        raise BadInput(f"{report.refused} (tolerance refused before posting)")
    if not report.stable:
        log.warning("stability check: %s", report.reason)
        warnings.warn(report.reason, UnstableProgramWarning, stacklevel=2)
    return report


# ---------------------------------------------------------------------- helpers
def _as_tensors(
    inputs: Sequence[torch.Tensor] | bytes | Path, load_tensors: Callable[..., Any]
) -> list[torch.Tensor]:
    if isinstance(inputs, Path):
        inputs = inputs.read_bytes()
    if isinstance(inputs, bytes):
        tensors = list(load_tensors(inputs, prefix="args"))
    else:
        tensors = list(inputs)
    if not tensors:
        raise BadInput("a job needs at least one input tensor")
    batch = {len(t) if t.dim() else 0 for t in tensors}
    if len(batch) != 1 or 0 in batch:
        raise BadInput("every input needs the same, non-zero batch dimension (dim 0)")
    return tensors


def _check_training_fits(state: bytes, data: Sequence[torch.Tensor],
                         memory_limit_mb: int | None) -> None:
    """BadInput when a training job cannot fit its memory limit: the worker holds its state
    (parameters and optimizer slots), the gradients (as large as the parameters, under the
    state's size) and the data shard at least, so a state and shard over the limit would only
    fail on the worker's machine."""
    from meshcompute.core.spec import DEFAULT_MEMORY_LIMIT_MB

    limit = DEFAULT_MEMORY_LIMIT_MB if memory_limit_mb is None else memory_limit_mb
    shard = sum(t.numel() * t.element_size() for t in data)
    needed = len(state) + shard
    if needed > limit * (1 << 20):
        raise BadInput(f"the training state ({len(state) / (1 << 20):.1f} MB) and data shard "
                       f"({shard / (1 << 20):.1f} MB) do not fit the job's memory limit of "
                       f"{limit} MB: raise memory_limit_mb or train a smaller model (nothing was "
                       "uploaded or paid)")


def _limits(time_limit_s: float | None, memory_limit_mb: int | None) -> dict[str, Any]:
    """The spec limits the client set (the spec's defaults for the others)."""
    limits: dict[str, Any] = {}
    if time_limit_s is not None:
        limits["time_limit_s"] = time_limit_s
    if memory_limit_mb is not None:
        limits["memory_limit_mb"] = memory_limit_mb
    return limits


def _as_policy(tolerance: str | dict[str, Any] | None) -> dict[str, Any]:
    if tolerance is None:
        return dict(DEFAULT_TOLERANCE)
    if isinstance(tolerance, dict):
        return tolerance
    from meshcompute.core.tolerance import parse_policy

    return parse_policy(tolerance)


def _split(tensors: Sequence[torch.Tensor], shards: int) -> list[list[torch.Tensor]]:
    """Split every input along dim 0 into ``shards`` nearly equal, contiguous pieces."""
    size = len(tensors[0])
    bounds = [size * i // shards for i in range(shards + 1)]
    return [[t[bounds[i]:bounds[i + 1]].contiguous() for t in tensors] for i in range(shards)]


def _report(progress: Progress | None, phase: str, counts: dict[str, int], total: int,
            detail: str) -> None:
    if progress is not None:
        progress(SubmissionStatus(phase, counts, total, detail))


# ---------------------------------------------------------------------- progress, diagnosis
PHASES = ("posted", "leased", "committed", "audited", "paid", "refunded", "slashed")
"""The phases of a shard, in the order it goes through them (:func:`shard_phase`):

- ``posted``: escrowed on chain, no worker holds it;
- ``leased``: a worker holds the market's lease (or the chain's assignment) and has not
  committed a result yet (running it, or about to: the market does not know which);
- ``committed``: a result is on chain, waiting for the audit draw or payment;
- ``audited``: drawn for audit, waiting for the verdict, or a verdict waiting for its appeal
  window (a failure: the worker's appeal; a pass: the client's dispute) or appeal verdict (or
  a third verifier's, when the appeal verdict overturned the first or was escalated; or a
  second verifier's, when one proposed the job void);
- ``paid``; ``refunded`` (void: an audit got no verdict in time or the verifier declared the
  program unjudgeable; or reclaimed after the deadline); ``slashed`` (the worker was caught).
"""

_PHASE_OF_STATE = {
    JobState.NONE: "posted", JobState.POSTED: "posted", JobState.ASSIGNED: "leased",
    JobState.COMMITTED: "committed", JobState.AUDITED: "audited",
    JobState.AUDIT_FAILED: "audited", JobState.APPEALED: "audited",
    JobState.AUDIT_PASSED: "audited", JobState.DISPUTED: "audited",
    JobState.APPEAL_CONTESTED: "audited", JobState.DISPUTE_CONTESTED: "audited",
    JobState.VOID_PROPOSED: "audited",
    JobState.FAILURE_UPHELD: "audited", JobState.PASS_UPHELD: "audited",
    JobState.FAILURE_ESCALATED: "audited", JobState.PASS_ESCALATED: "audited",
    JobState.FINALIZED: "paid", JobState.REFUNDED: "refunded", JobState.SLASHED: "slashed",
}
_MOVING = frozenset({"leased", "committed", "audited"})


def shard_phase(state: JobState, *, leased: bool = False) -> str:
    """The phase (:data:`PHASES`) of a shard whose current job is in ``state`` on chain;
    ``leased``: the market says a worker holds a lease on it (the chain still says posted)."""
    phase = _PHASE_OF_STATE[state]
    return "leased" if phase == "posted" and leased else phase


@dataclass(frozen=True)
class ShardProgress:
    """One shard as the progress functions see it: its current job's state on chain and what
    the market says about that job (nothing for a job past ``leased``: it is not asked)."""

    index: int
    job_id: int
    state: JobState
    leased_by: str | None = None
    """The worker holding the market's lease on the job."""
    failures: tuple[tuple[str, str], ...] = ()
    """``(worker, reason)`` for each worker that failed to run the job (its latest reason)."""
    given_up: bool = False
    """The market offers the job no more: as many workers as it allows failed it."""
    note: str | None = None
    """What the market says is wrong with the job itself (its spec), if anything."""
    deadline: int | None = None
    """The job's deadline on chain (unix seconds, chain time)."""
    partials: tuple[Any, ...] = ()
    """Finished training work handed back on the job
    (:class:`~meshcompute.wire.market_client.PartialWork`): :meth:`Client.train_in_parts` pays
    for it and goes on from it."""

    @property
    def phase(self) -> str:
        return shard_phase(self.state, leased=self.leased_by is not None)


_WAITING_STATES = frozenset({JobState.NONE, JobState.POSTED, JobState.ASSIGNED})
"""States in which a shard waits for a worker (the market is asked about it)."""


def shard_progress(index: int, job_id: int, state: JobState, deadline: int | None,
                   view: Any = None) -> ShardProgress:
    """A shard from its job's on-chain state and deadline and the market's view of the job
    (a :class:`~meshcompute.wire.market_client.JobView`, or None when not asked or not
    reachable). The view's ``failure`` is the market's own note about the job (its spec)
    unless it is one of the workers' reports; a market that lists no ``failures`` (older
    than that field) gives its ``failure`` as ``"worker: reason"``, read as one report."""
    import re

    if view is None:
        return ShardProgress(index, job_id, state, deadline=deadline)
    failures = tuple(view.failures)
    note = view.failure or None
    if note is not None:
        reported = {f"{worker}: {reason}".lower() for worker, reason in failures}
        match = re.fullmatch(r"(0x[0-9a-fA-F]{40}): (.*)", note, re.DOTALL)
        if note.lower() in reported:
            note = None
        elif match is not None and not failures:
            failures, note = ((match.group(1), match.group(2)),), None
    return ShardProgress(index, job_id, state, leased_by=view.lease_holder, failures=failures,
                         given_up=bool(view.given_up), note=note, deadline=deadline,
                         partials=tuple(getattr(view, "partials", ()) or ()))


def phase_counts(shards: Sequence[ShardProgress]) -> dict[str, int]:
    """How many shards are in each phase, every phase of :data:`PHASES` present, in order."""
    counts = dict.fromkeys(PHASES, 0)
    for shard in shards:
        counts[shard.phase] += 1
    return counts


@dataclass(frozen=True)
class FailureSummary:
    """One distinct reason the shards' jobs could not run: ``reports`` failure reports (one
    per worker and shard) by ``workers`` different workers, on ``shards``. ``workers`` 0: the
    market's own note about the job (its spec), not a worker's report."""

    reason: str
    reports: int
    workers: int
    shards: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "reports": self.reports, "workers": self.workers,
                "shards": list(self.shards), "source": "worker" if self.workers else "market"}


def summarize_failures(shards: Sequence[ShardProgress]) -> tuple[FailureSummary, ...]:
    """The distinct failure reasons of ``shards`` (whitespace runs count as one space), most
    reported first (ties: the first seen first), each with its counts."""
    reports: dict[str, int] = {}
    workers: dict[str, set[str]] = {}
    where: dict[str, list[int]] = {}
    for shard in shards:
        items = [(worker.lower(), reason) for worker, reason in shard.failures]
        if shard.note:
            items.append(("", shard.note))
        for worker, reason in items:
            text = " ".join(reason.split())
            reports[text] = reports.get(text, 0) + 1
            if worker:
                workers.setdefault(text, set()).add(worker)
            if shard.index not in where.setdefault(text, []):
                where[text].append(shard.index)
    order = sorted(reports, key=lambda text: -reports[text])  # stable: first seen first
    return tuple(
        FailureSummary(text, reports[text], len(workers.get(text, ())), tuple(sorted(where[text])))
        for text in order
    )


@dataclass(frozen=True)
class Stuck:
    """Shards that will never run: every shard still ``posted`` is one the market offers no
    more, because as many workers as it allows failed it (``cause`` ``"refused"``) or its
    deadline is too close or past (``"deadline"``). Their escrow comes back at once with
    ``mesh job reclaim JOB`` (:meth:`Client.reclaim`): a job no worker holds on chain is
    cancelled at any time.

    ``cause`` ``"no_worker_fits"`` is not permanent (``permanent`` False, so never
    ``final``): no worker live at the market now can take any shard still posted (device,
    memory or price, ``detail`` says what is missing), but a fitting worker may still come
    online before the deadline, so the shards keep waiting."""

    cause: str
    shards: tuple[int, ...]
    job_ids: tuple[int, ...]
    reasons: tuple[FailureSummary, ...]
    deadline: int | None
    """The latest deadline of those jobs (unix seconds, chain time)."""
    chain_now: int | None
    in_progress: int
    """Other shards still leased, committed or in audit: they go on."""
    escrow: int = 0
    """Wei escrowed for the stuck shards (reward and audit fee), back with the reclaim."""
    detail: str = ""
    """For ``no_worker_fits``: what no live worker has (:func:`capacity_misfit`)."""

    @property
    def permanent(self) -> bool:
        """The market will never offer these shards again (``refused``, ``deadline``); False
        for ``no_worker_fits``: a worker that fits may still come online."""
        return self.cause != NO_WORKER_FITS

    @property
    def same_reason(self) -> bool:
        """Whether every worker that tried refused the shards for one and the same reason."""
        return len(self.reasons) == 1 and self.reasons[0].workers > 0

    @property
    def final(self) -> bool:
        """Nothing more will happen to the submission at all: the stuck shards are stuck for
        good (:attr:`permanent`) and no other shard is moving."""
        return self.permanent and self.in_progress == 0

    @property
    def reclaimable(self) -> bool:
        """``mesh job reclaim`` works now: the stuck shards are posted, held by no worker on
        chain, so their client may cancel them at any time."""
        return True

    def summary(self) -> str:
        """One line: which shards, why, and how the escrow comes back."""
        if not self.permanent:
            return (f"no live worker can take {shards_text(self.shards)} now ({self.detail}); "
                    "still waiting for one to come online")
        why = (f"every worker refused them: {self.reasons[0].reason}" if self.same_reason
               else "the market gave up on them" if self.cause == "refused"
               else "their deadline is too close or past for any worker to take them")
        return (f"{shards_text(self.shards)} will never run ({why}); their escrow "
                f"{self._reclaim_text()}")

    def lines(self) -> list[str]:
        """The diagnosis for a person: what is wrong, that nothing more will happen, and how
        and when the escrow comes back."""
        from meshcompute.core.lease import MAX_FAILURES
        from meshcompute.units import format_mesh

        which = f"{shards_text(self.shards)} (job{'s' if len(self.job_ids) > 1 else ''} " \
                f"{', '.join(str(j) for j in self.job_ids)})"
        out = []
        if not self.permanent:
            out.append(f"no live worker can take {which} now: {self.detail}.")
            out.append("Still waiting: the market offers them to a worker that fits as soon as "
                       "one comes online (registered and heartbeating).")
            escrow = f" ({format_mesh(self.escrow)} MESH)" if self.escrow else ""
            out.append(f"If none does, your escrow{escrow} {self._reclaim_text()}.")
            return out
        if self.cause == "refused" and self.same_reason:
            out.append(f"{which} will never run: every worker that tried refused "
                       f"{'them' if len(self.shards) > 1 else 'it'} for the same reason:")
            out.append(f"  {self.reasons[0].reason}")
        elif self.cause == "refused":
            out.append(f"{which} will never run: the market gave up after {MAX_FAILURES} "
                       "workers failed each; their reasons:")
            out += [f"  {describe_failure(reason)}" for reason in self.reasons]
        else:
            out.append(f"{which} will never run: the deadline is too close or past for a "
                       "worker to take them.")
        out.append("Nothing more will happen to them: the market offers them to no worker.")
        escrow = f" ({format_mesh(self.escrow)} MESH)" if self.escrow else ""
        out.append(f"Your escrow{escrow} {self._reclaim_text()}.")
        if self.in_progress:
            out.append(f"The other {self.in_progress} shard"
                       f"{'s' if self.in_progress > 1 else ''} in progress go on.")
        return out

    def _reclaim_text(self) -> str:
        jobs = " ".join(str(j) for j in self.job_ids)
        command = (f"`mesh job reclaim {jobs}`" if len(self.job_ids) == 1
                   else f"`mesh job reclaim JOB` for each of jobs {', '.join(jobs.split())}")
        return (f"comes back at once with {command}: no worker holds "
                f"{'them' if len(self.job_ids) > 1 else 'it'}, so it is cancelled now")

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause, "shards": list(self.shards), "job_ids": list(self.job_ids),
            "same_reason": self.same_reason,
            "reason": self.reasons[0].reason if self.same_reason else None,
            "failures": [reason.to_json() for reason in self.reasons],
            "deadline": self.deadline,
            "deadline_local": local_time(self.deadline) if self.deadline is not None else None,
            "reclaimable_now": self.reclaimable, "in_progress": self.in_progress,
            "escrow": str(self.escrow), "permanent": self.permanent, "detail": self.detail,
            "reclaim": [f"mesh job reclaim {job_id}" for job_id in self.job_ids],
            "message": " ".join(line.strip() for line in self.lines()),
        }


NO_WORKER_FITS = "no_worker_fits"


@dataclass(frozen=True)
class ShardNeeds:
    """What a worker must offer to take a shard: its spec's device and memory, and a price
    at most the shard's reward (wei)."""

    device: str
    memory_mb: int
    reward: int


def submission_needs(submission: Submission) -> dict[int, ShardNeeds]:
    """Each shard's :class:`ShardNeeds`, by shard index."""
    return {s.index: ShardNeeds(s.spec.device, s.spec.memory_limit_mb,
                                submission.reward_per_shard)
            for s in submission.shards}


def capacity_misfit(needs: ShardNeeds, capacity: WorkerCapacity) -> str | None:
    """What no live worker of ``capacity`` has for a shard with ``needs``, for a person (e.g.
    ``no live worker has device cuda; 3 live workers: 3 cpu``), or None when some row fits
    or the read cannot tell (``truncated``). Uses matching's own rules
    (:func:`meshcompute.core.matching.misfit`); free stake and slots are not known here."""
    from meshcompute.core.matching import misfit
    from meshcompute.units import format_mesh

    if capacity.live_workers <= 0:
        return "no worker is live at the market (registered and heartbeating)"
    reasons = [misfit(needs.device, needs.memory_mb, needs.reward, device=row.device,
                      memory_mb=row.memory_mb, gpu_memory_mb=row.gpu_memory_mb,
                      price_wei=row.price_wei)
               for row in capacity.rows if row.workers > 0]
    if capacity.truncated or None in reasons:
        return None
    devices: dict[str, int] = {}
    for row in capacity.rows:
        devices[row.device] = devices.get(row.device, 0) + row.workers
    fleet = ", ".join(f"{n} {d}" for d, n in sorted(devices.items(), key=lambda x: -x[1]))
    live = (f"{capacity.live_workers} live worker{'s' if capacity.live_workers != 1 else ''}"
            f": {fleet}")
    accel = needs.device.lower() != "cpu"
    if "memory" not in reasons and "price" not in reasons:
        return f"no live worker has device {needs.device}; {live}"
    if "price" not in reasons:
        kind = "GPU memory" if accel else "memory"
        most = max((row.gpu_memory_mb if accel else row.memory_mb) for row, why
                   in zip(capacity.rows, reasons, strict=True) if why == "memory")
        return (f"no live worker{f' with device {needs.device}' if accel else ''} has "
                f"{needs.memory_mb} MB of {kind} (the most is {most} MB); {live}")
    cheapest = min(row.price_wei for row, why in zip(capacity.rows, reasons, strict=True)
                   if why == "price")
    return (f"every live worker that fits the device and memory asks more than the reward of "
            f"{format_mesh(needs.reward)} MESH per shard (the cheapest asks "
            f"{format_mesh(cheapest)} MESH); {live}")


def diagnose_stuck(
    shards: Sequence[ShardProgress], *, chain_now: int | None = None, escrow_per_shard: int = 0,
    capacity: WorkerCapacity | None = None, needs: Mapping[int, ShardNeeds] | None = None,
) -> Stuck | None:
    """The shards that will never run, when every shard still ``posted`` is one the market
    offers no more (:class:`Stuck`); None while any posted shard may still be taken (or none
    is posted). A posted shard is offered no more when the market gave up on it (as many
    workers as it allows failed it: ``given_up``, or that many failure reports) or, with
    ``chain_now``, when its deadline is within the market's margin (or past).

    Otherwise, with the market's ``capacity`` (``GET /workers/capacity``; None when it could
    not be read or the market has no such route: no diagnosis) and each shard's ``needs``:
    when no live worker can take any posted shard now, cause ``no_worker_fits`` (not
    :attr:`Stuck.permanent`: the shards keep waiting for a worker to come online)."""
    from meshcompute.core.lease import DEADLINE_MARGIN_S, MAX_FAILURES

    posted = [s for s in shards if s.phase == "posted"]
    if not posted:
        return None
    refused, late = [], []
    for shard in posted:
        if shard.given_up or len(shard.failures) >= MAX_FAILURES:
            refused.append(shard)
        elif (chain_now is not None and shard.deadline is not None
              and shard.deadline <= chain_now + DEADLINE_MARGIN_S):
            late.append(shard)
        else:
            return _no_worker_fits(shards, posted, chain_now, escrow_per_shard, capacity, needs)
    deadlines = [s.deadline for s in posted if s.deadline is not None]
    return Stuck(
        cause="refused" if refused else "deadline",
        shards=tuple(s.index for s in posted),
        job_ids=tuple(s.job_id for s in posted),
        reasons=summarize_failures(refused),
        deadline=max(deadlines) if deadlines else None,
        chain_now=chain_now,
        in_progress=sum(1 for s in shards if s.phase in _MOVING),
        escrow=escrow_per_shard * len(posted),
    )


def _no_worker_fits(
    shards: Sequence[ShardProgress], posted: Sequence[ShardProgress], chain_now: int | None,
    escrow_per_shard: int, capacity: WorkerCapacity | None,
    needs: Mapping[int, ShardNeeds] | None,
) -> Stuck | None:
    if capacity is None or not needs or any(s.index not in needs for s in posted):
        return None
    details: list[str] = []
    for shard in posted:
        detail = capacity_misfit(needs[shard.index], capacity)
        if detail is None:
            return None
        if detail not in details:
            details.append(detail)
    deadlines = [s.deadline for s in posted if s.deadline is not None]
    return Stuck(
        cause=NO_WORKER_FITS,
        shards=tuple(s.index for s in posted),
        job_ids=tuple(s.job_id for s in posted),
        reasons=(),
        deadline=max(deadlines) if deadlines else None,
        chain_now=chain_now,
        in_progress=sum(1 for s in shards if s.phase in _MOVING),
        escrow=escrow_per_shard * len(posted),
        detail="; ".join(details),
    )


def submission_status(
    shards: Sequence[ShardProgress], *, chain_now: int | None = None, escrow_per_shard: int = 0,
    capacity: WorkerCapacity | None = None, needs: Mapping[int, ShardNeeds] | None = None,
) -> SubmissionStatus:
    """The snapshot of a posted submission from its shards (in order): counts by on-chain
    state and by phase, the failures deduplicated, the stuck diagnosis (``chain_now`` and
    ``escrow_per_shard``, ``capacity`` and ``needs`` as for :func:`diagnose_stuck`) and the
    phase, ``done`` once every shard is paid, ``stuck`` with a permanent diagnosis, else
    ``running`` (with a ``no_worker_fits`` diagnosis, too: the shards keep waiting)."""
    counts: dict[str, int] = {}
    for shard in shards:
        name = shard.state.name.lower()
        counts[name] = counts.get(name, 0) + 1
    phases = phase_counts(shards)
    failures = summarize_failures(shards)
    stuck = diagnose_stuck(shards, chain_now=chain_now, escrow_per_shard=escrow_per_shard,
                           capacity=capacity, needs=needs)
    total = len(shards)
    phase = ("done" if phases["paid"] == total
             else "stuck" if stuck is not None and stuck.permanent else "running")
    deadlines = [s.deadline for s in shards
                 if s.phase in ("posted", "leased") and s.deadline is not None]
    return SubmissionStatus(phase, counts, total, "; ".join(map(describe_failure, failures)),
                            phases, failures, stuck, tuple(shards),
                            max(deadlines) if deadlines else None)


class HandedBack(Exception):
    """Raised by :meth:`Client.wait` with ``stop_on_partial`` only: job ``job_id`` (still
    posted) was handed back by a worker with finished checkpoints, ``partial``."""

    def __init__(self, job_id: int, partial: Any) -> None:
        super().__init__(f"job {job_id} was handed back with steps up to "
                         f"{partial.end_step} done by {partial.worker}")
        self.job_id, self.partial = job_id, partial


class SubmissionStuck(JobFailed):
    """:meth:`Client.wait` gave up: some shards will never run and no other shard is moving
    (``status.stuck`` says which and why)."""

    def __init__(self, status: SubmissionStatus) -> None:
        assert status.stuck is not None
        super().__init__(status.stuck.summary())
        self.status = status


def local_time(timestamp: int) -> str:
    """A unix time as this machine's local date and time, with its zone."""
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def shards_text(indexes: Sequence[int]) -> str:
    """``shard 3``, ``shards 0-3``, ``shards 0, 2, 5-7``."""
    runs: list[list[int]] = []
    for index in sorted(indexes):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"shard{'s' if len(indexes) > 1 else ''} {text}"


def describe_failure(summary: FailureSummary) -> str:
    """``3 workers, shards 0-3: REASON`` (the market's own note: ``market: REASON``)."""
    who = (f"{summary.workers} worker{'s' if summary.workers > 1 else ''}" if summary.workers
           else "market")
    return f"{who}, {shards_text(summary.shards)}: {summary.reason}"
