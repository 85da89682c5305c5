"""Chain indexer: follows the three contracts' events into Redis and rewinds on reorgs.

    indexer = ChainIndexer(redis_client, contracts, start_block=deployment.block)
    report = indexer.sync()          # one step (the Celery beat task calls this)
    indexer.job_records()            # JobRecord per job, rebuilt from the indexed events

What it keeps under its prefix (default ``mesh:idx:``):

* ``head`` — the last indexed block number (absent: ``start_block - 1``);
* ``blocks`` — hash of every indexed block number -> ``[block hash, parent hash]``;
* ``events`` — hash of ``<tx hash>:<log index>`` -> the decoded event as JSON (with block
  number, block hash and the block's parent hash); ``order`` and ``job:<id>`` are sorted sets
  of those keys scored by block number (all events, and the events of one job);
* ``records`` — job id -> the job's record folded from its events with
  :func:`meshcompute.core.job.apply_event`;
* ``open`` — the ids of jobs whose record is not terminal (what the market's rounds read each
  step, so a round costs the open jobs, not every job ever posted); ``open-built`` marks that
  the set was built (an index written before it existed gets it from ``records`` once);
* ``meta`` — chain id, JobMarket address and start block, so a prefix is never reused for
  another deployment;
* ``ended`` — when (wall time) the index saw each job end (and ``ended:<final state>``, the
  same by final state: the dashboard counts jobs settled per minute from them); ``other`` — the keys of events that
  are about no job (token transfers, stake changes), scored by block;
* ``pruned`` — tallies of what :meth:`ChainIndexer.prune` forgot (jobs by final state, audit
  draws and verdicts), so counts over all history survive the pruning; ``pruned-max`` — the
  highest job id it forgot (job ids are consecutive, so a job at or below it with no record
  was pruned: :meth:`ChainIndexer.was_pruned`);
* ``tallies`` — the same counts for what the index holds now, moved by every write, rewind and
  prune in its own transaction (``tallies-built`` marks that they were counted once from an
  index written before them), so counts over all history cost two hash reads, not a scan.

Nothing is kept forever: :meth:`ChainIndexer.prune` forgets a job that ended more than the
retention ago once its last event is deeper than :data:`KEPT_BLOCK_HASHES` (no reorg the index
handles reaches it), and :meth:`ChainIndexer.prune_unrelated_events` every event about no job
that deep; both in batches of a bounded size.

Each sync first checks that the stored hash of the last indexed block is still the chain's.
If not (a reorganisation), it walks back to the highest block whose stored hash still matches
(:func:`common_ancestor`), deletes the events, blocks and record changes above it in one
transaction, and reads forward again. A range read is checked for continuity (every block's
parent hash is the previous block's hash, the first one's is the stored tip; every log's block
hash is the header's; the tip is unchanged after the logs were read) and written in one
MULTI/EXEC guarded by WATCH on ``head``: a crash leaves either none or all of a range, and two
indexers on the same Redis never write the same range twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from hexbytes import HexBytes
from redis import Redis
from redis.exceptions import WatchError
from web3.exceptions import BlockNotFound

from meshcompute.chain.contracts import ChainEvent, MeshContracts
from meshcompute.core.job import JOB_EVENTS, TERMINAL_STATES, JobRecord, JobState, apply_event
from meshcompute.errors import BadInput, ChainError, ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "mesh:idx:"
_ANCESTOR_WINDOW = 64
KEPT_BLOCK_HASHES = 4096
"""Block hashes the index keeps behind its head, for reorg handling: a reorg deeper than this
(none happens past finality on a live chain) finds no common ancestor among them and rewinds
the whole index, which is slow but correct."""
_SYNC_ATTEMPTS = 5


# ---------------------------------------------------------------------------- pure logic


@dataclass(frozen=True)
class BlockRef:
    """A block's number, hash and parent hash (0x hex)."""

    number: int
    hash: str
    parent_hash: str


def common_ancestor(stored: Mapping[int, str], chain: Mapping[int, str | None]) -> int | None:
    """The highest block number whose stored hash is also the chain's, or None when no
    stored block in ``stored`` is still on the chain. A block hash commits to all its
    ancestors, so every stored block below the answer is on the chain too."""
    for number in sorted(stored, reverse=True):
        if chain.get(number) == stored[number]:
            return number
    return None


def first_broken_link(tip_hash: str | None, headers: Sequence[BlockRef]) -> int | None:
    """The number of the first header that does not extend the previous one (its parent
    hash differs, or numbers are not consecutive), ``tip_hash`` being the hash the first
    header's parent must have (None: not checked). None when the run is one chain."""
    previous: BlockRef | None = None
    for header in headers:
        if previous is None:
            if tip_hash is not None and header.parent_hash != tip_hash:
                return header.number
        elif header.number != previous.number + 1 or header.parent_hash != previous.hash:
            return header.number
        previous = header
    return None


# ---------------------------------------------------------------------------- adapter


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`ChainIndexer.sync` did: it indexed blocks ``from_block..to_block``
    (empty when ``to_block < from_block``) after rewinding ``reorged_blocks`` blocks."""

    from_block: int
    to_block: int
    new_events: list[ChainEvent]
    reorged_blocks: int


class _ChainMoved(Exception):
    """Internal: the chain changed while a range was read; retry."""


class _Raced(Exception):
    """Internal: another indexer on the same prefix wrote first; its work stands."""


class ChainIndexer:
    """Follows MeshCredit, StakeManager and JobMarket events from ``start_block``."""

    def __init__(
        self,
        redis: Redis,
        contracts: MeshContracts,
        *,
        start_block: int,
        prefix: str = DEFAULT_PREFIX,
        min_reward: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``min_reward``: a posted job paying less is kept out of the open set (matching and
        settlement never scan it; it is *dormant* until it ends), so a flood of 1-wei jobs with
        far deadlines costs the market nothing per round. ``clock``: wall time in unix
        seconds, for when the index saw a job end (what retention counts from)."""
        if start_block < 0:
            raise BadInput(f"start_block must be >= 0, got {start_block}")
        self.min_reward = int(min_reward)
        self.clock = clock
        self.redis = redis
        self.contracts = contracts
        self.w3 = contracts.w3
        self.start_block = start_block
        self.prefix = prefix
        self._addresses = list(contracts.deployment.addresses.values())
        self._meta_checked = False
        self._open_built = False

    def __repr__(self) -> str:
        return f"<ChainIndexer {self.prefix!r} from block {self.start_block}>"

    # ------------------------------------------------------------------ keys
    def _key(self, name: str) -> str:
        return self.prefix + name

    def _job_key(self, job_id: int) -> str:
        return f"{self.prefix}job:{job_id}"

    # ------------------------------------------------------------------ reads
    @property
    def indexed_block(self) -> int:
        """The last block indexed (``start_block - 1`` before the first sync)."""
        value = self.redis.get(self._key("head"))
        return self.start_block - 1 if value is None else int(value)

    def head_lag(self) -> int:
        """How many blocks the chain head is ahead of the index (0 when caught up)."""
        return max(0, int(self.w3.eth.block_number) - self.indexed_block)

    def events(self, *, job_id: int | None = None, name: str | None = None) -> list[ChainEvent]:
        """Indexed events in chain order, optionally only those about ``job_id`` and/or
        named ``name``."""
        source = self._key("order") if job_id is None else self._job_key(job_id)
        keys = self.redis.zrange(source, 0, -1)
        if not keys:
            return []
        raw = self.redis.hmget(self._key("events"), keys)
        out = [_event_from_json(item)[0] for item in raw if item is not None]
        if name is not None:
            out = [event for event in out if event.name == name]
        out.sort(key=lambda e: (e.block_number, e.log_index))
        return out

    def job_records(self, *, verify: bool = False) -> dict[int, JobRecord]:
        """Every indexed job's record. With ``verify`` each is checked against the digest
        the contract stores now (which only holds when the index is caught up; an ended job's
        slot must be cleared); a mismatch raises ChainError naming the job."""
        raw = self.redis.hgetall(self._key("records"))
        records = {int(k): _record_from_json(v) for k, v in raw.items()}
        if verify:
            for job_id, record in sorted(records.items()):
                self._verify(job_id, record)
        return records

    def open_job_records(self) -> dict[int, JobRecord]:
        """The records of jobs not in a terminal state (posted, assigned, committed, under
        audit or appeal): what matching and settlement work on."""
        self._ensure_open_set()
        ids = sorted(int(i) for i in self.redis.smembers(self._key("open")))
        return self.records_of(ids)

    def records_of(self, job_ids: Sequence[int]) -> dict[int, JobRecord]:
        """The indexed records of ``job_ids`` (ids with no indexed record are left out)."""
        if not job_ids:
            return {}
        raw = self.redis.hmget(self._key("records"), [str(i) for i in job_ids])
        return {i: _record_from_json(r) for i, r in zip(job_ids, raw, strict=True)
                if r is not None}

    def _ensure_open_set(self) -> None:
        if self._open_built or self.redis.exists(self._key("open-built")):
            self._open_built = True
            return
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._key("head"))
                raw = pipe.hgetall(self._key("records"))
                open_ids = [k for k, v in raw.items() if self._is_open(_record_from_json(v))]
                pipe.multi()
                pipe.delete(self._key("open"))
                if open_ids:
                    pipe.sadd(self._key("open"), *open_ids)
                pipe.set(self._key("open-built"), 1)
                pipe.execute()
            except WatchError:
                return  # the indexer wrote meanwhile; the next call builds it
        self._open_built = True

    def job_record(self, job_id: int) -> JobRecord | None:
        """One job's record, None when no JobPosted event of it is indexed."""
        raw = self.redis.hget(self._key("records"), str(job_id))
        return None if raw is None else _record_from_json(raw)

    def _verify(self, job_id: int, record: JobRecord) -> None:
        if not self.contracts.record_matches(job_id, record):
            raise ChainError(
                f"job {job_id}: the indexed record does not match the contract's digest "
                f"(index at block {self.indexed_block}; not caught up, or events lost)"
            )

    # ------------------------------------------------------------------ sync
    def sync(self, max_blocks: int = 2000) -> SyncReport:
        """Index up to ``max_blocks`` new blocks, rewinding first if the chain reorganised."""
        if max_blocks < 1:
            raise BadInput(f"max_blocks must be >= 1, got {max_blocks}")
        self._check_meta()
        reorged = 0
        for _attempt in range(_SYNC_ATTEMPTS):
            try:
                reorged += self._rewind_if_reorged()
                return self._read_forward(max_blocks, reorged)
            except _ChainMoved as moved:
                log.info("chain moved during sync (%s); retrying", moved)
            except _Raced as raced:
                log.info("%s; leaving this step to it", raced)
                indexed = self.indexed_block
                return SyncReport(indexed + 1, indexed, [], reorged)
        raise ChainError(
            f"indexer {self.prefix!r}: the chain kept changing during {_SYNC_ATTEMPTS} "
            "sync attempts"
        )

    def _check_meta(self) -> None:
        if self._meta_checked:
            return
        expected = {
            "chain_id": str(int(self.w3.eth.chain_id)),
            "market": self.contracts.deployment.address("JobMarket"),
            "start_block": str(self.start_block),
        }
        key = self._key("meta")
        self.redis.hsetnx(key, "chain_id", expected["chain_id"])
        self.redis.hsetnx(key, "market", expected["market"])
        self.redis.hsetnx(key, "start_block", expected["start_block"])
        stored = {_text(k): _text(v) for k, v in self.redis.hgetall(key).items()}
        for field, value in expected.items():
            if stored.get(field) != value:
                raise ConfigError(
                    f"indexer prefix {self.prefix!r} holds {field}={stored.get(field)!r}, "
                    f"not {value!r}: it indexes another deployment; use another prefix"
                )
        self._meta_checked = True

    def _rewind_if_reorged(self) -> int:
        indexed = self.indexed_block
        if indexed < self.start_block:
            return 0
        stored = self._stored_hashes([indexed]).get(indexed)
        if stored is not None and stored == self._chain_hashes(indexed, indexed).get(indexed):
            return 0
        ancestor = self._find_ancestor(indexed)
        log.warning(
            "reorg: block %d is no longer on the chain; rewinding to %d", indexed, ancestor
        )
        self._rewind(indexed, ancestor)
        return indexed - ancestor

    def _find_ancestor(self, indexed: int) -> int:
        """Walk back in doubling windows until a stored block is still on the chain."""
        top, window = indexed, _ANCESTOR_WINDOW
        while top >= self.start_block:
            low = max(self.start_block, top - window + 1)
            numbers = list(range(low, top + 1))
            found = common_ancestor(self._stored_hashes(numbers), self._chain_hashes(low, top))
            if found is not None:
                return found
            top, window = low - 1, window * 2
        return self.start_block - 1

    def _rewind(self, indexed: int, ancestor: int) -> None:
        order, events_key = self._key("order"), self._key("events")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._key("head"))
                if self._head_of(pipe) != indexed:
                    raise _Raced("another indexer moved the head")
                orphans = pipe.zrangebyscore(order, ancestor + 1, "+inf")
                raw = pipe.hmget(events_key, orphans) if orphans else []
                affected = sorted(
                    {
                        int(event.args["jobId"])
                        for event, _ in (_event_from_json(r) for r in raw if r is not None)
                        if event.name in JOB_EVENTS
                    }
                )
                rebuilt = {
                    job_id: self._rebuild_job(pipe, job_id, ancestor) for job_id in affected
                }
                counts: dict[str, int] = {}
                held = pipe.hmget(self._key("records"), [str(i) for i in affected]) \
                    if affected else []
                for job_id, current in zip(affected, held, strict=True):
                    _count_record(counts, None if current is None
                                  else _record_from_json(current), -1)
                    _count_record(counts, rebuilt[job_id], +1)
                for item in raw:
                    if item is not None:
                        for tally in audit_tallies(_event_from_json(item)[0]):
                            counts[tally] = counts.get(tally, 0) - 1
                pipe.multi()
                if orphans:
                    pipe.hdel(events_key, *orphans)
                pipe.zremrangebyscore(order, ancestor + 1, "+inf")
                pipe.zremrangebyscore(self._key("other"), ancestor + 1, "+inf")
                for job_id, record in rebuilt.items():
                    pipe.zremrangebyscore(self._job_key(job_id), ancestor + 1, "+inf")
                    self._put_record(pipe, job_id, record)
                self._add_tallies(pipe, counts)
                pipe.hdel(self._key("blocks"), *range(ancestor + 1, indexed + 1))
                if ancestor < self.start_block:
                    # rewound whole: what was pruned is read from the chain again, and
                    # counted again when pruned again
                    pipe.delete(self._key("pruned"))
                pipe.set(self._key("head"), ancestor)
                pipe.execute()
            except WatchError:
                raise _Raced("another indexer wrote during the rewind") from None

    def _rebuild_job(self, pipe: Any, job_id: int, upto: int) -> JobRecord | None:
        keys = pipe.zrangebyscore(self._job_key(job_id), "-inf", upto)
        raw = pipe.hmget(self._key("events"), keys) if keys else []
        events = sorted(
            (_event_from_json(r)[0] for r in raw if r is not None),
            key=lambda e: (e.block_number, e.log_index),
        )
        return _fold(job_id, None, events)

    def _read_forward(self, max_blocks: int, reorged: int) -> SyncReport:
        indexed = self.indexed_block
        head = int(self.w3.eth.block_number)
        to_block = min(head, indexed + max_blocks)
        if to_block <= indexed:
            return SyncReport(indexed + 1, indexed, [], reorged)
        headers = self._headers(indexed + 1, to_block)
        tip = self._stored_hashes([indexed]).get(indexed) if indexed >= self.start_block else None
        broken = first_broken_link(tip, headers)
        if broken is not None:
            raise _ChainMoved(f"block {broken} does not extend the indexed chain")
        by_number = {h.number: h for h in headers}
        logs = self.w3.eth.get_logs(
            {"fromBlock": indexed + 1, "toBlock": to_block, "address": self._addresses}
        )
        stored: list[tuple[ChainEvent, str]] = []
        for entry in logs:
            header = by_number[int(entry["blockNumber"])]
            if HexBytes(entry["blockHash"]).to_0x_hex() != header.hash:
                raise _ChainMoved(f"a log of block {header.number} is from another fork")
            event = self.contracts.decode_log(entry)
            if event is not None:
                stored.append((event, header.parent_hash))
        if self._chain_hashes(to_block, to_block).get(to_block) != headers[-1].hash:
            raise _ChainMoved(f"block {to_block} changed while its logs were read")
        stored.sort(key=lambda item: (item[0].block_number, item[0].log_index))
        self._write_range(indexed, headers, stored)
        return SyncReport(indexed + 1, to_block, [event for event, _ in stored], reorged)

    def _write_range(
        self, indexed: int, headers: Sequence[BlockRef], stored: Sequence[tuple[ChainEvent, str]]
    ) -> None:
        by_job: dict[int, list[ChainEvent]] = {}
        for event, _ in stored:
            if event.name in JOB_EVENTS:
                by_job.setdefault(int(event.args["jobId"]), []).append(event)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._key("head"))
                if self._head_of(pipe) != indexed:
                    raise _Raced("another indexer moved the head")
                records: dict[int, JobRecord | None] = {}
                ids = list(by_job)
                held = pipe.hmget(self._key("records"), [str(i) for i in ids]) if ids else []
                counts: dict[str, int] = {}
                for job_id, current in zip(ids, held, strict=True):
                    before = None if current is None else _record_from_json(current)
                    records[job_id] = _fold(job_id, before, by_job[job_id])
                    _count_record(counts, before, -1)
                    _count_record(counts, records[job_id], +1)
                for event, _ in stored:
                    for tally in audit_tallies(event):
                        counts[tally] = counts.get(tally, 0) + 1
                pipe.multi()
                pipe.hset(
                    self._key("blocks"),
                    mapping={h.number: json.dumps([h.hash, h.parent_hash]) for h in headers},
                )
                # and forget as many hashes that fell more than KEPT_BLOCK_HASHES behind
                old = [h.number - KEPT_BLOCK_HASHES for h in headers
                       if h.number - KEPT_BLOCK_HASHES >= self.start_block]
                if old:
                    pipe.hdel(self._key("blocks"), *old)
                if stored:
                    pipe.hset(
                        self._key("events"),
                        mapping={_event_key(e): _event_to_json(e, parent) for e, parent in stored},
                    )
                    pipe.zadd(self._key("order"), {_event_key(e): e.block_number for e, _ in stored})
                    other = {_event_key(e): e.block_number for e, _ in stored
                             if e.name not in JOB_EVENTS}
                    if other:
                        pipe.zadd(self._key("other"), other)
                for job_id, job_events in by_job.items():
                    pipe.zadd(
                        self._job_key(job_id), {_event_key(e): e.block_number for e in job_events}
                    )
                    self._put_record(pipe, job_id, records[job_id])
                self._add_tallies(pipe, counts)
                pipe.set(self._key("head"), headers[-1].number)
                pipe.execute()
            except WatchError:
                raise _Raced("another indexer wrote this range") from None

    def _head_of(self, pipe: Any) -> int:
        value = pipe.get(self._key("head"))
        return self.start_block - 1 if value is None else int(value)

    def _put_record(self, pipe: Any, job_id: int, record: JobRecord | None) -> None:
        if record is None:
            pipe.hdel(self._key("records"), str(job_id))
        else:
            pipe.hset(self._key("records"), str(job_id), _record_to_json(record))
        if record is not None and self._is_open(record):
            pipe.sadd(self._key("open"), str(job_id))
        else:
            pipe.srem(self._key("open"), str(job_id))
        ended_as = record.state if record is not None and record.state.terminal else None
        if ended_as is not None:
            # when the index saw it end (wall time): blob and job retention count from here
            pipe.zadd(self._key("ended"), {str(job_id): self.clock()}, nx=True)
        else:  # not ended (again, after a rewind): nothing to retain or prune yet
            pipe.zrem(self._key("ended"), str(job_id))
        for state in TERMINAL_STATES:  # the same, by final state (a rewind may change it)
            if state == ended_as:
                pipe.zadd(self._ended_key(state), {str(job_id): self.clock()}, nx=True)
            else:
                pipe.zrem(self._ended_key(state), str(job_id))

    def _ended_key(self, state: JobState) -> str:
        return self._key(f"ended:{state.name.lower()}")

    def ended_counts(self, start: float, bucket_s: int, buckets: int) -> dict[str, list[int]]:
        """Jobs the index saw end in each of ``buckets`` intervals of ``bucket_s`` seconds from
        ``start``, by final state (``finalized``, ``slashed``, ``refunded``): one count per
        interval, however many jobs ended in it."""
        self._ensure_ended_by_state()
        states = sorted(TERMINAL_STATES)
        with self.redis.pipeline(transaction=False) as pipe:
            for state in states:
                for i in range(buckets):
                    low = start + i * bucket_s
                    pipe.zcount(self._ended_key(state), low, f"({low + bucket_s}")
            counts = pipe.execute()
        return {state.name.lower(): [int(n) for n in counts[k * buckets:(k + 1) * buckets]]
                for k, state in enumerate(states)}

    def _ensure_ended_by_state(self) -> None:
        """An index written before the end times were kept by final state gets them once from
        ``ended`` and the records (written only if no sync, rewind or prune ran meanwhile)."""
        if self.redis.exists(self._key("ended-states-built")):
            return
        for _attempt in range(_SYNC_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._key("head"), self._key("pruned"))
                    times = pipe.zrange(self._key("ended"), 0, -1, withscores=True)
                    raw = pipe.hmget(self._key("records"), [i for i, _ in times]) \
                        if times else []
                    by_state: dict[JobState, dict[str, float]] = {}
                    for (job_id, at), item in zip(times, raw, strict=True):
                        if item is not None:
                            state = _record_from_json(item).state
                            by_state.setdefault(state, {})[_text(job_id)] = at
                    pipe.multi()
                    for state, members in by_state.items():
                        if state in TERMINAL_STATES:
                            pipe.zadd(self._ended_key(state), members, nx=True)
                    pipe.set(self._key("ended-states-built"), 1)
                    pipe.execute()
                    return
                except WatchError:
                    continue
        raise ServiceUnavailable("the index kept changing while its end times were sorted")

    def ended_since(self, since: float) -> dict[int, JobRecord]:
        """The records of jobs the index saw end at or after ``since`` (unix seconds) and
        still holds."""
        ids = [int(i) for i in self.redis.zrangebyscore(self._key("ended"), since, "+inf")]
        return self.records_of(ids)

    # ------------------------------------------------------------------ pruning
    def prune(self, ended_before: float, *, limit: int = 500,
              forget_first: Callable[[list[int]], object] | None = None) -> list[int]:
        """Forget up to ``limit`` jobs the index saw end before ``ended_before`` (unix
        seconds) whose last event is more than :data:`KEPT_BLOCK_HASHES` blocks behind the
        indexed head: their events, event list and record (their final state and audit events
        are added to the ``pruned`` tallies). Returns the ids forgotten.

        ``forget_first`` is called with the ids about to be forgotten before the index forgets
        them (the market drops its own keys of them there): a crash in between leaves the jobs
        indexed and the next round forgets them again, never keys of a job the index no longer
        names. It may be called again with the same ids (it must be idempotent).

        Nothing a reorg the index handles can touch is forgotten (a rewind never goes below
        the kept block hashes), and a job is never forgotten while open. What it forgets is
        read first, then deleted in one transaction that fails if the indexer wrote meanwhile
        (tried again, a few times: the indexer writes every block)."""
        if limit < 1:
            raise BadInput(f"limit must be >= 1, got {limit}")
        self._ensure_prune_sets()
        for _attempt in range(_SYNC_ATTEMPTS):
            try:
                return self._prune_once(ended_before, limit, forget_first)
            except WatchError:
                continue
        return []  # the indexer kept writing: the next round prunes

    def _prune_once(self, ended_before: float, limit: int,
                    forget_first: Callable[[list[int]], object] | None) -> list[int]:
        head = self.indexed_block
        deep = head - KEPT_BLOCK_HASHES
        ended = self._key("ended")
        candidates = [int(i) for i in
                      self.redis.zrangebyscore(ended, "-inf", ended_before, start=0, num=limit)]
        reads = self.redis.pipeline(transaction=False)
        for job_id in candidates:
            reads.zrange(self._job_key(job_id), 0, -1, withscores=True)
        forget: dict[int, list[bytes]] = {}
        for job_id, keys in zip(candidates, reads.execute() if candidates else [],
                                strict=True):
            if keys and max(score for _, score in keys) > deep:
                continue  # still within reach of a reorg: a later round
            forget[job_id] = [key for key, _ in keys]
        tallies: dict[str, int] = {}
        records = self.records_of(list(forget))
        for job_id in list(forget):
            record = records.get(job_id)
            if record is not None and not record.state.terminal:  # never forget an open job
                del forget[job_id]
                continue
            if record is not None:
                name = f"state:{record.state.name.lower()}"
                tallies[name] = tallies.get(name, 0) + 1
        if not forget:
            return []
        keys = [key for job_keys in forget.values() for key in job_keys]
        for item in self.redis.hmget(self._key("events"), keys) if keys else []:
            if item is not None:
                for tally in audit_tallies(_event_from_json(item)[0]):
                    tallies[tally] = tallies.get(tally, 0) + 1
        ids = sorted(forget)
        if forget_first is not None:
            forget_first(ids)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self._key("head"))
            if self._head_of(pipe) != head:
                raise WatchError("the indexer moved on while the prune read")
            pipe.multi()
            if keys:
                pipe.hdel(self._key("events"), *keys)
                pipe.zrem(self._key("order"), *keys)
            names = [str(i) for i in ids]
            pipe.delete(*(self._job_key(i) for i in ids))
            pipe.hdel(self._key("records"), *names)
            pipe.srem(self._key("open"), *names)
            pipe.zrem(ended, *names)
            for state in TERMINAL_STATES:
                pipe.zrem(self._ended_key(state), *names)
            pipe.zadd(self._key("pruned-max"), {"job": ids[-1]}, gt=True)
            for name, count in tallies.items():
                pipe.hincrby(self._key("pruned"), name, count)
            self._add_tallies(pipe, {name: -count for name, count in tallies.items()})
            pipe.execute()
        return ids

    def prune_unrelated_events(self, *, limit: int = 500) -> int:
        """Forget up to ``limit`` of the events about no job (token transfers, stake changes)
        that are more than :data:`KEPT_BLOCK_HASHES` blocks behind the indexed head. Returns
        how many it forgot (``limit``: there may be more)."""
        if limit < 1:
            raise BadInput(f"limit must be >= 1, got {limit}")
        self._ensure_prune_sets()
        for _attempt in range(_SYNC_ATTEMPTS):
            head = self.indexed_block
            other = self.redis.zrangebyscore(self._key("other"), "-inf",
                                             head - KEPT_BLOCK_HASHES, start=0, num=limit)
            if not other:
                return 0
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._key("head"))
                    if self._head_of(pipe) != head:
                        continue
                    pipe.multi()
                    pipe.hdel(self._key("events"), *other)
                    pipe.zrem(self._key("order"), *other)
                    pipe.zrem(self._key("other"), *other)
                    pipe.execute()
                except WatchError:
                    continue
            return len(other)
        return 0  # the indexer kept writing: the next round prunes

    def was_pruned(self, job_id: int) -> bool:
        """Whether ``job_id`` was forgotten by :meth:`prune` (ended long ago): it has no record
        and no events here, and a job at or after it was pruned (ids are consecutive from 1, so
        every id up to that one was posted)."""
        if job_id < 1:
            return False
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self._key("pruned-max"), "job")
            pipe.hexists(self._key("records"), str(job_id))
            pipe.exists(self._job_key(job_id))
            highest, has_record, has_events = pipe.execute()
        return highest is not None and job_id <= int(highest) and not has_record \
            and not has_events

    def _ensure_prune_sets(self) -> None:
        """An index written before pruning existed lacks the ``ended`` times of the jobs that
        ended then and the ``other`` list: both are built once (the jobs' retention counts from
        now), so nothing indexed before is kept forever."""
        if self.redis.exists(self._key("prune-built")):
            return
        now = self.clock()
        ended = {_text(job_id): now for job_id, raw in
                 self.redis.hgetall(self._key("records")).items()
                 if _record_from_json(raw).state.terminal}
        other: dict[str, int] = {}
        for key, raw in self.redis.hgetall(self._key("events")).items():
            event, _ = _event_from_json(raw)
            if event.name not in JOB_EVENTS:
                other[_text(key)] = event.block_number
        with self.redis.pipeline(transaction=True) as pipe:
            if ended:
                pipe.zadd(self._key("ended"), ended, nx=True)
            if other:
                pipe.zadd(self._key("other"), other)
            pipe.set(self._key("prune-built"), 1)
            pipe.execute()

    def history_tallies(self) -> dict[str, int]:
        """Counts over all history, the indexed part and the pruned part read in one
        transaction (a prune between two reads would count its jobs twice): ``state:<state>``
        per job, ``audit:<drawn|not_drawn|passed|failed|voided|appealed>`` per audit event."""
        self._ensure_live_tallies()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._key("tallies"))
            pipe.hgetall(self._key("pruned"))
            live, pruned = pipe.execute()
        tallies = {_text(k): int(v) for k, v in pruned.items()}
        for name, count in live.items():
            if int(count):
                tallies[_text(name)] = tallies.get(_text(name), 0) + int(count)
        return tallies

    def counted_tallies(self) -> dict[str, int]:
        """:meth:`history_tallies` counted afresh from every record and event held (what the
        running tallies must always equal; what they are built from once)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._key("records"))
            pipe.hgetall(self._key("events"))
            pipe.hgetall(self._key("pruned"))
            records, events, pruned = pipe.execute()
        tallies = {_text(k): int(v) for k, v in pruned.items()}
        for name, count in _scan_tallies(records.values(), events.values()).items():
            tallies[name] = tallies.get(name, 0) + count
        return tallies

    def _add_tallies(self, pipe: Any, counts: Mapping[str, int]) -> None:
        for name, count in counts.items():
            if count:
                pipe.hincrby(self._key("tallies"), name, count)

    def _ensure_live_tallies(self) -> None:
        """The running tallies of what the index holds (``tallies``: every write, rewind and
        prune moves them in its own transaction) are counted once from the records and events
        of an index written before them; the count is written only if no sync, rewind or prune
        ran meanwhile."""
        if self.redis.exists(self._key("tallies-built")):
            return
        for _attempt in range(_SYNC_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._key("head"), self._key("pruned"))
                    records = pipe.hgetall(self._key("records"))
                    events = pipe.hgetall(self._key("events"))
                    counted = _scan_tallies(records.values(), events.values())
                    pipe.multi()
                    pipe.delete(self._key("tallies"))
                    if counted:
                        pipe.hset(self._key("tallies"), mapping=counted)
                    pipe.set(self._key("tallies-built"), 1)
                    pipe.execute()
                    return
                except WatchError:
                    continue
        raise ServiceUnavailable("the index kept changing while its tallies were counted")

    def pruned_tallies(self) -> dict[str, int]:
        """What pruning forgot, by tally: ``state:<final state>`` (jobs) and
        ``audit:<drawn|not_drawn|passed|failed>`` (events)."""
        raw = self.redis.hgetall(self._key("pruned"))
        return {_text(k): int(v) for k, v in raw.items()}

    def _is_open(self, record: JobRecord) -> bool:
        """Not ended, and not a posted job paying under ``min_reward`` (dormant)."""
        if record.state.terminal:
            return False
        return not (record.state == JobState.POSTED and record.reward < self.min_reward)

    # ------------------------------------------------------------------ chain and store reads
    def _stored_hashes(self, numbers: Iterable[int]) -> dict[int, str]:
        numbers = list(numbers)
        if not numbers:
            return {}
        raw = self.redis.hmget(self._key("blocks"), numbers)
        return {n: json.loads(r)[0] for n, r in zip(numbers, raw, strict=True) if r is not None}

    def _chain_hashes(self, low: int, high: int) -> dict[int, str | None]:
        """Hashes of chain blocks ``low..high`` (None for numbers above the chain head)."""
        head = int(self.w3.eth.block_number)
        found = {h.number: h.hash for h in self._headers(low, min(high, head))}
        return {n: found.get(n) for n in range(low, high + 1)}

    def _headers(self, low: int, high: int) -> list[BlockRef]:
        if high < low:
            return []
        try:
            with self.w3.batch_requests() as batch:
                for number in range(low, high + 1):
                    batch.add(self.w3.eth.get_block(number))
                blocks = batch.execute()
        except BlockNotFound:
            raise _ChainMoved(f"a block in {low}..{high} vanished") from None
        return [
            BlockRef(
                int(block["number"]),
                HexBytes(block["hash"]).to_0x_hex(),
                HexBytes(block["parentHash"]).to_0x_hex(),
            )
            for block in blocks
        ]


# ---------------------------------------------------------------------------- encoding


def _fold(job_id: int, record: JobRecord | None, events: Sequence[ChainEvent]) -> JobRecord | None:
    try:
        for event in events:
            record = apply_event(record, event.name, event.args)
    except ValueError as exc:
        log.warning("job %d cannot be rebuilt from indexed events: %s", job_id, exc)
        return None
    return record


def _count_record(counts: dict[str, int], record: JobRecord | None, sign: int) -> None:
    if record is not None:
        name = f"state:{record.state.name.lower()}"
        counts[name] = counts.get(name, 0) + sign


def _scan_tallies(records: Iterable[Any], events: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for raw in records:
        _count_record(counts, _record_from_json(raw), +1)
    for raw in events:
        for tally in audit_tallies(_event_from_json(raw)[0]):
            counts[tally] = counts.get(tally, 0) + 1
    return counts


def audit_tallies(event: ChainEvent) -> list[str]:
    """The audit tallies an event counts towards (what the market's metrics report)."""
    if event.name == "AuditDrawn":
        return ["audit:drawn" if event.args.get("audited") else "audit:not_drawn"]
    if event.name == "AuditResolved":
        return ["audit:passed" if event.args.get("passed") else "audit:failed"]
    if event.name == "AuditVoided":
        return ["audit:voided"]
    if event.name == "AuditAppealed":
        return ["audit:appealed"]
    return []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event_key(event: ChainEvent) -> str:
    return f"{event.tx_hash}:{event.log_index}"


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$b"}:
        return bytes.fromhex(value["$b"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _event_to_json(event: ChainEvent, parent_hash: str) -> str:
    return json.dumps(
        {
            "name": event.name,
            "args": {k: _encode_value(v) for k, v in event.args.items()},
            "block_number": event.block_number,
            "block_hash": event.block_hash,
            "parent_hash": parent_hash,
            "tx_hash": event.tx_hash,
            "log_index": event.log_index,
            "address": event.address,
        },
        separators=(",", ":"),
    )


def _event_from_json(raw: str | bytes) -> tuple[ChainEvent, str]:
    data = json.loads(raw)
    event = ChainEvent(
        name=data["name"],
        args={k: _decode_value(v) for k, v in data["args"].items()},
        block_number=data["block_number"],
        block_hash=data["block_hash"],
        tx_hash=data["tx_hash"],
        log_index=data["log_index"],
        address=data["address"],
    )
    return event, data["parent_hash"]


def _record_to_json(record: JobRecord) -> str:
    values: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, JobState):
            value = int(value)
        values[f.name] = value
    return json.dumps(values, separators=(",", ":"))


def _record_from_json(raw: str | bytes) -> JobRecord:
    data = json.loads(raw)
    data["state"] = JobState(data["state"])
    data["spec_hash"] = bytes.fromhex(data["spec_hash"])
    data["result_hash"] = bytes.fromhex(data["result_hash"])
    return JobRecord(**data)
