"""Blob garbage collection: the store keeps what a job may still need, and nothing forever.

Every blob has a keep-until time (``MarketState.keep_blobs``):

- an upload is kept ``blob_grace_s`` (a day) from its last upload, time to post its job;
- each round, every blob an open job needs (its spec, program and inputs (and a training
  job's initial state, checkpoints, loss curve and step records, and the step states of one
  that may be or is appealed, and the finished work a worker handed back), the output its
  worker submitted or committed, the evidence its verdicts name), and every blob of a job
  that ended since the last round, is kept ``blob_retention_s`` (a week) from now; so once
  a job ends its blobs stay at least that long: long enough to download an output, to
  ``mesh verify`` it, to judge an appeal;
- a file the store holds that has no time yet (stored before collection existed, or a group's
  assembled output) gets the grace period when a round first sees it.

Blobs past their time are deleted, each only if its time is still past at that moment (a blob
uploaded again meanwhile stays). A group's assembled output is rebuilt on its next download.

The same round prunes the index and the market's own keys (:func:`prune_round`): a job that
ended more than ``job_retention_s`` ago (and whose events are deeper than any reorg the
indexer handles) is forgotten, with what the market kept about it (failures, results, a
leftover lease or offer, its group once no shard is left), and so is a worker registration
not seen for that long. It works in batches of :data:`PRUNE_BATCH` jobs (or events about no
job), at most :data:`PRUNE_BATCHES` of each per round, so one round never holds Redis long; a
backlog (a flood of spam jobs) drains over the next rounds. The market's own keys of a job go
before the index forgets it, so a crash between the two leaves nothing unreachable. The chain
keeps every event; the market keeps what settlement, reorgs and the metrics' all-history counts
need.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from meshcompute.core.job import FAILURE_VERDICT_STATES, VERDICT_STATES, ZERO_HASH, JobState
from meshcompute.core.spec import is_sha256_hex
from meshcompute.core.training import (
    MANIFEST_KIND,
    MAX_MANIFEST_BYTES,
    MAX_STEPS_BYTES,
    STEPS_KIND,
)
from meshcompute.market.runtime import MarketRuntime

log = logging.getLogger("market.gc")

_BATCH = 1000
PRUNE_BATCH = 500
"""Jobs (or events about no job) one prune step forgets: one Redis transaction."""
PRUNE_BATCHES = 20
"""Prune steps of each kind one round runs at most (10,000 jobs a round by default)."""
_VERDICT_STATES = VERDICT_STATES | {JobState.VOID_PROPOSED}
_EVIDENCE_EVENTS = ("AuditResolved", "AuditVoided", "AppealResolved", "AppealContested",
                    "AppealUpheld", "VoidProposed")
#: A training job in these states may have its step states uploaded for an appeal.
_APPEAL_STATES = FAILURE_VERDICT_STATES


def needed_blobs(rt: MarketRuntime, *, ended_since: float | None = None) -> set[str]:
    """The blobs the open jobs need, and those of jobs that ended since ``ended_since`` (a
    job posted and ended between two rounds still gets its full retention)."""
    needed: set[str] = set()
    records = rt.indexer.open_job_records()
    if ended_since is not None:
        records |= rt.indexer.ended_since(ended_since)
    results = rt.state.results(list(records))
    for job_id, record in records.items():
        spec_sha = record.spec_hash.hex()
        needed.add(spec_sha)
        spec = rt.spec_or_none(spec_sha)
        if spec is not None:
            needed |= {spec.program, spec.inputs}
            if spec.state is not None:
                needed.add(spec.state)
        outputs = set()
        if record.result_hash != ZERO_HASH:
            outputs.add(record.result_hash.hex())
        submitted = results.get(job_id)
        if submitted:
            outputs.add(submitted)
        needed |= outputs
        if spec is not None and spec.is_training:
            appealed = record.state in _APPEAL_STATES  # once it ends, the verdict's evidence
            # names what the appeal judged; the states themselves keep the upload's grace
            for output in outputs:
                needed |= _manifest_blobs(rt, output, with_step_states=appealed)
            for partial in rt.state.partials(job_id).values():  # handed back: work to pay
                needed.add(str(partial.get("manifest_sha256")))
                needed |= _manifest_blobs(rt, str(partial.get("manifest_sha256")),
                                          with_step_states=False)
        if record.state in _VERDICT_STATES:
            for event in rt.indexer.events(job_id=job_id):
                evidence = event.args.get("evidenceHash") if event.name in _EVIDENCE_EVENTS \
                    else None
                if isinstance(evidence, bytes | bytearray) and bytes(evidence) != ZERO_HASH:
                    needed.add(bytes(evidence).hex())
    return needed


def _json_blob(rt: MarketRuntime, sha: str, limit: int, kind: str) -> dict[str, Any] | None:
    if not is_sha256_hex(sha) or not rt.blobs.exists(sha) or rt.blobs.size_or_zero(sha) > limit:
        return None  # a worker's junk "manifest" is not read whole every round
    try:
        doc = json.loads(rt.blobs.read(sha))
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return doc if isinstance(doc, dict) and doc.get("kind") == kind else None


def _manifest_blobs(rt: MarketRuntime, sha: str, *, with_step_states: bool) -> set[str]:
    """The checkpoints, loss curve and step records a training result's manifest names (empty
    when the manifest is not stored or is not one: the verifier then finds the result
    unreadable); ``with_step_states``: also the states the step records name (uploaded by a
    worker for its appeal)."""
    doc = _json_blob(rt, sha, MAX_MANIFEST_BYTES, MANIFEST_KIND)
    if doc is None:
        return set()
    records = [n for n in doc.get("steps") or [] if isinstance(n, str)]
    named = [*(doc.get("checkpoints") or []), doc.get("losses"), *records]
    if with_step_states:
        for record in records:
            steps = _json_blob(rt, record, MAX_STEPS_BYTES, STEPS_KIND)
            named += (steps or {}).get("states") or []
    return {n for n in named if is_sha256_hex(n)}


def collect_round(rt: MarketRuntime, *, now: float | None = None) -> dict[str, Any]:
    """One collection: keep what open jobs need, give untracked files the grace period,
    delete what is past its time. Returns counts."""
    now = time.time() if now is None else now
    settings = rt.settings
    last = rt.redis.get(f"{rt.state.prefix}gc-last-round")
    # jobs that ended since the last round (or, on a first round, within the retention)
    since = float(last) if last is not None else now - settings.blob_retention_s
    needed = needed_blobs(rt, ended_since=min(since, now) - 60)
    rt.state.keep_blobs(needed, now + settings.blob_retention_s)
    rt.redis.set(f"{rt.state.prefix}gc-last-round", now)
    adopted = 0
    batch: list[str] = []
    for name in rt.blobs.names():
        batch.append(name)
        if len(batch) >= _BATCH:
            adopted += _adopt(rt, batch, now)
            batch = []
    adopted += _adopt(rt, batch, now)
    deleted = freed = 0
    while True:
        expired = rt.state.expired_blobs(now, _BATCH)
        if not expired:
            break
        for sha in expired:
            if rt.state.release_blob(sha, now):
                size = rt.blobs.size_or_zero(sha)
                if rt.blobs.delete(sha):
                    deleted += 1
                    freed += size
        if len(expired) < _BATCH:
            break
    report = {"needed": len(needed), "adopted": adopted, "deleted": deleted,
              "freed_bytes": freed, **prune_round(rt, now=now)}
    if deleted or adopted or report["jobs_pruned"] or report["workers_pruned"] \
            or report["events_pruned"]:
        rt.state.incr_metric("blobs_deleted", deleted)
        log.info("blobs collected", extra={"fields": report})
    return report


def prune_round(rt: MarketRuntime, *, now: float, batch: int = PRUNE_BATCH,
                batches: int = PRUNE_BATCHES) -> dict[str, int]:
    """Forget the jobs that ended more than ``job_retention_s`` ago (the market's keys of
    them, then their indexed events and record), the deep events about no job, and the
    workers not seen for that long: at most ``batches`` steps of ``batch`` jobs (and as many
    of events) per round. Returns counts; ``prune_backlog`` is 1 when a round stopped at its
    bound with more to forget (the next round goes on)."""
    before = now - rt.settings.job_retention_s
    jobs = groups = events = 0
    backlog = False

    def forget_first(job_ids: list[int]) -> None:
        nonlocal groups
        groups += rt.state.forget_jobs(job_ids)

    for step in range(batches):
        forgotten = rt.indexer.prune(before, limit=batch, forget_first=forget_first)
        jobs += len(forgotten)
        if len(forgotten) < batch:
            break
        backlog = step == batches - 1
    for step in range(batches):
        dropped = rt.indexer.prune_unrelated_events(limit=batch)
        events += dropped
        if dropped < batch:
            break
        backlog = backlog or step == batches - 1
    workers = rt.state.forget_workers(before)
    return {"jobs_pruned": jobs, "groups_pruned": groups, "events_pruned": events,
            "workers_pruned": len(workers), "prune_backlog": int(backlog)}


def _adopt(rt: MarketRuntime, names: list[str], now: float) -> int:
    untracked = [sha for sha, tracked in zip(names, rt.state.tracked_blobs(names), strict=True)
                 if not tracked]
    rt.state.keep_blobs(untracked, now + rt.settings.blob_grace_s)
    return len(untracked)
