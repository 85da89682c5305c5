"""The market's periodic work, as plain functions the Celery tasks call.

- :func:`index_round`: follow the chain (the indexer owns events, reorgs and resumption).
- :func:`match_round`: read posted jobs and their specs, build the pure matcher's inputs from
  the worker registry and the chain, and turn its assignments into offers the workers collect.
- :func:`expire_round`: take back leases and offers whose time ran out.
- :func:`settle_round`: finalize payable jobs in batches (the settler owns idempotency).

Each function is idempotent: offers and leases are keyed by job id and guarded in
:mod:`meshcompute.market.state`, counters are keyed by the lease they count.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcompute.market.runtime import MarketRuntime
from meshcompute.market.service import leasable
from meshcompute.market.state import MAX_FAILURES, LeaseInfo, OfferInfo

from meshcompute.core.batching import QueuedJob, plan_batches
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.matching import JobDemand, WorkerOffer, match
from meshcompute.core.spec import JobSpec
from meshcompute.errors import BadInput, ChainError, NotFound

log = logging.getLogger("market.rounds")


@dataclass
class MatchReport:
    queued: int = 0
    workers: int = 0
    offered: list[tuple[int, str]] = field(default_factory=list)
    spec_problems: dict[int, str] = field(default_factory=dict)
    finished_leases: list[int] = field(default_factory=list)


@dataclass
class ExpireReport:
    expired_leases: list[int] = field(default_factory=list)
    expired_offers: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------- index
def index_round(rt: MarketRuntime) -> dict[str, Any]:
    report = rt.indexer.sync()
    result = {
        "from_block": report.from_block,
        "to_block": report.to_block,
        "new_events": len(report.new_events),
        "reorged_blocks": report.reorged_blocks,
    }
    if report.new_events or report.reorged_blocks:
        log.info("indexed", extra={"fields": result})
    return result


# ---------------------------------------------------------------------- match
def match_round(rt: MarketRuntime, *, now: float | None = None) -> MatchReport:
    """Offer queued jobs to workers: group them into lease batches
    (:func:`meshcompute.core.batching.plan_batches`: same client and program, at most
    ``max_lease_batch`` jobs), match each batch as one demand (one slot, summed collateral),
    and write one offer per job carrying the batch id."""
    now = time.time() if now is None else now
    chain_now = rt.chain_now()
    records = rt.indexer.open_job_records()
    report = MatchReport()
    leases = rt.state.all_leases()
    # a leased job that ended (refunded, paid) is no longer open: read its record too
    ended = [lease.job_id for lease in leases if lease.job_id not in records]
    records |= rt.indexer.records_of(ended)
    report.finished_leases = _finish_leases(rt, records, leases)
    finished = set(report.finished_leases)
    leases = [lease for lease in leases if lease.job_id not in finished]
    current_offers = rt.state.all_offers()

    busy = {o.job_id for o in current_offers} | {lease.job_id for lease in leases}
    candidates = sorted(
        job_id for job_id, record in records.items()
        if job_id not in busy and _queued(record, chain_now)
    )
    queued: list[QueuedJob] = []
    if candidates:
        first_seen = rt.state.first_seen(candidates, now)
        problems = rt.state.spec_problems(candidates)
        failures = rt.state.failure_counts(candidates)
        excluded = rt.state.excluded_many(candidates, now)
        grouped = rt.state.groups_of(candidates)
        parsed = {job_id: _parse_spec(rt, records[job_id]) for job_id in candidates}
        # shards not yet recorded in their group join it, all in one round trip
        joining = [job_id for job_id, (spec, _) in parsed.items()
                   if spec is not None and spec.group is not None and job_id not in grouped]
        joined = dict(zip(joining, rt.state.add_to_groups(
            [(parsed[j][0].group, parsed[j][0].shard, j, records[j].client)  # type: ignore[union-attr]
             for j in joining]), strict=True))
        for job_id in candidates:
            record = records[job_id]
            spec = _read_spec(rt, job_id, parsed[job_id], report, problems.get(job_id),
                              joined.get(job_id, True))
            if spec is None or failures[job_id] >= MAX_FAILURES:
                continue
            demand = JobDemand(
                job_id=job_id,
                device=spec.device,
                memory_mb=spec.memory_limit_mb,
                collateral=record.collateral,
                reward=record.reward,
                posted_at=first_seen[job_id],
                exclude_workers=excluded[job_id],
            )
            queued.append(QueuedJob(demand=demand, client=record.client, program=spec.program))
    report.queued = len(queued)
    offers = _worker_offers(rt, records, now, current_offers, leases)
    report.workers = len(offers)
    if not queued or not offers:
        return report
    free_slots = sum(max(0, o.slots - o.load) for o in offers)
    batches = plan_batches(queued, max_batch=rt.settings.max_lease_batch,
                           free_slots=free_slots)
    by_first = {batch.demand.job_id: batch for batch in batches}
    for assignment in match([batch.demand for batch in batches], offers, now):
        batch = by_first[assignment.job_id]
        batch_id = (f"{batch.job_ids[0]}-{len(batch.job_ids)}-{now:.6f}"
                    if len(batch.job_ids) > 1 else "")
        created = rt.state.create_offers(
            [(job_id, assignment.worker, records[job_id].collateral)
             for job_id in batch.job_ids],
            now=now, ttl_s=rt.settings.offer_ttl_s, batch=batch_id,
        )
        report.offered.extend((job_id, assignment.worker)
                              for job_id, made in zip(batch.job_ids, created, strict=True)
                              if made)
    if report.offered:
        log.info("matched", extra={"fields": {"offers": len(report.offered),
                                              "batches": len(batches),
                                              "queued": report.queued,
                                              "workers": report.workers}})
    return report


def _queued(record: JobRecord, chain_now: int) -> bool:
    """Posted, or assigned with an expired chain lease, and not too close to its deadline."""
    if record.state not in (JobState.POSTED, JobState.ASSIGNED):
        return False
    return leasable(record, "", chain_now)


def _parse_spec(rt: MarketRuntime, record: JobRecord) -> tuple[JobSpec | None, str | None]:
    """The job's spec, or why there is none."""
    sha = record.spec_hash.hex()
    try:
        return rt.spec(sha), None
    except NotFound:
        return None, f"spec blob {sha} is not in the market's blob store"
    except BadInput as exc:
        return None, str(exc)


def _read_spec(rt: MarketRuntime, job_id: int, parsed: tuple[JobSpec | None, str | None],
               report: MatchReport, known_problem: str | None, in_group: bool):
    """The spec of a job that may be offered, or None with its problem recorded.
    ``in_group`` is False when the job's group belongs to another client."""
    spec, problem = parsed
    if spec is not None:
        if spec.group is not None and not in_group:
            problem = f"group {spec.group} belongs to another client; this job cannot join it"
        else:
            if known_problem is not None:
                rt.state.set_spec_problem(job_id, None)
            return spec
    assert problem is not None
    if known_problem != problem:
        rt.state.set_spec_problem(job_id, problem)
        log.warning("spec problem", extra={"fields": {"job_id": job_id, "problem": problem}})
    report.spec_problems[job_id] = problem
    return None


def _worker_offers(
    rt: MarketRuntime, records: Mapping[int, JobRecord], now: float,
    current_offers: list[OfferInfo], leases: list[LeaseInfo],
) -> list[WorkerOffer]:
    """Registered, heartbeating workers with their free stake net of outstanding leases.

    A worker's load counts lease batches, not jobs: a batch occupies one slot."""
    pending_collateral: dict[str, int] = defaultdict(int)
    units: dict[str, set[str]] = defaultdict(set)
    for offer in current_offers:
        pending_collateral[offer.worker] += offer.collateral
        units[offer.worker].add(offer.batch or f"job-{offer.job_id}")
    for lease in leases:
        units[lease.worker].add(lease.batch or f"job-{lease.job_id}")
        record = records.get(lease.job_id)
        # once committed on chain the collateral is locked there and not in free stake
        if record is None or record.state in (JobState.POSTED, JobState.ASSIGNED):
            pending_collateral[lease.worker] += lease.collateral
    cutoff = now - rt.heartbeat_timeout_s
    out: list[WorkerOffer] = []
    for worker in rt.state.workers():
        if worker.last_seen < cutoff:
            continue
        try:
            standing = rt.standing(worker.address)
        except ChainError as exc:
            log.warning("stake unreadable", extra={"fields": {"worker": worker.address,
                                                              "error": str(exc)}})
            continue
        free = standing.free_stake - pending_collateral[worker.address]
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
                    load=len(units[worker.address]),
                    completed=standing.completed,
                    missed=standing.missed,
                    slashed=standing.slashed,
                    last_assigned_at=worker.last_assigned_at,
                )
            )
        except BadInput as exc:
            log.warning("bad worker entry", extra={"fields": {"worker": worker.address,
                                                              "error": str(exc)}})
    return out


def _finish_leases(rt: MarketRuntime, records: Mapping[int, JobRecord],
                   leases: list[LeaseInfo]) -> list[int]:
    """Drop leases whose job moved on on chain (committed, refunded, taken by another)."""
    moved_on = []
    for lease in leases:
        record = records.get(lease.job_id)
        if record is None:
            continue
        if record.state not in (JobState.POSTED, JobState.ASSIGNED) or (
            record.state == JobState.ASSIGNED and record.worker != lease.worker
        ):
            moved_on.append(lease)
    ended = rt.state.end_leases(moved_on)
    return [lease.job_id for lease, gone in zip(moved_on, ended, strict=True) if gone]


# ---------------------------------------------------------------------- expire
def expire_round(rt: MarketRuntime, *, now: float | None = None) -> ExpireReport:
    """Leases past their expiry go back to the queue, their holder excluded for a lease
    period; offers nobody collected go back too. Each expiry is counted once."""
    now = time.time() if now is None else now
    chain_now = rt.chain_now()
    report = ExpireReport()
    for lease in rt.state.expired_leases(chain_now):
        if _committed_by_holder(rt, lease):
            rt.state.end_lease(lease)
            continue
        if rt.state.end_lease(lease):
            rt.state.exclude(lease.job_id, lease.worker, now + rt.settings.lease_s)
            rt.state.incr_metric("lease_expiries", key=lease.key)
            report.expired_leases.append(lease.job_id)
    for offer in rt.state.all_offers():
        if offer.expires_at < now and rt.state.drop_offer(offer.job_id, offer.worker):
            rt.state.exclude(offer.job_id, offer.worker, now + rt.settings.offer_ttl_s)
            rt.state.incr_metric("offer_expiries", key=f"{offer.job_id}:{offer.worker}:"
                                                       f"{offer.offered_at}")
            report.expired_offers.append(offer.job_id)
    if report.expired_leases or report.expired_offers:
        log.info("expired", extra={"fields": {"leases": report.expired_leases,
                                              "offers": report.expired_offers}})
    return report


def _committed_by_holder(rt: MarketRuntime, lease: LeaseInfo) -> bool:
    record = rt.indexer.job_record(lease.job_id)
    return record is not None and record.worker == lease.worker and record.state not in (
        JobState.POSTED, JobState.ASSIGNED
    )


# ---------------------------------------------------------------------- settle
def settle_round(rt: MarketRuntime, *, max_batch: int | None = None) -> dict[str, Any]:
    from meshcompute.market.settler import Settler

    batch = rt.settings.settle_max_batch if max_batch is None else max_batch
    settler = Settler(rt.settler, rt.redis, max_batch=batch)
    report = settler.settle(rt.indexer.open_job_records(), rt.chain_now())
    if report.job_ids:
        rt.state.incr_metric("settled_jobs", len(report.job_ids), key=str(report.tx_hash))
        if report.tx_hash is not None and rt.redis.set(
            f"{rt.state.prefix}batch-seen:{report.tx_hash}", 1, nx=True, ex=7 * 24 * 3600
        ):
            rt.state.observe_batch(len(report.job_ids))
        log.info("settled", extra={"fields": {"jobs": report.job_ids, "tx": report.tx_hash}})
    return {
        "job_ids": list(report.job_ids),
        "tx_hash": report.tx_hash,
        "skipped": list(report.skipped),
    }
