"""The market's periodic work, as plain functions the Celery tasks call.

- :func:`index_round`: follow the chain (the indexer owns events, reorgs and resumption).
- :func:`match_round`: read the queue, the leases and offers, and the workers with their
  stake, let the core plan the round (:func:`meshcompute.core.lease.plan_match`), and write
  its offers (the workers collect them) and its ended leases in one go.
- :func:`expire_round`: take back leases and offers whose time ran out.
- :func:`settle_round`: finalize payable jobs in batches (the settler owns idempotency).

Each function is idempotent: offers and leases are keyed by job id and guarded in
:mod:`meshcompute.market.state`, counters are keyed by the lease they count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcompute.core.dashboard import job_states, verifier_backlog
from meshcompute.core.job import JobRecord
from meshcompute.core.lease import (
    QueuedEntry,
    committed_by_holder,
    heartbeating,
    match_candidates,
    offer_lapsed,
    plan_match,
)
from meshcompute.core.spec import JobSpec, client_group
from meshcompute.errors import BadInput, ChainError, NotFound
from meshcompute.market.runtime import ChainStanding, MarketRuntime
from meshcompute.market.state import WorkerInfo

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
def index_round(rt: MarketRuntime, *, now: float | None = None) -> dict[str, Any]:
    report = rt.indexer.sync()
    sample_minute(rt, time.time() if now is None else now)
    result = {
        "from_block": report.from_block,
        "to_block": report.to_block,
        "new_events": len(report.new_events),
        "reorged_blocks": report.reorged_blocks,
    }
    if report.new_events or report.reorged_blocks:
        log.info("indexed", extra={"fields": result})
    return result


def sample_minute(rt: MarketRuntime, now: float) -> bool:
    """Once a minute (the first index round of it), what the market looks like: workers
    online, open jobs, jobs awaiting a verdict (the dashboard charts them over time)."""
    minute = int(now) // 60
    if rt.state.has_sample(minute):
        return False
    online = sum(1 for w in rt.state.workers()
                 if heartbeating(w.last_seen, now, rt.heartbeat_timeout_s))
    jobs = job_states(rt.indexer.history_tallies())
    return rt.state.record_sample(minute, {
        "workers_online": online,
        "open_jobs": jobs["open"],
        "backlog": verifier_backlog(jobs["by_state"]),
    })


# ---------------------------------------------------------------------- match
def match_round(rt: MarketRuntime, *, now: float | None = None) -> MatchReport:
    """Offer queued jobs to workers: read what the round needs (the chain's open jobs, the
    market's leases, offers, queue and workers), decide in the core
    (:func:`meshcompute.core.lease.plan_match`: end the leases whose job moved on, cut the
    queue into lease batches, match each batch as one demand) and write it all at once, one
    offer per job carrying the batch id."""
    now = time.time() if now is None else now
    chain_now = rt.chain_now()
    records = rt.indexer.open_job_records()
    leases = rt.state.all_leases()
    # a leased job that ended (refunded, paid) is no longer open: read its record too
    records |= rt.indexer.records_of([lease.job_id for lease in leases
                                      if lease.job_id not in records])
    offers = rt.state.all_offers()
    held = rt.state.held_for_tickets(chain_now)
    candidates = [job_id for job_id in match_candidates(records, leases, offers, chain_now)
                  if job_id not in held]
    queue, owners = _read_queue(rt, records, candidates, now)
    plan = plan_match(now=now, records=records, leases=leases, offers=offers, queue=queue,
                      group_owners=owners, workers=_read_workers(rt, now),
                      max_batch=rt.settings.max_lease_batch)
    ended, made = rt.state.write_match(plan, now=now, ttl_s=rt.settings.offer_ttl_s)
    report = MatchReport(
        queued=plan.queued,
        workers=plan.workers,
        offered=[(o.job_id, o.worker) for o, m in zip(plan.offers, made, strict=True) if m],
        spec_problems=plan.problems,
        finished_leases=[lease.job_id for lease, gone in zip(plan.ending, ended, strict=True)
                         if gone],
    )
    for job_id, problem in plan.problem_changes.items():
        if problem is not None:
            log.warning("spec problem", extra={"fields": {"job_id": job_id, "problem": problem}})
    for address, error in plan.bad_workers:
        log.warning("bad worker entry", extra={"fields": {"worker": address, "error": error}})
    if report.offered:
        log.info("matched", extra={"fields": {"offers": len(report.offered),
                                              "batches": plan.batches,
                                              "queued": report.queued,
                                              "workers": report.workers}})
    return report


def _read_queue(rt: MarketRuntime, records: Mapping[int, JobRecord], job_ids: list[int],
                now: float) -> tuple[list[QueuedEntry], dict[str, str]]:
    """The queued ``job_ids`` with their specs and what the market recorded about them, and
    the owners of the groups their shards would join."""
    facts = rt.state.queue_facts(job_ids, now)
    specs = {job_id: _parse_spec(rt, records[job_id]) for job_id in job_ids}
    owners = rt.state.group_owners(
        client_group(records[job_id].client, spec.group) for job_id, (spec, _) in specs.items()
        if spec is not None and spec.group is not None and facts[job_id].group is None
    )
    queue = [
        QueuedEntry(
            job_id=job_id,
            record=records[job_id],
            spec=specs[job_id][0],
            spec_error=specs[job_id][1],
            first_seen=facts[job_id].first_seen,
            failures=facts[job_id].failures,
            excluded=facts[job_id].excluded,
            known_problem=facts[job_id].spec_problem,
            in_group=facts[job_id].group is not None,
        )
        for job_id in job_ids
    ]
    return queue, owners


def _parse_spec(rt: MarketRuntime, record: JobRecord) -> tuple[JobSpec | None, str | None]:
    """The job's spec, or why there is none."""
    sha = record.spec_hash.hex()
    try:
        return rt.spec(sha), None
    except NotFound:
        return None, f"spec blob {sha} is not in the market's blob store"
    except BadInput as exc:
        return None, str(exc)


def _read_workers(rt: MarketRuntime, now: float) -> list[tuple[WorkerInfo, ChainStanding]]:
    """Registered, heartbeating workers with their standing on chain (a worker whose stake
    cannot be read is left out of this round)."""
    out = []
    for worker in rt.state.workers():
        if not heartbeating(worker.last_seen, now, rt.heartbeat_timeout_s):
            continue
        try:
            standing = rt.standing(worker.address)
        except ChainError as exc:
            log.warning("stake unreadable", extra={"fields": {"worker": worker.address,
                                                              "error": str(exc)}})
            continue
        out.append((worker, standing))
    return out


# ---------------------------------------------------------------------- expire
def expire_round(rt: MarketRuntime, *, now: float | None = None) -> ExpireReport:
    """Leases past their expiry go back to the queue, their holder excluded for a lease
    period; offers nobody collected go back too. Each expiry is counted once."""
    now = time.time() if now is None else now
    chain_now = rt.chain_now()
    report = ExpireReport()
    for lease in rt.state.expired_leases(chain_now):
        record = rt.indexer.job_record(lease.job_id)
        if record is not None and committed_by_holder(record, lease.worker):
            rt.state.end_lease(lease)
            continue
        if rt.state.end_lease(lease):
            rt.state.exclude(lease.job_id, lease.worker, now + rt.settings.lease_s)
            rt.state.incr_metric("lease_expiries", key=lease.key)
            report.expired_leases.append(lease.job_id)
    for offer in rt.state.all_offers():
        if offer_lapsed(offer.expires_at, now) and rt.state.drop_offer(offer.job_id,
                                                                       offer.worker):
            rt.state.exclude(offer.job_id, offer.worker, now + rt.settings.offer_ttl_s)
            rt.state.incr_metric("offer_expiries", key=f"{offer.job_id}:{offer.worker}:"
                                                       f"{offer.offered_at}")
            report.expired_offers.append(offer.job_id)
    if report.expired_leases or report.expired_offers:
        log.info("expired", extra={"fields": {"leases": report.expired_leases,
                                              "offers": report.expired_offers}})
    return report


# ---------------------------------------------------------------------- settle
def settle_round(rt: MarketRuntime, *, max_batch: int | None = None) -> dict[str, Any]:
    from meshcompute.market.settler import Settler

    batch = rt.settings.settle_max_batch if max_batch is None else max_batch
    settler = Settler(rt.settler, rt.redis, max_batch=batch,
                      max_batches=rt.settings.settle_max_batches)
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
