"""The market's operations, one per endpoint, as plain functions over a :class:`MarketRuntime`:
reads of jobs and groups, storing blobs and specs, the worker registry, taking, renewing and
ending leases, and results. The lease rules they apply live in :mod:`meshcompute.core.lease`.

Routes in :mod:`meshcompute.market.api.routes` parse and authenticate, then call one of these.
Errors are the project's error tree; the API maps them to HTTP statuses (BadInput 422 or a
narrower 400/413, AuthError 401, Forbidden 403, NotFound 404, Conflict 409).
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.core.job import ZERO_ADDRESS, ZERO_HASH, JobRecord, JobState
from meshcompute.core.lease import (
    given_up,
    heartbeating,
    leasable,
    lease_expired,
    lease_unit,
    offer_lapsed,
    reserved_for,
)
from meshcompute.core.spec import JobSpec, client_group
from meshcompute.errors import AuthError, BadInput, ChainError, Conflict, NotFound
from meshcompute.market import quotas
from meshcompute.market.blobs import BlobTooLarge
from meshcompute.market.runtime import MarketRuntime
from meshcompute.market.state import LeaseInfo, OfferInfo, WorkerInfo
from meshcompute.wire.bundle import BundleTooLarge, bundle_header, bundle_size, decode_bundle
from meshcompute.wire.market_client import Lease, ticket_from_json, ticket_to_json


class Forbidden(AuthError):
    """Authenticated, but not allowed (no stake, not registered, not the lease holder): 403."""


class JobPruned(NotFound):
    """The job ended longer ago than ``job_retention_s`` and the market forgot it: 410."""


# ---------------------------------------------------------------------- public reads
def health(rt: MarketRuntime) -> dict[str, Any]:
    rt.redis.ping()
    return {
        "status": "ok",
        "chain_id": rt.chain_id,
        "head_block": int(rt.chain.w3.eth.block_number),
        "indexed_block": int(rt.indexer.indexed_block),
        "redis": "ok",
    }


def info(rt: MarketRuntime) -> dict[str, Any]:
    return {
        "chain_id": rt.chain_id,
        "addresses": dict(rt.chain.deployment.addresses),
        "assigner": rt.assigner.address,
        "max_blob_bytes": rt.blobs.max_bytes,
        "lease_s": rt.settings.lease_s,
        "max_bundle_bytes": rt.settings.max_bundle_bytes,
        "max_bundle_blobs": rt.settings.max_bundle_blobs,
        "min_job_reward_wei": str(rt.settings.min_job_reward_wei),
    }


def job_record(rt: MarketRuntime, job_id: int) -> JobRecord:
    record = rt.indexer.job_record(job_id)
    if record is None:
        retention = duration_text(rt.settings.job_retention_s)
        if rt.indexer.was_pruned(job_id):
            raise JobPruned(
                f"job {job_id} ended more than {retention} ago and was pruned: the market "
                f"keeps an ended job {retention} (job_retention_s). The chain's events remain "
                "its record (`mesh job status`, `mesh verify` and `mesh earnings` read them)")
        raise NotFound(f"job {job_id} is not known: not posted yet, or not indexed yet (the "
                       f"market forgets a job {retention} after it ended, and then answers "
                       "410)")
    return record


def duration_text(seconds: float) -> str:
    """``604800`` -> ``"7 days"``, ``7200`` -> ``"2 hours"``, ``90`` -> ``"90 seconds"``."""
    whole = int(seconds)
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"


def job_view(rt: MarketRuntime, job_id: int) -> dict[str, Any]:
    record = job_record(rt, job_id)
    spec_sha = record.spec_hash.hex()
    spec = rt.spec_or_none(spec_sha)
    # the committed output only: a result submitted to the market but not yet committed on
    # chain stays unnamed, so the job's client cannot fetch it and cancel the job unpaid
    output = record.result_hash.hex() if record.result_hash != ZERO_HASH else None
    audited = any(
        bool(event.args.get("audited"))
        for event in rt.indexer.events(job_id=job_id, name="AuditDrawn")
    )
    lease = rt.state.lease(job_id)
    failures = rt.state.failures(job_id)
    partials = rt.state.partials(job_id)
    return {
        "job_id": job_id,
        "state": record.state.name.lower(),
        "spec_sha256": spec_sha,
        "spec": spec.to_json() if spec else None,
        "client": record.client,
        "worker": record.worker if record.worker != ZERO_ADDRESS else None,
        "lease_holder": lease.worker if lease is not None else None,
        "lease_expiry": lease.expiry if lease is not None else None,
        "output_sha256": output,
        "failure": rt.state.failure(job_id),
        "failures": [{"worker": worker, "reason": failures[worker]}
                     for worker in sorted(failures)],
        # a reserved job can go to its worker only: once that worker failed it, nobody will
        "given_up": given_up(len(failures)) or (reserved_for(record) or "").lower() in {
            w.lower() for w in failures},
        "partials": [{"worker": worker, **partials[worker]} for worker in sorted(partials)],
        "audited": audited,
        "group": client_group(record.client, spec.group) if spec and spec.group else None,
    }


def group_view(rt: MarketRuntime, group: str) -> dict[str, Any]:
    shards = rt.state.group(group)
    if not shards:
        raise NotFound(f"group {group} is not known: no posted job's spec names it, or all "
                       "its shards ended more than "
                       f"{duration_text(rt.settings.job_retention_s)} ago and were pruned")
    ordered = [shards[i] for i in sorted(shards)]
    states = [job_record(rt, job_id).state for job_id in ordered]
    expected = _expected_shards(rt, ordered)
    complete = len(ordered) == expected and all(s == JobState.FINALIZED for s in states)
    return {
        "group": group,
        "job_ids": ordered,
        "states": [s.name.lower() for s in states],
        "complete": complete,
    }


def group_output(rt: MarketRuntime, group: str, requester: str) -> str:
    """The blob holding the group's assembled output, for its owner only (Forbidden
    otherwise): assembled once, when every shard is final, then stored and served from the
    store. Refused (BlobTooLarge) when its shards' outputs together pass ``max_blob_bytes``:
    the owner then fetches them shard by shard."""
    owner = rt.state.group_owner(group)
    if owner is None:
        raise NotFound(f"group {group} is not known (no posted job's spec names it)")
    if owner != requester.lower():
        raise Forbidden(f"group {group} belongs to {owner}; only its client may download its "
                        "output (each shard's output blob is public by its hash)")
    cached = rt.state.group_output(group)
    if cached is not None and rt.blobs.exists(cached):
        return cached
    # one assembly at a time per group: many downloads at once must not each build it
    lock = f"{rt.state.prefix}group-assembling:{group}"
    if not rt.redis.set(lock, 1, nx=True, ex=300):
        raise Conflict(f"group {group}'s output is being assembled; ask again in a moment")
    try:
        data = _assemble(rt, group)
        rt.state.keep_blobs([hashlib.sha256(data).hexdigest()],
                            time.time() + rt.settings.blob_retention_s)
        sha, _ = rt.blobs.put_bytes(data)
        rt.state.set_group_output(group, sha)
    finally:
        rt.redis.delete(lock)
    return sha


def _assemble(rt: MarketRuntime, group: str) -> bytes:
    """Each shard's ``out.i`` concatenated along dimension 0, in shard order."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load, save

    view = group_view(rt, group)
    if not view["complete"]:
        open_ = [
            f"{job_id} ({state})"
            for job_id, state in zip(view["job_ids"], view["states"], strict=True)
            if state != "finalized"
        ]
        expected = _expected_shards(rt, view["job_ids"])
        missing = expected - len(view["job_ids"])
        more = f"; {missing} shard(s) not posted yet" if missing > 0 else ""
        raise Conflict(f"group {group} is not final: open shards {', '.join(open_)}{more}")
    shas = [job_record(rt, job_id).result_hash.hex() for job_id in view["job_ids"]]
    total = 0
    for job_id, sha in zip(view["job_ids"], shas, strict=True):
        try:
            total += rt.blobs.size(sha)
        except NotFound:
            raise Conflict(f"output blob {sha} of job {job_id} is not in the store") from None
    if total > rt.blobs.max_bytes:
        raise BlobTooLarge(f"group {group}'s outputs hold {total} bytes, over the limit of "
                           f"{rt.blobs.max_bytes} bytes for one blob; fetch them shard by "
                           "shard (GET /jobs/{id} names each output blob)")
    parts: list[dict[str, Any]] = []
    for job_id, sha in zip(view["job_ids"], shas, strict=True):
        try:
            parts.append(load(rt.blobs.read(sha)))
        except SafetensorError as exc:
            raise BadInput(f"output blob {sha} of job {job_id} is not safetensors: {exc}") \
                from None
    names = sorted(parts[0], key=lambda n: (len(n), n))
    for job_id, part in zip(view["job_ids"], parts, strict=True):
        if sorted(part) != sorted(names):
            raise BadInput(f"output of job {job_id} names tensors {sorted(part)}, "
                           f"shard 0 names {sorted(names)}")
    merged = {name: np.concatenate([p[name] for p in parts], axis=0) for name in names}
    return save(merged)


def _expected_shards(rt: MarketRuntime, job_ids: Sequence[int]) -> int:
    spec = rt.spec_or_none(job_record(rt, job_ids[0]).spec_hash.hex()) if job_ids else None
    return spec.shards if spec else len(job_ids)


# ---------------------------------------------------------------------- blobs and specs
def store_spec(rt: MarketRuntime, spec: JobSpec, address: str, now: float) -> str:
    """Store ``spec`` for ``address`` (within its upload quota); its blobs must exist."""
    return store_specs(rt, [spec], address, now)[0]


def store_specs(rt: MarketRuntime, specs: Sequence[JobSpec], address: str,
                now: float) -> list[str]:
    """:func:`store_spec` for many specs, all or none: every spec's blobs are checked before
    any spec is stored (the error names the first bad spec's index), and the specs' bytes
    against ``address``'s upload quota (QuotaExceeded)."""
    _check_bundle_count(rt, len(specs), "specs")
    for index, spec in enumerate(specs):
        for name in ("program", "inputs", "state"):
            sha = getattr(spec, name)
            if sha is not None and not rt.blobs.exists(sha):
                raise BadInput(
                    f"spec {index}: {name} blob {sha} is not in the store; upload it first"
                )
    raw = [spec.canonical_bytes() for spec in specs]
    admitted = quotas.admit(rt, address, sum(map(len, raw)), now=now)
    with quotas.settled(rt, admitted, now=now) as settle:
        stored = rt.blobs.put_many(raw)
        settle(sum(map(len, raw)))
    # kept the grace period for their job to be posted (not the blobs they name: a spec of
    # a few hundred bytes must not keep a large blob alive)
    rt.state.keep_blobs([sha for sha, _ in stored], now + rt.settings.blob_grace_s)
    return [sha for sha, _ in stored]


def store_bundle(rt: MarketRuntime, data: bytes, address: str,
                 now: float) -> list[dict[str, Any]]:
    """Store every blob of the bundle ``data`` (:mod:`meshcompute.wire.bundle`) for
    ``address``; nothing is stored unless the whole bundle decodes, every blob hashes to its
    name and fits the per-blob limit, and the blobs fit ``address``'s upload quota
    (QuotaExceeded; a blob stored already counts too: uploading it keeps it longer). Returns ``{"sha256", "size", "created"}`` per blob, in bundle
    order."""
    blobs = decode_bundle(
        data, max_blobs=rt.settings.max_bundle_blobs, max_blob_bytes=rt.blobs.max_bytes
    )
    if not blobs:
        raise BadInput("a bundle must carry at least one blob")
    # every blob counts, stored already or not: uploading one again keeps it longer
    size = sum({sha: len(blob) for sha, blob in blobs}.values())
    admitted = quotas.admit(rt, address, size, now=now)
    # put_many checks the free space for the whole bundle (507) before writing any of it
    with quotas.settled(rt, admitted, now=now) as settle:
        stored = rt.blobs.put_many([blob for _, blob in blobs])
        settle(size)
    rt.state.keep_blobs([sha for sha, _ in blobs], now + rt.settings.blob_grace_s)
    return [{"sha256": sha, "size": len(blob), "created": created}
            for (sha, blob), (_, created) in zip(blobs, stored, strict=True)]


def check_servable(rt: MarketRuntime, hashes: Sequence[str]) -> None:
    """NotFound for a blob submitted as a job's output but not yet committed on chain: until
    the worker's commit is mined its client could fetch the output (its hash is in the
    pending commit transaction) and cancel the job unpaid."""
    pending = rt.state.pending_outputs(list(dict.fromkeys(hashes)))
    if not pending:
        return
    records = rt.indexer.records_of(sorted(set(pending.values())))
    for sha, job_id in pending.items():
        record = records.get(job_id)
        if record is not None and record.result_hash.hex() == sha:
            continue
        try:  # the index may lag the chain by a round: ask the chain itself
            committed = rt.contracts.job(job_id).result_hash.hex() == sha
        except ChainError:
            committed = False
        if not committed:
            raise NotFound(f"blob {sha} is the output of job {job_id}, not committed on chain "
                           "yet; it is served once the commit is mined")


def bundle_entries(rt: MarketRuntime, hashes: Sequence[str]) -> list[tuple[str, int]]:
    """``(sha256, size)`` of each requested blob, in order, for a ``POST /blobs/fetch``
    answer: NotFound names the first missing blob, BundleTooLarge (413) an answer that would
    exceed ``max_bundle_bytes``."""
    _check_bundle_count(rt, len(hashes), "blobs")
    check_servable(rt, hashes)
    entries = [(sha, rt.blobs.size(sha)) for sha in hashes]
    total = bundle_size(entries)
    limit = rt.settings.max_bundle_bytes
    if total > limit:
        raise BundleTooLarge(
            f"the {len(entries)} blobs asked for make a bundle of {total} bytes, over the "
            f"limit of {limit} bytes; ask for fewer at a time"
        )
    return entries


def bundle_chunks(rt: MarketRuntime, entries: Sequence[tuple[str, int]]) -> Iterator[bytes]:
    """The bundle of ``entries`` (from :func:`bundle_entries`), streamed from the store."""
    yield bundle_header(entries)
    for sha, _size in entries:
        yield from rt.blobs.iter_chunks(sha)


def _check_bundle_count(rt: MarketRuntime, count: int, what: str) -> None:
    limit = rt.settings.max_bundle_blobs
    if count > limit:
        raise BadInput(f"{count} {what} in one request, more than the limit of {limit}")


# ---------------------------------------------------------------------- workers
def register_worker(
    rt: MarketRuntime,
    address: str,
    *,
    hardware: Mapping[str, Any],
    price_wei: int,
    slots: int,
    operator: str | None,
    now: float,
) -> WorkerInfo:
    """Register (or update) ``address``; its ``operator`` label is shown to others as
    :func:`printable` text."""
    standing = rt.standing(address, fresh=True)  # a worker that just staked may register
    if standing.total_stake <= 0:
        raise Forbidden(
            f"{address} has no stake on chain; stake credits in the StakeManager "
            f"({rt.chain.deployment.address('StakeManager')}) before registering"
        )
    return rt.state.save_worker(
        address,
        operator=printable(operator) if operator else address,
        hardware=hardware,
        price_wei=price_wei,
        slots=slots,
        now=now,
    )


def registered(rt: MarketRuntime, address: str) -> WorkerInfo:
    worker = rt.state.worker(address)
    if worker is None:
        raise Forbidden(f"{address} is not a registered worker (POST /workers first)")
    return worker


def heartbeat(rt: MarketRuntime, address: str, running: Sequence[int], now: float) -> int:
    registered(rt, address)
    rt.state.touch_worker(address, now)
    return rt.settings.lease_s


#: At most this many distinct (device, memory, accelerator memory, price) rows in a capacity
#: read; a fleet with more says ``truncated`` (the rows kept are the most common ones).
CAPACITY_MAX_ROWS = 100
#: A capacity read is reused for this many seconds (it costs one read of every worker).
CAPACITY_CACHE_S = 2.0
# By runtime id, with a weak reference to tell a reused id apart (a runtime is not hashable).
_capacity_cache: dict[int, tuple[weakref.ref[MarketRuntime], float, dict[str, Any]]] = {}


def worker_capacity(rt: MarketRuntime, now: float) -> dict[str, Any]:
    """What the live workers (registered and heartbeating, as matching picks them) offer, in
    aggregate: ``live_workers`` and ``rows`` of distinct ``(device, memory_mb, gpu_memory_mb,
    price_wei)`` with a ``workers`` count, most common first, at most
    :data:`CAPACITY_MAX_ROWS` (``truncated`` when more). No addresses, operators or times.
    Free stake and slots are left out: they change every round (and reading stake costs a
    chain call per worker). Reused for :data:`CAPACITY_CACHE_S` seconds."""
    cached = _capacity_cache.get(id(rt))
    if cached is not None and cached[0]() is rt and cached[1] <= now < cached[1] + CAPACITY_CACHE_S:
        return cached[2]
    counts: dict[tuple[str, int, int, int], int] = {}
    live = 0
    for worker in rt.state.workers():
        if not heartbeating(worker.last_seen, now, rt.heartbeat_timeout_s):
            continue
        live += 1
        key = (worker.device.lower(), worker.memory_mb, worker.gpu_memory_mb, worker.price_wei)
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    view = {
        "live_workers": live,
        "rows": [{"device": device, "memory_mb": memory, "gpu_memory_mb": gpu_memory,
                  "price_wei": str(price), "workers": count}
                 for (device, memory, gpu_memory, price), count in ordered[:CAPACITY_MAX_ROWS]],
        "truncated": len(ordered) > CAPACITY_MAX_ROWS,
    }
    for key in [k for k, (ref, _, _) in _capacity_cache.items() if ref() is None]:
        del _capacity_cache[key]
    _capacity_cache[id(rt)] = (weakref.ref(rt), now, view)
    return view


# ---------------------------------------------------------------------- leases
def take_leases(rt: MarketRuntime, address: str, max_jobs: int, now: float, *,
                reserved_only: bool = False) -> list[Lease]:
    """Turn the offers waiting for ``address`` into signed leases, for up to ``max_jobs`` free
    slots of the worker.

    Offers of one lease batch (same batch id: same client and program, see
    :mod:`meshcompute.core.batching`) fill one slot and become one ``Lease`` per job, all
    carrying the same multi-job ticket over the batch's jobs; a single offer is a batch of one.
    Offers that lapsed, or whose job can no longer be taken on chain or has no readable spec,
    are dropped (the rest of their batch is still leased). ``reserved_only``: only the jobs
    reserved on chain for this worker (the others stay offered until their offer lapses)."""
    worker = registered(rt, address)
    rt.state.touch_worker(address, now)
    chain_now = rt.chain_now()
    units: dict[str, list[OfferInfo]] = {}
    for offer in rt.state.offers_for(worker.address):
        units.setdefault(lease_unit(offer), []).append(offer)
    leases: list[Lease] = []
    taken = 0
    for offers in units.values():
        if taken >= max_jobs:
            break
        usable: list[tuple[OfferInfo, JobRecord, JobSpec]] = []
        for offer in offers:
            if offer_lapsed(offer.expires_at, now):
                continue  # the expiry task takes it back
            record = rt.indexer.job_record(offer.job_id)
            spec = rt.spec_or_none(record.spec_hash.hex()) if record is not None else None
            if record is None or spec is None or not leasable(record, worker.address,
                                                              chain_now):
                rt.state.drop_offer(offer.job_id, worker.address)
                continue
            if reserved_only and (reserved_for(record) or "").lower() != worker.address.lower():
                continue
            usable.append((offer, record, spec))
        if not usable:
            continue
        batch = offers[0].batch if len(usable) > 1 else ""
        infos = _sign_leases(rt, worker.address, [(o.job_id, r) for o, r, _ in usable],
                             chain_now, now, batch=batch)
        if not rt.state.offers_to_leases([o for o, _, _ in usable], infos):
            continue
        rt.state.mark_assigned(worker.address, now)
        taken += 1
        for info_, (_, record, spec) in zip(infos, usable, strict=True):
            leases.append(_lease_of(info_, spec, spec.sha256, record))
    return leases


def _ticket_audit_bps(rt: MarketRuntime, worker: str, records: Sequence[JobRecord]) -> int:
    """The audit rate of one ticket giving ``worker`` these jobs: the largest any of them
    needs. For each, the deterrence rate of :mod:`meshcompute.core.audit_rate` for the
    worker's record and stake, never below the job's own rate or the deployment's floor (with
    ``audit_deterrence`` off: just those two)."""
    from meshcompute.core.audit_rate import audit_bps as audit_rate

    floor = int(rt.chain_config["min_audit_bps"])
    least = [max(floor, record.audit_bps) for record in records]
    if not rt.settings.audit_deterrence:
        return max(least)
    standing = rt.standing(worker)
    return max(
        audit_rate(
            reward=record.reward,
            collateral=record.collateral,
            free_stake=standing.free_stake,
            completed=standing.completed,
            audits_passed=standing.audits_passed,
            slashed=standing.slashed,
            min_bps=minimum,
        )
        for record, minimum in zip(records, least, strict=True)
    )


def _sign_leases(
    rt: MarketRuntime, worker: str, jobs: Sequence[tuple[int, JobRecord]], chain_now: int,
    now: float, *, batch: str = "",
) -> list[LeaseInfo]:
    """One ticket over all ``jobs`` (in that order), as one LeaseInfo per job. The ticket's
    audit rate is the largest any of the jobs needs (the contract applies it to each)."""
    bps = _ticket_audit_bps(rt, worker, [record for _, record in jobs])
    expiry = chain_now + rt.settings.lease_s
    ticket = AssignTicket(worker, tuple(job_id for job_id, _ in jobs), int(bps), expiry)
    signature = sign_ticket(
        ticket, rt.assigner, chain_id=rt.chain_id,
        job_market=rt.chain.deployment.address("JobMarket"),
    )
    ticket_json = ticket_to_json(ticket)
    return [
        LeaseInfo(
            job_id=job_id,
            worker=worker,
            collateral=record.collateral,
            expiry=expiry,
            audit_bps=int(bps),
            ticket=ticket_json,
            signature="0x" + signature.hex(),
            leased_at=now,
            batch=batch,
        )
        for job_id, record in jobs
    ]


def _lease_of(info_: LeaseInfo, spec: JobSpec, spec_sha: str, record: JobRecord) -> Lease:
    return Lease(
        job_id=info_.job_id,
        spec=spec,
        spec_sha256=spec_sha,
        record=record,
        ticket=ticket_from_json(info_.ticket),
        signature=bytes.fromhex(info_.signature[2:]),
        lease_expiry=info_.expiry,
    )


def held_lease(rt: MarketRuntime, address: str, job_id: int) -> LeaseInfo:
    record = job_record(rt, job_id)  # 404 for an unknown job
    lease = rt.state.lease(job_id)
    if lease is None or lease.worker != address:
        raise Forbidden(f"{address} holds no lease on job {job_id} (state "
                        f"{record.state.name.lower()})")
    return lease


def renew_lease(rt: MarketRuntime, address: str, job_id: int, now: float) -> Lease:
    """A fresh lease on ``job_id`` with a later expiry. For a job of a lease batch the new
    ticket covers every job of the batch that ``address`` still holds and can still take on
    chain (a failed or released partner drops out), and all their leases are renewed with it:
    the worker commits the rest of the batch with that ticket."""
    old = held_lease(rt, address, job_id)
    record = job_record(rt, job_id)
    chain_now = rt.chain_now()
    if lease_expired(old.expiry, chain_now):
        raise Conflict(f"the lease on job {job_id} expired at {old.expiry}; ask for new work")
    if not leasable(record, address, chain_now):
        raise Conflict(f"job {job_id} is {record.state.name.lower()} on chain; nothing to renew")
    spec_sha = record.spec_hash.hex()
    spec = rt.spec(spec_sha)
    olds = [old]
    jobs = [(job_id, record)]
    if old.batch:
        partners = [int(i) for i in old.ticket.get("job_ids", []) if int(i) != job_id]
        for lease in rt.state.leases(partners):
            if lease is None or lease.worker != address or lease.batch != old.batch:
                continue
            partner = rt.indexer.job_record(lease.job_id)
            if partner is None or not leasable(partner, address, chain_now):
                continue
            olds.append(lease)
            jobs.append((lease.job_id, partner))
        order = {int(i): n for n, i in enumerate(old.ticket.get("job_ids", []))}
        pairs = sorted(zip(jobs, olds, strict=True), key=lambda p: order.get(p[0][0], 0))
        jobs = [p[0] for p in pairs]
        olds = [p[1] for p in pairs]
    news = _sign_leases(rt, address, jobs, chain_now, now,
                        batch=old.batch if len(jobs) > 1 else "")
    if not rt.state.renew_leases(olds, news):
        raise Conflict(f"the lease on job {job_id} changed meanwhile; try again")
    new = next(info_ for info_ in news if info_.job_id == job_id)
    return _lease_of(new, spec, spec_sha, record)


def release_lease(rt: MarketRuntime, address: str, job_id: int, now: float) -> None:
    """``address`` gives the job back. It is offered again once the released lease's ticket
    has expired on chain (until then the old holder could still commit with it), and not to
    ``address`` for one lease period more."""
    lease = held_lease(rt, address, job_id)
    if rt.state.end_lease(lease):
        rt.state.hold_for_ticket(job_id, lease.expiry)
        rt.state.exclude(job_id, address, now + rt.settings.lease_s)
        rt.state.incr_metric("leases_released", key=lease.key)


def fail_lease(rt: MarketRuntime, address: str, job_id: int, reason: str, now: float, *,
               partial: dict[str, Any] | None = None) -> None:
    """``address`` could not run the job; ``reason`` is kept as :func:`printable` text.
    ``partial``: a training job's finished checkpoints (``PartialIn``), kept for its client
    once the blobs it names are in the store and its steps are within the job's."""
    lease = held_lease(rt, address, job_id)
    if partial is not None:
        _check_partial(rt, lease, partial)
        rt.state.record_partial(job_id, address, partial)
    count = rt.state.record_failure(job_id, address, printable(reason))
    if rt.state.end_lease(lease):
        # work handed back: its client gets a while to pay for it and post the rest before
        # anyone else starts the job over (and loses that work when the client cancels it)
        grace = PARTIAL_GRACE_S if partial is not None else 0
        rt.state.hold_for_ticket(job_id, max(lease.expiry, rt.chain_now() + grace))
        # a job that failed on one worker may still run elsewhere, but never again here
        rt.state.exclude(job_id, address, float("inf"))
        rt.state.incr_metric("jobs_failed_runs", key=lease.key)
        if given_up(count):
            rt.state.incr_metric("jobs_given_up", key=str(job_id))


#: How long a training job handed back with finished work is offered to nobody, so that its
#: client can pay for that work and post the rest (chain seconds).
PARTIAL_GRACE_S = 120


def _check_partial(rt: MarketRuntime, lease: LeaseInfo, partial: dict[str, Any]) -> None:
    """BadInput unless ``partial`` names a step inside the leased training job's steps and a
    manifest the store holds (what it names is the worker's claim: an audit of the job that
    pays for it checks it; its checkpoints are uploaded once that job is committed)."""
    from meshcompute.core.training import (
        MAX_MANIFEST_BYTES,
        parse_manifest,
        plan_sha256,
        validate_plan,
    )

    record = job_record(rt, lease.job_id)
    spec = rt.spec_or_none(record.spec_hash.hex())
    if spec is None or spec.training is None:
        raise BadInput(f"job {lease.job_id} is not a training job: it has no partial work")
    plan = validate_plan(spec.training)
    end = int(partial["end_step"])
    if not plan.start_step < end < plan.last:
        raise BadInput(f"partial: end_step {end} is not inside the job's steps "
                       f"({plan.start_step}, {plan.last})")
    # the manifest of those steps as a job of their own, ending in the state named (the
    # states themselves are withheld until a job paying for them is committed)
    sha = str(partial["manifest_sha256"])
    if not rt.blobs.exists(sha):
        raise BadInput(f"partial: manifest_sha256 {sha} is not in the store; upload it first")
    if rt.blobs.size_or_zero(sha) > MAX_MANIFEST_BYTES:
        raise BadInput(f"partial: manifest {sha} is over {MAX_MANIFEST_BYTES} bytes")
    part = plan.part(plan.start_step, end)
    doc = parse_manifest(rt.blobs.read(sha), part)
    if doc.get("plan") != plan_sha256(part) or doc.get("final_state") != partial["state_sha256"]:
        raise BadInput(f"partial: manifest {sha} is not that of steps {plan.start_step} to {end} "
                       "of this job ending in state_sha256")


def submit_result(
    rt: MarketRuntime, address: str, job_id: int, output_sha256: str, now: float
) -> dict[str, Any]:
    lease = held_lease(rt, address, job_id)
    if not rt.blobs.exists(output_sha256):
        raise BadInput(f"output blob {output_sha256} is not in the store; upload it first")
    rt.state.save_result(job_id, address, output_sha256, now)
    return {"job_id": job_id, "output_sha256": output_sha256, "lease_expiry": lease.expiry}


def submit_results(
    rt: MarketRuntime, address: str, results: Sequence[tuple[int, str]], now: float
) -> list[dict[str, Any]]:
    """:func:`submit_result` for many jobs, all or none: every job must be held by
    ``address`` and every output blob uploaded before any result is saved; the error names
    the first bad job."""
    _check_bundle_count(rt, len(results), "results")
    checked: list[tuple[int, str, LeaseInfo]] = []
    seen: set[int] = set()
    for job_id, output_sha256 in results:
        if job_id in seen:
            raise BadInput(f"job {job_id} appears more than once in the batch")
        seen.add(job_id)
        lease = held_lease(rt, address, job_id)
        if not rt.blobs.exists(output_sha256):
            raise BadInput(
                f"job {job_id}: output blob {output_sha256} is not in the store; upload it "
                "first"
            )
        checked.append((job_id, output_sha256, lease))
    for job_id, output_sha256, _lease in checked:
        rt.state.save_result(job_id, address, output_sha256, now)
    return [
        {"job_id": job_id, "output_sha256": output_sha256, "lease_expiry": lease.expiry}
        for job_id, output_sha256, lease in checked
    ]


def printable(text: str) -> str:
    """``text`` with control and format characters (ANSI escapes, bidi overrides) written as
    escapes: a worker's failure reason and operator label are shown to other people's
    terminals, which must not take orders from them. Newlines and tabs stay."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
