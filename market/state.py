"""The market's working state in Redis: workers, heartbeats, offers, leases, failures, nonces.

Nothing here is money or truth: jobs, assignments and payments live on chain, bytes in the
blob store. Losing this state costs at most a lease period of delay (offers and leases are
re-made from the chain's queue). Every write is idempotent or guarded by a WATCH transaction,
keyed by the job id, so a task run twice or an API call racing a task changes nothing twice.

Keys (under ``prefix``): ``nonce:<addr>:<nonce>``, ``workers`` (set), ``worker:<addr>`` (hash),
``offer:<job>`` (hash) + ``offers:<addr>`` (zset by time) + ``offer-ids`` (set), ``lease:<job>`` (hash) +
``leases:<addr>`` (set) + ``lease-expiry`` (zset), ``exclude:<job>`` (zset worker -> until),
``failures:<job>`` (hash worker -> reason), ``result:<job>`` (hash), ``first-seen`` (hash
job -> time), ``group:<g>`` (hash shard -> job), ``spec-problem:<job>``, ``metric:*``, ``samples`` (hash
unix minute -> what the market looked like then: the dashboard's charts over time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from meshcompute.core.lease import MatchPlan
from meshcompute.errors import AuthError

DEFAULT_PREFIX = "mesh:mkt:"


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    operator: str
    hardware: dict[str, Any]
    price_wei: int
    slots: int
    registered_at: float
    last_seen: float
    last_assigned_at: float

    @property
    def device(self) -> str:
        return str(self.hardware.get("device", "cpu"))

    @property
    def memory_mb(self) -> int:
        return int(self.hardware.get("memory_mb", 0))

    @property
    def gpu_memory_mb(self) -> int:
        gpus = self.hardware.get("gpus") or []
        return max((int(g.get("memory_mb", 0)) for g in gpus), default=0)


@dataclass(frozen=True)
class OfferInfo:
    job_id: int
    worker: str
    collateral: int
    offered_at: float
    expires_at: float
    batch: str = ""
    """Offers sharing a non-empty batch id become one lease batch (one multi-job ticket)."""


@dataclass(frozen=True)
class LeaseInfo:
    job_id: int
    worker: str
    collateral: int
    expiry: int
    audit_bps: int
    ticket: dict[str, Any]
    signature: str
    leased_at: float
    batch: str = ""
    """Leases of one batch share a ticket over the jobs of the batch still held."""

    @property
    def key(self) -> str:
        """Idempotency key of this lease: one job, one holder, one expiry."""
        return f"{self.job_id}:{self.worker}:{self.expiry}"


@dataclass(frozen=True)
class QueueFacts:
    """What the market recorded about a queued job."""

    first_seen: float
    """When the market first saw the job (its place in the queue)."""
    failures: int
    """How many workers failed to run it."""
    excluded: frozenset[str]
    """Workers it may not be offered to now."""
    spec_problem: str | None
    group: str | None
    """The group the job is recorded in as a shard."""


# One round trip each, atomic (Redis runs a script alone). KEYS and ARGV are listed per script.
_CREATE_OFFER = """
-- KEYS: offer, lease, offers:<worker>, offer-ids; ARGV: worker, collateral, now, expires,
-- batch, job id
if redis.call('exists', KEYS[1]) == 1 or redis.call('exists', KEYS[2]) == 1 then return 0 end
redis.call('hset', KEYS[1], 'worker', ARGV[1], 'collateral', ARGV[2], 'offered_at', ARGV[3],
           'expires_at', ARGV[4], 'batch', ARGV[5])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[6])
redis.call('sadd', KEYS[4], ARGV[6])
return 1
"""
_END_LEASE = """
-- KEYS: lease, leases:<worker>, lease-expiry; ARGV: worker, expiry, job id
redis.call('srem', KEYS[2], ARGV[3])
local current = redis.call('hmget', KEYS[1], 'worker', 'expiry')
if not current[1] or current[1] ~= ARGV[1] or tonumber(current[2]) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[3], ARGV[3])
return 1
"""
_RELEASE_BLOB = """
-- KEYS: blob-keep; ARGV: sha, now. Forget the blob only if its time is still past.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

_ADD_TO_GROUP = """
-- KEYS: group-owner, group, job-group; ARGV: client (lower case), shard, job id, group
redis.call('set', KEYS[1], ARGV[1], 'NX')
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('set', KEYS[3], ARGV[4])
return 1
"""

_FORGET_SHARDS = """
-- KEYS: group, group-owner, group-output; ARGV: the job ids forgotten
-- drops their shards, and the whole group once none is left (atomic: a shard added meanwhile
-- keeps the group and its owner)
local forgotten = {}
for i = 1, #ARGV do forgotten[ARGV[i]] = true end
local shards = redis.call('hgetall', KEYS[1])
local left = 0
for i = 1, #shards, 2 do
  if forgotten[shards[i + 1]] then redis.call('hdel', KEYS[1], shards[i])
  else left = left + 1 end
end
if left == 0 then
  redis.call('del', KEYS[1], KEYS[2], KEYS[3])
  return 1
end
return 0
"""


_FORGET_WORKER = """
-- KEYS: worker, workers; ARGV: address, seen before
local seen = tonumber(redis.call('hget', KEYS[1], 'last_seen') or '0')
if seen >= tonumber(ARGV[2]) then return 0 end
redis.call('del', KEYS[1])
redis.call('srem', KEYS[2], ARGV[1])
return 1
"""

_SET_IF_EXISTS = """
-- KEYS: a hash; ARGV: field, value
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class MarketState:
    """Typed access to the market's Redis keys."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.r = client
        self.prefix = prefix
        self._create_offer = client.register_script(_CREATE_OFFER)
        self._end_lease = client.register_script(_END_LEASE)
        self._add_to_group = client.register_script(_ADD_TO_GROUP)
        self._forget_shards = client.register_script(_FORGET_SHARDS)
        self._forget_worker = client.register_script(_FORGET_WORKER)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)
        self._release_blob = client.register_script(_RELEASE_BLOB)
        self._offer_ids_built = False

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # ------------------------------------------------------------------ auth nonces
    def check_nonce_unused(self, address: str, nonce: str) -> None:
        """AuthError if ``nonce`` of ``address`` was claimed already (a replay), without
        claiming it."""
        if self.r.exists(self._k("nonce", address, nonce)):
            raise AuthError(f"nonce {nonce} was already used by {address} (replayed request)")

    def claim_nonce(self, address: str, nonce: str, *, expires: int, now: float) -> None:
        """Remember a request nonce until its expiry; AuthError if it was seen before."""
        ttl = max(1, int(expires - now) + 1)
        if not self.r.set(self._k("nonce", address, nonce), 1, nx=True, ex=ttl):
            raise AuthError(f"nonce {nonce} was already used by {address} (replayed request)")

    # ------------------------------------------------------------------ workers
    def save_worker(
        self,
        address: str,
        *,
        operator: str,
        hardware: Mapping[str, Any],
        price_wei: int,
        slots: int,
        now: float,
    ) -> WorkerInfo:
        key = self._k("worker", address)
        pipe = self.r.pipeline()
        pipe.hsetnx(key, "registered_at", now)
        pipe.hsetnx(key, "last_assigned_at", 0)
        pipe.hset(
            key,
            mapping={
                "operator": operator,
                "hardware": json.dumps(dict(hardware), sort_keys=True),
                "price_wei": str(price_wei),
                "slots": slots,
                "last_seen": now,
            },
        )
        pipe.sadd(self._k("workers"), address)
        pipe.execute()
        worker = self.worker(address)
        assert worker is not None
        return worker

    def worker(self, address: str) -> WorkerInfo | None:
        data = self.r.hgetall(self._k("worker", address))
        if not data:
            return None
        return _worker_from(address, data)

    def workers(self) -> list[WorkerInfo]:
        addresses = sorted(a.decode() for a in self.r.smembers(self._k("workers")))
        pipe = self.r.pipeline()
        for address in addresses:
            pipe.hgetall(self._k("worker", address))
        out = []
        for address, data in zip(addresses, pipe.execute(), strict=True):
            if data:
                out.append(_worker_from(address, data))
        return out

    def forget_workers(self, seen_before: float) -> list[str]:
        """Drop the registrations of workers not seen since ``seen_before`` (a worker that
        comes back registers again, as at its first start). Each is checked and dropped in
        one step, so a worker seen meanwhile stays. Returns their addresses."""
        gone = []
        for worker in self.workers():
            if worker.last_seen < seen_before and self._forget_worker(
                    keys=[self._k("worker", worker.address), self._k("workers")],
                    args=[worker.address, seen_before]):
                gone.append(worker.address)
        return gone

    def touch_worker(self, address: str, now: float) -> None:
        # only a registration that still exists (one forgotten meanwhile is not half-revived)
        self._set_if_exists(keys=[self._k("worker", address)], args=["last_seen", now])

    def mark_assigned(self, address: str, now: float) -> None:
        self._set_if_exists(keys=[self._k("worker", address)], args=["last_assigned_at", now])

    # ------------------------------------------------------------------ offers
    def create_offer(self, job_id: int, worker: str, collateral: int, *, now: float,
                     ttl_s: float, batch: str = "") -> bool:
        """Offer a job to a worker; False when the job already has an offer or a lease."""
        return self.create_offers([(job_id, worker, collateral)], now=now, ttl_s=ttl_s,
                                  batch=batch)[0]

    def create_offers(self, offers: list[tuple[int, str, int]], *, now: float, ttl_s: float,
                      batch: str = "") -> list[bool]:
        """:meth:`create_offer` for many ``(job_id, worker, collateral)`` in one round trip
        (each one atomic on its own, a script)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id, worker, collateral in offers:
            self._queue_create_offer(pipe, job_id, worker, collateral, now=now, ttl_s=ttl_s,
                                     batch=batch)
        return [bool(result) for result in pipe.execute()]

    def _queue_create_offer(self, pipe: Any, job_id: int, worker: str, collateral: int, *,
                            now: float, ttl_s: float, batch: str) -> None:
        self._create_offer(
            keys=[self._k("offer", job_id), self._k("lease", job_id),
                  self._k("offers", worker), self._k("offer-ids")],
            args=[worker, str(collateral), repr(float(now)), repr(float(now + ttl_s)),
                  batch, str(job_id)],
            client=pipe,
        )

    def offer(self, job_id: int) -> OfferInfo | None:
        return _offer_from(job_id, self.r.hgetall(self._k("offer", job_id)))

    def _offers(self, ids: list[int]) -> list[OfferInfo | None]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._k("offer", job_id))
        return [_offer_from(i, d) for i, d in zip(ids, pipe.execute(), strict=True)]

    def offers_for(self, worker: str) -> list[OfferInfo]:
        ids = [int(i) for i in self.r.zrange(self._k("offers", worker), 0, -1)]
        out = []
        stale = []
        for job_id, offer in zip(ids, self._offers(ids), strict=True):
            if offer is not None and offer.worker == worker:
                out.append(offer)
            else:
                stale.append(str(job_id))
        if stale:
            self.r.zrem(self._k("offers", worker), *stale)
        return out

    def all_offers(self) -> list[OfferInfo]:
        """Every open offer (from the ``offer-ids`` set; ids whose offer is gone are pruned)."""
        self._build_offer_ids()
        ids = sorted(int(i) for i in self.r.smembers(self._k("offer-ids")))
        offers = self._offers(ids)
        gone = [str(i) for i, offer in zip(ids, offers, strict=True) if offer is None]
        if gone:
            self.r.srem(self._k("offer-ids"), *gone)
        return [offer for offer in offers if offer is not None]

    def _build_offer_ids(self) -> None:
        """State written before the ``offer-ids`` set existed gets it from a key scan, once."""
        if self._offer_ids_built or self.r.exists(self._k("offer-ids-built")):
            self._offer_ids_built = True
            return
        ids = [key.decode().rsplit(":", 1)[1]
               for key in self.r.scan_iter(match=self._k("offer", "*"), count=1000)]
        if ids:
            self.r.sadd(self._k("offer-ids"), *ids)
        self.r.set(self._k("offer-ids-built"), 1)
        self._offer_ids_built = True

    def drop_offer(self, job_id: int, worker: str) -> bool:
        """Remove ``worker``'s offer of ``job_id`` (no-op when it is someone else's)."""
        key = self._k("offer", job_id)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                holder = pipe.hget(key, "worker")
                pipe.multi()
                if holder is None or holder.decode() != worker:
                    pipe.zrem(self._k("offers", worker), str(job_id))
                    pipe.execute()
                    return False
                pipe.delete(key)
                pipe.zrem(self._k("offers", worker), str(job_id))
                pipe.srem(self._k("offer-ids"), str(job_id))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def offer_to_lease(self, offer: OfferInfo, lease: LeaseInfo) -> bool:
        """Atomically turn ``offer`` into ``lease``; False if the offer is gone or changed."""
        key = self._k("offer", offer.job_id)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                holder = pipe.hget(key, "worker")
                if holder is None or holder.decode() != offer.worker:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(key)
                pipe.zrem(self._k("offers", offer.worker), str(offer.job_id))
                pipe.srem(self._k("offer-ids"), str(offer.job_id))
                self._write_lease(pipe, lease)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def offers_to_leases(self, offers: list[OfferInfo], leases: list[LeaseInfo]) -> bool:
        """Atomically turn all ``offers`` (one batch) into ``leases``; False, and nothing
        changed, if any of the offers is gone or changed."""
        keys = [self._k("offer", o.job_id) for o in offers]
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                for key, offer in zip(keys, offers, strict=True):
                    holder = pipe.hget(key, "worker")
                    if holder is None or holder.decode() != offer.worker:
                        pipe.unwatch()
                        return False
                pipe.multi()
                for key, offer in zip(keys, offers, strict=True):
                    pipe.delete(key)
                    pipe.zrem(self._k("offers", offer.worker), str(offer.job_id))
                    pipe.srem(self._k("offer-ids"), str(offer.job_id))
                for lease in leases:
                    self._write_lease(pipe, lease)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    # ------------------------------------------------------------------ leases
    def _write_lease(self, pipe: Any, lease: LeaseInfo) -> None:
        pipe.hset(
            self._k("lease", lease.job_id),
            mapping={
                "worker": lease.worker,
                "collateral": str(lease.collateral),
                "expiry": lease.expiry,
                "audit_bps": lease.audit_bps,
                "ticket": json.dumps(lease.ticket),
                "signature": lease.signature,
                "leased_at": lease.leased_at,
                "batch": lease.batch,
            },
        )
        pipe.sadd(self._k("leases", lease.worker), lease.job_id)
        pipe.zadd(self._k("lease-expiry"), {str(lease.job_id): lease.expiry})

    def renew_lease(self, old: LeaseInfo, new: LeaseInfo) -> bool:
        return self.renew_leases([old], [new])

    def renew_leases(self, olds: list[LeaseInfo], news: list[LeaseInfo]) -> bool:
        """Atomically replace each of ``olds`` (same holder and expiry as stored) with the
        matching ``news``; False, and nothing changed, if any of them changed meanwhile."""
        keys = [self._k("lease", old.job_id) for old in olds]
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                for key, old in zip(keys, olds, strict=True):
                    current = pipe.hmget(key, "worker", "expiry")
                    if current[0] is None or current[0].decode() != old.worker or int(
                        current[1]
                    ) != old.expiry:
                        pipe.unwatch()
                        return False
                pipe.multi()
                for new in news:
                    self._write_lease(pipe, new)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def lease(self, job_id: int) -> LeaseInfo | None:
        return _lease_from(job_id, self.r.hgetall(self._k("lease", job_id)))

    def leases(self, job_ids: list[int]) -> list[LeaseInfo | None]:
        """The leases of ``job_ids`` (None where there is none), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._k("lease", job_id))
        return [_lease_from(i, d) for i, d in zip(job_ids, pipe.execute(), strict=True)]

    def leases_of(self, worker: str) -> list[LeaseInfo]:
        ids = sorted(int(i) for i in self.r.smembers(self._k("leases", worker)))
        out = []
        for job_id in ids:
            lease = self.lease(job_id)
            if lease is not None and lease.worker == worker:
                out.append(lease)
            else:
                self.r.srem(self._k("leases", worker), job_id)
        return out

    def all_leases(self) -> list[LeaseInfo]:
        ids = [int(i) for i in self.r.zrange(self._k("lease-expiry"), 0, -1)]
        return [lease for lease in self.leases(ids) if lease is not None]

    def expired_leases(self, now: float) -> list[LeaseInfo]:
        ids = [int(i) for i in self.r.zrangebyscore(self._k("lease-expiry"), "-inf", now)]
        return [lease for lease in self.leases(ids) if lease is not None]

    def end_lease(self, lease: LeaseInfo) -> bool:
        """Delete exactly this lease (same holder and expiry); True if this call removed it.

        The boolean is the idempotency guard: callers count an expiry or a release only when
        it is True."""
        return self.end_leases([lease])[0]

    def end_leases(self, leases: list[LeaseInfo]) -> list[bool]:
        """:meth:`end_lease` for many leases in one round trip (each atomic, a script)."""
        pipe = self.r.pipeline(transaction=False)
        for lease in leases:
            self._queue_end_lease(pipe, lease)
        return [bool(result) for result in pipe.execute()] if leases else []

    def _queue_end_lease(self, pipe: Any, lease: LeaseInfo) -> None:
        self._end_lease(
            keys=[self._k("lease", lease.job_id), self._k("leases", lease.worker),
                  self._k("lease-expiry")],
            args=[lease.worker, str(int(lease.expiry)), str(lease.job_id)],
            client=pipe,
        )

    # ------------------------------------------------------------------ blob retention
    def keep_blobs(self, shas: Iterable[str], until: float) -> None:
        """Keep the blobs ``shas`` at least until ``until`` (unix seconds; never shortens)."""
        mapping = {sha: float(until) for sha in set(shas)}
        if mapping:
            self.r.zadd(self._k("blob-keep"), mapping, gt=True)  # GT still adds new ones

    def tracked_blobs(self, shas: Sequence[str]) -> list[bool]:
        """Whether each of ``shas`` has a keep-until time."""
        if not shas:
            return []
        return [score is not None for score in self.r.zmscore(self._k("blob-keep"), shas)]

    def expired_blobs(self, now: float, limit: int) -> list[str]:
        return [m.decode() for m in self.r.zrangebyscore(self._k("blob-keep"), "-inf", now,
                                                          start=0, num=limit)]

    def release_blob(self, sha: str, now: float) -> bool:
        """Forget ``sha`` if its keep-until time is still past at ``now`` (atomic: a blob
        kept again meanwhile stays); True when the caller may delete it."""
        return bool(self._release_blob(keys=[self._k("blob-keep")], args=[sha, now]))

    # ------------------------------------------------------------------ upload quotas
    def upload_usage(self, address: str, *, now: float, window_s: int) -> tuple[int, int]:
        """Bytes of new blobs ``address``, and all addresses without standing, stored over
        the last ``window_s`` (counted in eight buckets: a bucket's bytes leave the count
        whole, up to one eighth of the window late)."""
        buckets = self._buckets(now, window_s)
        values = self.r.mget([self._k("upload", address.lower(), b) for b in buckets]
                             + [self._k("upload-strangers", b) for b in buckets])
        counts = [int(v) if v is not None else 0 for v in values]
        return sum(counts[:len(buckets)]), sum(counts[len(buckets):])

    def charge_upload(self, address: str, size: int, *, stranger: bool, now: float,
                      window_s: int) -> None:
        bucket = self._buckets(now, window_s)[-1]
        ttl = int(window_s + window_s // 8 + 60)
        pipe = self.r.pipeline(transaction=False)
        keys = [self._k("upload", address.lower(), bucket)]
        if stranger:
            keys.append(self._k("upload-strangers", bucket))
        for key in keys:
            pipe.incrby(key, int(size))
            pipe.expire(key, ttl)
        pipe.execute()

    @staticmethod
    def _buckets(now: float, window_s: int) -> list[int]:
        width = max(1, window_s // 8)
        last = int(now) // width
        return list(range(last - 7, last + 1))

    # ------------------------------------------------------------------ exclusions, failures
    def hold_for_ticket(self, job_id: int, until: int) -> None:
        """Offer ``job_id`` to nobody before chain time ``until``: a lease given back or
        failed ended early, but its ticket stays valid on chain until its expiry, and its
        old holder could still commit with it and race a new holder."""
        self.r.zadd(self._k("ticket-live"), {str(int(job_id)): int(until)}, gt=True)

    def held_for_tickets(self, chain_now: int) -> set[int]:
        """The jobs whose ended lease's ticket is still valid at ``chain_now`` (the entries
        that expired are dropped)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(self._k("ticket-live"), "-inf", chain_now)
        pipe.zrange(self._k("ticket-live"), 0, -1)
        return {int(m) for m in pipe.execute()[1]}

    def exclude(self, job_id: int, worker: str, until: float) -> None:
        self.r.zadd(self._k("exclude", job_id), {worker: until}, gt=True)

    def excluded(self, job_id: int, now: float) -> frozenset[str]:
        members = self.r.zrangebyscore(self._k("exclude", job_id), now, "+inf")
        return frozenset(m.decode() for m in members)

    def queue_facts(self, job_ids: list[int], now: float) -> dict[int, QueueFacts]:
        """What the market recorded about each of ``job_ids``, in one round trip. A job
        seen for the first time is first seen ``now`` (kept across restarts)."""
        if not job_ids:
            return {}
        ids = [str(job_id) for job_id in job_ids]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hsetnx(self._k("first-seen"), job_id, now)
        pipe.hmget(self._k("first-seen"), ids)
        pipe.mget([self._k("spec-problem", job_id) for job_id in ids])
        pipe.mget([self._k("job-group", job_id) for job_id in ids])
        for job_id in ids:
            pipe.hlen(self._k("failures", job_id))
        for job_id in ids:
            pipe.zrangebyscore(self._k("exclude", job_id), now, "+inf")
        results = pipe.execute()[len(ids):]
        first_seen, problems, groups = results[0], results[1], results[2]
        failures = results[3:3 + len(ids)]
        excluded = results[3 + len(ids):]
        return {
            job_id: QueueFacts(
                first_seen=float(first_seen[n]),
                failures=int(failures[n]),
                excluded=frozenset(m.decode() for m in excluded[n]),
                spec_problem=problems[n].decode() if problems[n] is not None else None,
                group=groups[n].decode() if groups[n] is not None else None,
            )
            for n, job_id in enumerate(job_ids)
        }

    def record_failure(self, job_id: int, worker: str, reason: str) -> int:
        """Remember why ``worker`` could not run the job; returns how many workers failed."""
        key = self._k("failures", job_id)
        pipe = self.r.pipeline()
        pipe.hset(key, worker, reason)
        pipe.set(self._k("last-failure", job_id), f"{worker}: {reason}")
        pipe.hlen(key)
        return int(pipe.execute()[-1])

    def record_partial(self, job_id: int, worker: str, partial: Mapping[str, Any]) -> None:
        """Keep a training job's finished work that ``worker`` handed back (its latest)."""
        key = self._k("partials", job_id)
        self.r.hset(key, worker, json.dumps(dict(partial), sort_keys=True))

    def partials(self, job_id: int) -> dict[str, dict[str, Any]]:
        """Each worker's handed-back training work on the job (see :meth:`record_partial`)."""
        data = self.r.hgetall(self._k("partials", job_id))
        return {k.decode(): json.loads(v) for k, v in data.items()}

    def failures(self, job_id: int) -> dict[str, str]:
        """Why each worker that failed to run the job could not (its latest reason)."""
        data = self.r.hgetall(self._k("failures", job_id))
        return {k.decode(): v.decode() for k, v in data.items()}

    def failure(self, job_id: int) -> str | None:
        problem = self.r.get(self._k("spec-problem", job_id))
        if problem is not None:
            return problem.decode()
        last = self.r.get(self._k("last-failure", job_id))
        return last.decode() if last is not None else None

    # ------------------------------------------------------------------ results, groups
    def save_result(self, job_id: int, worker: str, output_sha256: str, now: float) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(
            self._k("result", job_id),
            mapping={"worker": worker, "output_sha256": output_sha256, "at": now},
        )
        # the output is not served until it is committed on chain (see pending_outputs)
        pipe.set(self._k("pending-output", output_sha256), int(job_id), ex=86_400)
        pipe.execute()

    def pending_outputs(self, shas: Sequence[str]) -> dict[str, int]:
        """Those of ``shas`` submitted as a job's output (within a day), with the job."""
        if not shas:
            return {}
        values = self.r.mget([self._k("pending-output", sha) for sha in shas])
        return {sha: int(v) for sha, v in zip(shas, values, strict=True) if v is not None}

    def result(self, job_id: int) -> dict[str, str] | None:
        data = self.r.hgetall(self._k("result", job_id))
        return {k.decode(): v.decode() for k, v in data.items()} or None

    def results(self, job_ids: Sequence[int]) -> dict[int, str]:
        """The output blob submitted for each of ``job_ids`` that has one (one round trip)."""
        if not job_ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._k("result", job_id), "output_sha256")
        return {job_id: value.decode() for job_id, value in zip(job_ids, pipe.execute(),
                                                                strict=True)
                if value is not None}

    def add_to_group(self, group: str, shard: int, job_id: int, client: str) -> bool:
        """Record ``job_id`` as shard ``shard`` of ``group``. A group belongs to the client
        whose job named it first (group ids are public in the specs): a job of another
        client naming it is refused (False), so nobody can swap shards of someone's output.
        A later job of the same client for the same shard (a re-post) replaces the old one."""
        pipe = self.r.pipeline(transaction=False)
        self._queue_add_to_group(pipe, group, shard, job_id, client)
        return bool(pipe.execute()[0])

    def _queue_add_to_group(self, pipe: Any, group: str, shard: int, job_id: int,
                            client: str) -> None:
        self._add_to_group(
            keys=[self._k("group-owner", group), self._k("group", group),
                  self._k("job-group", job_id)],
            args=[client.lower(), str(int(shard)), str(int(job_id)), group],
            client=pipe,
        )

    def forget_jobs(self, job_ids: Sequence[int]) -> int:
        """Drop what the market keeps per job for ``job_ids`` (ended long ago: the index
        is about to forget them): failures, exclusions, results, first-seen times, spec
        problems, a lease or offer left over, a ticket hold, and a group once none of its
        shards is left. Idempotent. Returns how many groups were dropped."""
        ids = [int(i) for i in job_ids]
        if not ids:
            return 0
        # a job that ended has no lease or offer once a match round saw it end; one left over
        # (its round never came) goes, with the worker's list and the expiry entry
        self.end_leases([lease for lease in self.leases(ids) if lease is not None])
        for offer in self._offers(ids):
            if offer is not None:
                self.drop_offer(offer.job_id, offer.worker)
        groups = {value.decode() for value in
                  self.r.mget([self._k("job-group", job_id) for job_id in ids])
                  if value is not None}
        pipe = self.r.pipeline()
        for job_id in ids:
            for part in ("failures", "partials", "last-failure", "exclude", "result", "spec-problem",
                         "job-group"):
                pipe.delete(self._k(part, job_id))
        pipe.hdel(self._k("first-seen"), *ids)
        pipe.zrem(self._k("ticket-live"), *ids)
        pipe.execute()
        forgotten = [str(i) for i in ids]
        return sum(int(self._forget_shards(
            keys=[self._k("group", group), self._k("group-owner", group),
                  self._k("group-output", group)], args=forgotten)) for group in sorted(groups))

    def group_owners(self, groups: Iterable[str]) -> dict[str, str]:
        """The owning client (lower case) of each of ``groups`` that has one."""
        names = sorted(set(groups))
        if not names:
            return {}
        values = self.r.mget([self._k("group-owner", group) for group in names])
        return {group: v.decode() for group, v in zip(names, values, strict=True)
                if v is not None}

    def group(self, group: str) -> dict[int, int]:
        """shard index -> job id."""
        data = self.r.hgetall(self._k("group", group))
        return {int(k): int(v) for k, v in data.items()}

    def group_owner(self, group: str) -> str | None:
        """The client (lower case) owning ``group``, if it is known."""
        value = self.r.get(self._k("group-owner", group))
        return value.decode() if value is not None else None

    def group_output(self, group: str) -> str | None:
        """The blob holding ``group``'s assembled output, once it was assembled."""
        value = self.r.get(self._k("group-output", group))
        return value.decode() if value is not None else None

    def set_group_output(self, group: str, sha256: str) -> None:
        self.r.set(self._k("group-output", group), sha256)

    # ------------------------------------------------------------------ a match round
    def write_match(self, plan: MatchPlan[LeaseInfo], *, now: float,
                    ttl_s: float) -> tuple[list[bool], list[bool]]:
        """Everything a match round decided, in one round trip and in this order (each
        script atomic on its own): end ``plan.ending`` (as :meth:`end_lease`), join
        ``plan.joins`` (:meth:`add_to_group`), record ``plan.problem_changes``, make
        ``plan.offers`` (:meth:`create_offer`, each with its batch id, offered at ``now`` for
        ``ttl_s``). Returns which of the leases this call ended and which offers it made."""
        pipe = self.r.pipeline(transaction=False)
        for lease in plan.ending:
            self._queue_end_lease(pipe, lease)
        for group, shard, job_id, client in plan.joins:
            self._queue_add_to_group(pipe, group, shard, job_id, client)
        for job_id, problem in plan.problem_changes.items():
            if problem is None:
                pipe.delete(self._k("spec-problem", job_id))
            else:
                pipe.set(self._k("spec-problem", job_id), problem)
        for offer in plan.offers:
            self._queue_create_offer(pipe, offer.job_id, offer.worker, offer.collateral,
                                     now=now, ttl_s=ttl_s, batch=offer.batch)
        results = [bool(result) for result in pipe.execute()]
        ended = results[:len(plan.ending)]
        made = results[len(results) - len(plan.offers):]
        return ended, made

    # ------------------------------------------------------------------ metrics counters
    def incr_metric(self, name: str, amount: int = 1, *, key: str | None = None) -> None:
        """Add to a counter; with ``key`` only once per key (idempotent across retries)."""
        if key is not None and not self.r.set(self._k("metric-once", name, key), 1, nx=True,
                                              ex=7 * 24 * 3600):
            return
        self.r.hincrby(self._k("metric"), name, amount)

    def metrics(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(self._k("metric")).items()}

    # ------------------------------------------------------------------ samples over time
    #: Minutes of samples kept (a day).
    SAMPLE_MINUTES = 24 * 60

    def has_sample(self, minute: int) -> bool:
        return bool(self.r.hexists(self._k("samples"), str(minute)))

    def record_sample(self, minute: int, values: Mapping[str, int]) -> bool:
        """What the market looked like in ``minute`` (unix minutes), written once (the first
        round of the minute); samples older than :data:`SAMPLE_MINUTES` are dropped. Returns
        whether this call wrote it."""
        written = bool(self.r.hsetnx(self._k("samples"), str(minute), json.dumps(dict(values))))
        if written:
            old = [m for m in self.r.hkeys(self._k("samples"))
                   if int(m) <= minute - self.SAMPLE_MINUTES]
            if old:
                self.r.hdel(self._k("samples"), *old)
        return written

    def samples(self, first_minute: int, last_minute: int) -> dict[int, dict[str, int]]:
        minutes = [str(m) for m in range(first_minute, last_minute + 1)]
        raw = self.r.hmget(self._k("samples"), minutes) if minutes else []
        return {int(m): json.loads(v) for m, v in zip(minutes, raw, strict=True)
                if v is not None}

    def observe_batch(self, size: int) -> None:
        pipe = self.r.pipeline()
        pipe.hincrby(self._k("metric-batch"), str(size), 1)
        pipe.execute()

    def batch_sizes(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.r.hgetall(self._k("metric-batch")).items()}


def _offer_from(job_id: int, data: Mapping[bytes, bytes]) -> OfferInfo | None:
    if not data or b"expires_at" not in data:
        return None
    return OfferInfo(
        job_id=job_id,
        worker=data[b"worker"].decode(),
        collateral=int(data[b"collateral"]),
        offered_at=float(data[b"offered_at"]),
        expires_at=float(data[b"expires_at"]),
        batch=data.get(b"batch", b"").decode(),
    )


def _lease_from(job_id: int, data: Mapping[bytes, bytes]) -> LeaseInfo | None:
    if not data or b"expiry" not in data:
        return None
    return LeaseInfo(
        job_id=job_id,
        worker=data[b"worker"].decode(),
        collateral=int(data[b"collateral"]),
        expiry=int(data[b"expiry"]),
        audit_bps=int(data[b"audit_bps"]),
        ticket=json.loads(data[b"ticket"]),
        signature=data[b"signature"].decode(),
        leased_at=float(data[b"leased_at"]),
        batch=data.get(b"batch", b"").decode(),
    )


def _worker_from(address: str, data: Mapping[bytes, bytes]) -> WorkerInfo:
    return WorkerInfo(
        address=address,
        operator=data.get(b"operator", address.encode()).decode(),
        hardware=json.loads(data.get(b"hardware", b"{}")),
        price_wei=int(data.get(b"price_wei", b"0")),
        slots=int(data.get(b"slots", b"1")),
        registered_at=float(data.get(b"registered_at", b"0")),
        last_seen=float(data.get(b"last_seen", b"0")),
        last_assigned_at=float(data.get(b"last_assigned_at", b"0")),
    )
