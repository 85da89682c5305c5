"""The off-chain lease lifecycle, pure: which jobs can be leased and by whom, when a lease
ends, what collateral a worker has pending, how a match round turns the queue into offers, and
when the verdict windows after a commit close.

A job's life off chain, as the market and the verifier see it::

    queued ──match──▶ offered ──collect──▶ leased ──commit on chain──▶ ended
      ▲                  │ lapsed             │ expired, released, failed,
      └──────────────────┴────────────────────┘ or the job moved on on chain

- *queued* (:func:`queued`): posted, or assigned on chain with a lapsed chain lease, and more
  than :data:`DEADLINE_MARGIN_S` before its deadline; a match round offers it when nobody holds
  an offer or a lease on it and fewer than :data:`MAX_FAILURES` workers failed to run it
  (:func:`given_up`).
- *offered*: to one worker, until the offer lapses (:func:`offer_lapsed`).
- *leased* (:func:`leasable`): a signed ticket for that worker, until its expiry in chain time
  (:func:`lease_expired`). The offers and leases of one lease batch fill one slot
  (:func:`lease_unit`); a lease's collateral counts against the worker's free stake until the
  chain locks it at the commit (:func:`pending_collateral`).
- *ended*: the holder committed (:func:`committed_by_holder`), or the job moved on on chain
  without it (:func:`moved_on`).

:func:`plan_match` is a whole match round's decision over what the market read at its start:
which leases end, which shards join their group, which spec problems change, and which
offers to make (lease batches from :mod:`meshcompute.core.batching`, workers from
:mod:`meshcompute.core.matching`).

After a commit the verifier may post an audit verdict until :func:`audit_closes_at`, and for
an appealed job the appeal verdict until :func:`appeal_verdict_closes_at` (mirrored from
``JobMarket._auditClosesAt`` and ``_appealVerdictClosesAt``; :func:`window_open` is the
contract's ``block.timestamp <= closesAt``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from meshcompute.core.batching import QueuedJob, plan_batches
from meshcompute.core.job import ZERO_ADDRESS, JobRecord, JobState
from meshcompute.core.matching import JobDemand, WorkerOffer, match
from meshcompute.core.spec import JobSpec, client_group
from meshcompute.errors import BadInput

DEADLINE_MARGIN_S = 10
"""A job is not leased when its deadline is this close (a worker could not finish it)."""
MAX_FAILURES = 3
"""A job that failed to run on this many different workers is offered no more."""

_OPEN = (JobState.POSTED, JobState.ASSIGNED)


class Held(Protocol):
    """An offer or a lease as these rules see it (the market's ``OfferInfo``, ``LeaseInfo``)."""

    @property
    def job_id(self) -> int: ...

    @property
    def worker(self) -> str: ...

    @property
    def collateral(self) -> int: ...

    @property
    def batch(self) -> str: ...


class Registered(Protocol):
    """A registered worker as the matcher needs it (the market's ``WorkerInfo``)."""

    @property
    def address(self) -> str: ...

    @property
    def operator(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def memory_mb(self) -> int: ...

    @property
    def gpu_memory_mb(self) -> int: ...

    @property
    def price_wei(self) -> int: ...

    @property
    def slots(self) -> int: ...

    @property
    def last_assigned_at(self) -> float: ...


class Standing(Protocol):
    """A worker's stake and record as read from chain (the market's ``ChainStanding``)."""

    @property
    def free_stake(self) -> int: ...

    @property
    def completed(self) -> int: ...

    @property
    def missed(self) -> int: ...

    @property
    def slashed(self) -> int: ...


L = TypeVar("L", bound=Held)


# ---------------------------------------------------------------------- jobs and leases
def queued(record: JobRecord, chain_now: int) -> bool:
    """Whether any worker could take the job on chain now (with a ticket): posted, or
    assigned with a lapsed chain lease, and not too close to its deadline."""
    if record.deadline <= chain_now + DEADLINE_MARGIN_S:
        return False
    return record.state == JobState.POSTED or (
        record.state == JobState.ASSIGNED and record.lease_expiry <= chain_now
    )


def reserved_for(record: JobRecord) -> str | None:
    """The worker a posted job is reserved for on chain (``postJobsFor``), if any."""
    if record.state == JobState.POSTED and record.worker != ZERO_ADDRESS:
        return record.worker
    return None


def leasable(record: JobRecord, worker: str, chain_now: int) -> bool:
    """Whether ``worker`` could take the job on chain now (with a ticket): a queued job, or
    one assigned to ``worker`` itself (a renewal)."""
    if record.deadline <= chain_now + DEADLINE_MARGIN_S:
        return False
    return queued(record, chain_now) or (
        record.state == JobState.ASSIGNED and record.worker == worker
    )


def moved_on(record: JobRecord, holder: str) -> bool:
    """Whether the job left ``holder``'s lease on chain: committed, refunded or ended, or
    assigned to another worker."""
    return record.state not in _OPEN or (
        record.state == JobState.ASSIGNED and record.worker != holder
    )


def committed_by_holder(record: JobRecord, holder: str) -> bool:
    """Whether ``holder`` committed the job (its lease did its work, whatever its expiry)."""
    return record.worker == holder and record.state not in _OPEN


def lease_expired(expiry: int, chain_now: int) -> bool:
    """Whether a lease expiring at ``expiry`` (chain time) has run out at ``chain_now``."""
    return expiry <= chain_now


def offer_lapsed(expires_at: float, now: float) -> bool:
    """Whether an offer open until ``expires_at`` (wall time) lapsed at ``now``."""
    return expires_at < now


def given_up(failures: int) -> bool:
    """Whether a job that ``failures`` workers failed to run is offered no more."""
    return failures >= MAX_FAILURES


def heartbeating(last_seen: float, now: float, timeout_s: float) -> bool:
    """Whether a worker last seen at ``last_seen`` may still be offered work at ``now``."""
    return last_seen >= now - timeout_s


def lease_unit(held: Held) -> str:
    """The slot an offer or lease fills: its lease batch, or the job alone."""
    return held.batch or f"job-{held.job_id}"


def batch_id(job_ids: Sequence[int], now: float) -> str:
    """The id shared by the offers of one lease batch made at ``now`` ("" for a single job)."""
    return f"{job_ids[0]}-{len(job_ids)}-{now:.6f}" if len(job_ids) > 1 else ""


def pending_collateral(offers: Iterable[Held], leases: Iterable[Held],
                       records: Mapping[int, JobRecord]) -> dict[str, int]:
    """Collateral each worker has promised but the chain has not locked: its open offers, and
    its leases whose job is not committed yet (``records``; a job without a record counts)."""
    pending: dict[str, int] = defaultdict(int)
    for offer in offers:
        pending[offer.worker] += offer.collateral
    for lease in leases:
        record = records.get(lease.job_id)
        if record is None or record.state in _OPEN:
            pending[lease.worker] += lease.collateral
    return dict(pending)


def worker_load(offers: Iterable[Held], leases: Iterable[Held]) -> dict[str, int]:
    """Slots each worker has taken: its lease units (:func:`lease_unit`) over offers and
    leases, a lease batch counting once."""
    units: dict[str, set[str]] = defaultdict(set)
    for held in (*offers, *leases):
        units[held.worker].add(lease_unit(held))
    return {worker: len(taken) for worker, taken in units.items()}


# ---------------------------------------------------------------------- a match round
@dataclass(frozen=True, slots=True)
class QueuedEntry:
    """A job a match round may offer, with what the market recorded about it."""

    job_id: int
    record: JobRecord
    spec: JobSpec | None
    spec_error: str | None
    """Why there is no spec (set exactly when ``spec`` is None)."""
    first_seen: float
    failures: int
    excluded: frozenset[str]
    known_problem: str | None
    """The spec problem an earlier round recorded for the job."""
    in_group: bool
    """Whether the job is already recorded as a shard of its spec's group."""


@dataclass(frozen=True, slots=True)
class PlannedOffer:
    """An offer to make: ``job_id`` to ``worker``, in the lease batch ``batch`` ("": alone)."""

    job_id: int
    worker: str
    collateral: int
    batch: str


@dataclass
class MatchPlan(Generic[L]):
    """What a match round writes, and what it reports."""

    ending: list[L] = field(default_factory=list)
    """Leases whose job moved on on chain."""
    joins: list[tuple[str, int, int, str]] = field(default_factory=list)
    """``(group, shard, job_id, client)`` of shards joining their group."""
    problems: dict[int, str] = field(default_factory=dict)
    """Why each queued job that cannot be offered has no usable spec."""
    problem_changes: dict[int, str | None] = field(default_factory=dict)
    """Spec problems to record (None: clear the recorded one)."""
    queued: int = 0
    workers: int = 0
    bad_workers: list[tuple[str, str]] = field(default_factory=list)
    """``(address, error)`` of registry entries the matcher refused."""
    batches: int = 0
    offers: list[PlannedOffer] = field(default_factory=list)


def match_candidates(records: Mapping[int, JobRecord], leases: Sequence[Held],
                     offers: Sequence[Held], chain_now: int) -> list[int]:
    """Ids (ascending) of the queued jobs nobody holds an offer or a standing lease on."""
    busy = {o.job_id for o in offers} | {
        lease.job_id for lease in leases if not _ends(lease, records)
    }
    return sorted(job_id for job_id, record in records.items()
                  if job_id not in busy and queued(record, chain_now))


def plan_match(
    *,
    now: float,
    records: Mapping[int, JobRecord],
    leases: Sequence[L],
    offers: Sequence[Held],
    queue: Sequence[QueuedEntry],
    group_owners: Mapping[str, str],
    workers: Sequence[tuple[Registered, Standing]],
    max_batch: int,
) -> MatchPlan[L]:
    """One match round over what was read at its start.

    ``records``: the open jobs and the jobs of ``leases``; ``queue``: the entries of
    :func:`match_candidates`, ascending; ``group_owners``: the client (lower case) owning
    each group the queue's specs name, where one does; ``workers``: the heartbeating workers
    with their standing. Leases whose job moved on end (:func:`moved_on`); a shard joins its
    group unless the group belongs to another client (the first client naming a group owns
    it); queued jobs with a usable spec, not given up, are cut into lease batches
    (``max_batch`` jobs at most) and matched to the workers whose free stake, net of their
    pending collateral, is positive: one offer per job of each matched batch.
    """
    plan: MatchPlan[L] = MatchPlan(ending=[lease for lease in leases if _ends(lease, records)])
    ended = {lease.job_id for lease in plan.ending}
    kept = [lease for lease in leases if lease.job_id not in ended]
    owners = dict(group_owners)
    jobs: list[QueuedJob] = []
    for entry in queue:
        spec = _usable_spec(entry, owners, plan)
        if spec is None or given_up(entry.failures):
            continue
        only = reserved_for(entry.record)
        if only is not None and only.lower() in {w.lower() for w in entry.excluded}:
            continue  # its one worker refused it: nobody else may take it
        demand = JobDemand(
            job_id=entry.job_id,
            device=spec.device,
            memory_mb=spec.memory_limit_mb,
            collateral=entry.record.collateral,
            reward=entry.record.reward,
            posted_at=entry.first_seen,
            exclude_workers=entry.excluded,
            only_worker=only,
        )
        jobs.append(QueuedJob(demand=demand, client=entry.record.client, program=spec.program))
    plan.queued = len(jobs)
    fleet = _worker_offers(workers, pending_collateral(offers, kept, records),
                           worker_load(offers, kept), plan)
    plan.workers = len(fleet)
    if not jobs or not fleet:
        return plan
    free_slots = sum(max(0, o.slots - o.load) for o in fleet)
    batches = plan_batches(jobs, max_batch=max_batch, free_slots=free_slots)
    plan.batches = len(batches)
    by_first = {batch.demand.job_id: batch for batch in batches}
    for assignment in match([batch.demand for batch in batches], fleet, now):
        batch = by_first[assignment.job_id]
        shared = batch_id(batch.job_ids, now)
        plan.offers.extend(
            PlannedOffer(job_id, assignment.worker, records[job_id].collateral, shared)
            for job_id in batch.job_ids
        )
    return plan


def _ends(lease: Held, records: Mapping[int, JobRecord]) -> bool:
    record = records.get(lease.job_id)
    return record is not None and moved_on(record, lease.worker)


def _usable_spec(entry: QueuedEntry, owners: dict[str, str], plan: MatchPlan) -> JobSpec | None:
    """The entry's spec if it can be offered, else None with its problem in ``plan``; joins
    the shard to its group (``owners`` gains the groups claimed)."""
    spec, problem = entry.spec, entry.spec_error
    if spec is not None:
        if spec.group is not None and not entry.in_group:
            client = entry.record.client.lower()
            group = client_group(client, spec.group)
            # the id is the client's own, so another client cannot own it; checked anyway
            if owners.setdefault(group, client) == client:
                plan.joins.append((group, spec.shard, entry.job_id, entry.record.client))
            else:
                problem = f"group {group} belongs to another client; this job cannot join it"
                spec = None
        if spec is not None:
            if entry.known_problem is not None:
                plan.problem_changes[entry.job_id] = None
            return spec
    assert problem is not None
    if entry.known_problem != problem:
        plan.problem_changes[entry.job_id] = problem
    plan.problems[entry.job_id] = problem
    return None


def _worker_offers(workers: Sequence[tuple[Registered, Standing]], pending: Mapping[str, int],
                   load: Mapping[str, int], plan: MatchPlan) -> list[WorkerOffer]:
    """The workers as the matcher sees them: free stake net of pending collateral (none left:
    left out), load in lease units."""
    out: list[WorkerOffer] = []
    for worker, standing in workers:
        free = standing.free_stake - pending.get(worker.address, 0)
        if free <= 0:
            continue
        try:
            out.append(
                WorkerOffer(
                    address=worker.address,
                    operator=worker.operator,
                    device=worker.device,
                    memory_mb=worker.memory_mb,
                    gpu_memory_mb=worker.gpu_memory_mb,
                    free_stake=free,
                    price_wei=worker.price_wei,
                    slots=worker.slots,
                    load=load.get(worker.address, 0),
                    completed=standing.completed,
                    missed=standing.missed,
                    slashed=standing.slashed,
                    last_assigned_at=worker.last_assigned_at,
                )
            )
        except BadInput as exc:
            plan.bad_workers.append((worker.address, str(exc)))
    return out


# ---------------------------------------------------------------------- verdict windows
def audit_closes_at(record: JobRecord, *, challenge_window: int, audit_window: int) -> int:
    """The last second (block time) an audit verdict on the committed job is accepted: the
    audit window follows the challenge window, both counted from the commit."""
    return record.committed_at + challenge_window + audit_window


def appeal_closes_at(record: JobRecord, *, appeal_window: int) -> int:
    """The last second the worker may appeal a failed audit (or the client dispute a pass):
    the appeal window, counted from the first verdict."""
    return record.resolved_at + appeal_window


def appeal_verdict_closes_at(record: JobRecord, *, appeal_window: int, audit_window: int) -> int:
    """The last second an appeal verdict is accepted: an audit window after the appeal
    window, both counted from the first verdict."""
    return record.resolved_at + appeal_window + audit_window


def contest_closes_at(record: JobRecord, *, audit_window: int) -> int:
    """The last second the verdict answering a contested appeal verdict or a proposed void is
    accepted (AppealContested, DisputeContested, VoidProposed): an audit window after it
    (``resolved_at`` is the time the appeal verdict or the void proposal came)."""
    return record.resolved_at + audit_window


def verdict_closes_at(record: JobRecord, *, challenge_window: int, appeal_window: int,
                      audit_window: int) -> int:
    """The last second the job's pending verdict is accepted, whatever it is
    (``JobMarketSettlement._verdictClosesAt``)."""
    if record.state in (JobState.APPEALED, JobState.DISPUTED):
        return appeal_verdict_closes_at(record, appeal_window=appeal_window,
                                        audit_window=audit_window)
    if record.state in (JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED,
                        JobState.VOID_PROPOSED, JobState.FAILURE_ESCALATED,
                        JobState.PASS_ESCALATED):
        return contest_closes_at(record, audit_window=audit_window)
    return audit_closes_at(record, challenge_window=challenge_window, audit_window=audit_window)


def window_open(now: int, closes_at: int) -> bool:
    """Whether a window closing at ``closes_at`` still accepts a transaction at ``now``."""
    return now <= closes_at


def escalated(now: int, closes_at: int, audit_window: int) -> bool:
    """Whether a verdict window closing at ``closes_at`` is in its second half at ``now``,
    where the draw passes a silent verifier's assignment to the next one (as
    ``JobMarket._assignee``: the last ``audit_window // 2`` seconds)."""
    return now + audit_window // 2 > closes_at


def final_margin(margin_s: int, audit_window: int) -> int:
    """How long before a verdict window closes a missing worker output counts as missing for
    good: ``margin_s``, but at most half the audit window."""
    return min(margin_s, audit_window // 2)


def in_final_margin(now: int, closes_at: int, margin_s: int) -> bool:
    """Whether ``now`` lies within ``margin_s`` of a window closing at ``closes_at``."""
    return now >= closes_at - margin_s
