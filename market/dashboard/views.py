"""What each dashboard page reads (docs/dashboard-api.md): the market's index for which jobs
exist and their states, the chain for money (contract state and events), folded by the pure
:mod:`meshcompute.core.dashboard`.

Every figure about money is read from the chain, never from the market: the provider page's
earnings are ``mesh earnings --json`` itself (:func:`meshcompute.chain.earnings.
earnings_report` is a fresh :class:`~meshcompute.chain.earnings.EarningsLedger`'s report; the
page's ledger is kept and extended block by block). Pages many people open at once (the overview, the stream's tick) are
computed at most once a second per process and shared.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from web3 import Web3

from meshcompute.chain.artifacts import load_artifact
from meshcompute.chain.earnings import BlockTimes, EarningsLedger, event_topic
from meshcompute.core import dashboard as fold
from meshcompute.core.lease import heartbeating
from meshcompute.core.spec import client_group
from meshcompute.errors import BadInput, NotFound
from meshcompute.market import operations
from meshcompute.market.runtime import MarketRuntime

#: The contracts a page may build transactions for, by the key the page knows them by.
WALLET_CONTRACTS = {"token": "MeshCredit", "stake_manager": "StakeManager",
                    "job_market": "JobMarket", "verifier_registry": "VerifierRegistry"}


class _PerSecond:
    """A value computed at most once per key (the index's head and the current second), shared
    by every request of this process: a hundred open dashboards cost one computation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Any = None
        self._value: Any = None

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if self._key == key:
                return self._value
        value = compute()
        with self._lock:
            self._key, self._value = key, value
        return value

    def peek(self, key: Any) -> Any:
        """The value kept for ``key``, or None (computes nothing)."""
        with self._lock:
            return self._value if self._key == key else None


_overview = _PerSecond()
_tick = _PerSecond()


class _ByHead:
    """Pages of an address kept while the chain's head has not moved (their figures are the
    chain's at that head): a popular provider's page is computed once per block, not once per
    viewer. Bounded: the oldest entries go first."""

    def __init__(self, size: int = 256) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._pages: dict[tuple[Any, ...], Any] = {}

    def get(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._pages:
                return self._pages[key]
        value = compute()
        with self._lock:
            self._pages[key] = value
            while len(self._pages) > self._size:
                del self._pages[next(iter(self._pages))]
        return value


_by_head = _ByHead()


def _head_key(rt: MarketRuntime) -> tuple[Any, ...]:
    """The deployment and the chain's head block by hash (a number is reused after a reorg)."""
    head = rt.chain.w3.eth.get_block("latest")
    return rt.chain_id, rt.chain.deployment.address("JobMarket"), bytes(head["hash"])


def checked_address(value: str) -> str:
    """``value`` as a checksummed address, or BadInput naming what is wrong with it."""
    if not isinstance(value, str) or not Web3.is_address(value):
        raise BadInput(f"{value!r} is not an Ethereum address (0x and 40 hex digits)")
    return Web3.to_checksum_address(value)


def chain_status(rt: MarketRuntime) -> dict[str, Any]:
    head = int(rt.chain.w3.eth.block_number)
    indexed = int(rt.indexer.indexed_block)
    lag = max(0, head - indexed)
    limit = rt.settings.dashboard_stale_blocks
    return {"chain_id": rt.chain_id, "head": head, "indexed": indexed, "lag_blocks": lag,
            "stale": lag > limit, "stale_after_blocks": limit, "now": time.time()}


def status(rt: MarketRuntime) -> dict[str, Any]:
    """The chain's status as of this tick (``dashboard_tick_s``), read once per tick and
    process and shared by the stream's ticks and every overview: the stale sign lags the
    chain by at most one tick."""
    return _tick.get(_tick_key(rt), lambda: chain_status(rt))


def _tick_key(rt: MarketRuntime) -> tuple[Any, ...]:
    return id(rt), int(time.time() / rt.settings.dashboard_tick_s)


def tick(rt: MarketRuntime) -> dict[str, Any]:
    """What the event stream sends each tick: the chain's head and the index's, and whether
    the index is stale."""
    now = status(rt)
    return {key: now[key] for key in ("head", "indexed", "lag_blocks", "stale")}


def overview_json(rt: MarketRuntime) -> bytes:
    """The market at a glance, as the JSON the route sends: the chain's status of this tick,
    the rest computed and encoded once per index head and second and shared (ten open
    dashboards refetching it on every tick cost one computation and one encoding)."""
    now = time.time()
    chain = status(rt)
    body = _overview.get(_overview_key(rt, chain, now), lambda: _json(_overview_now(rt, now)))
    return _with_chain(body, chain)


def overview_kept(rt: MarketRuntime) -> bytes | None:
    """The overview when this tick's status and this second's overview are both computed
    already (no I/O: the route answers it on the event loop), else None."""
    chain = _tick.peek(_tick_key(rt))
    if chain is None:
        return None
    body = _overview.peek(_overview_key(rt, chain, time.time()))
    return None if body is None else _with_chain(body, chain)


def _overview_key(rt: MarketRuntime, chain: dict[str, Any], now: float) -> tuple[Any, ...]:
    return id(rt), chain["indexed"], int(now)


def _with_chain(body: bytes, chain: dict[str, Any]) -> bytes:
    return body[:-1] + b',"chain":' + _json(chain) + b"}"


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _overview_now(rt: MarketRuntime, now: float) -> dict[str, Any]:
    tallies = rt.indexer.history_tallies()
    jobs = fold.job_states(tallies)
    workers = [fold.WorkerRow(w.address, w.device, w.price_wei, w.slots, w.last_seen)
               for w in rt.state.workers()]
    next_id = int(rt.contracts.next_job_id())
    recent_ids = list(range(next_id - 1, max(0, next_id - 21), -1))
    records = rt.indexer.records_of(recent_ids)
    return {
        "workers": fold.workers_online(workers, now, rt.heartbeat_timeout_s),
        "jobs": jobs,
        "audits": fold.audit_outcomes(tallies),
        "slashes": {"count": jobs["by_state"]["slashed"]},
        "verifier_backlog": fold.verifier_backlog(jobs["by_state"]),
        "series": _series(rt, now),
        "recent": [{"job_id": job_id, "state": fold.state_name(r.state), "client": r.client,
                    "worker": fold.address_or_none(r.worker), "reward_wei": fold.wei(r.reward),
                    "group": _group_of(rt, r.client, r.spec_hash.hex())}
                   for job_id, r in sorted(records.items(), reverse=True)],
    }


def _series(rt: MarketRuntime, now: float) -> dict[str, Any]:
    start = fold.series_start(now)
    counts = rt.indexer.ended_counts(start, fold.SERIES_BUCKET_S, fold.SERIES_MINUTES)
    first = start // 60
    samples = rt.state.samples(first, first + fold.SERIES_MINUTES - 1)
    return {**fold.ended_series(counts, start), **fold.sampled_series(samples, start)}


def _group_of(rt: MarketRuntime, client: str, spec_sha: str) -> str | None:
    spec = rt.spec_or_none(spec_sha)
    if spec is None or spec.group is None:
        return None
    return client_group(client, spec.group)


def job_page(rt: MarketRuntime, job_id: int) -> dict[str, Any]:
    record = operations.job_record(rt, job_id)  # NotFound (404) or JobPruned (410)
    events = rt.indexer.events(job_id=job_id)
    spec_sha = record.spec_hash.hex()
    spec = rt.spec_or_none(spec_sha)
    times = BlockTimes(rt.chain.w3)
    output = record.result_hash.hex() if any(record.result_hash) else None
    return {
        "job_id": job_id,
        "state": fold.state_name(record.state),
        "group": client_group(record.client, spec.group) if spec and spec.group else None,
        "shard": spec.shard if spec and spec.group else None,
        "client": record.client,
        "worker": fold.address_or_none(record.worker),
        "auditor": fold.address_or_none(record.auditor),
        "reward_wei": fold.wei(record.reward),
        "audit_fee_wei": fold.wei(record.audit_fee),
        "collateral_wei": fold.wei(record.collateral),
        "audit_bps": record.audit_bps,
        "spec_sha256": spec_sha,
        "result_hash": "0x" + record.result_hash.hex(),
        "output_sha256": output,
        "record": fold.record_json(record),
        "timeline": fold.timeline(events, times.of),
        "audit": fold.audit_story(events),
        "verify_command": f"mesh verify {job_id}",
        "reclaimable": fold.reclaimable(record, rt.chain_now()),
    }


def group_page(rt: MarketRuntime, group: str) -> dict[str, Any]:
    shards = rt.state.group(group)
    if not shards:
        raise NotFound(f"group {group} is not known: no posted job's spec names it, or all its "
                       f"shards ended more than "
                       f"{operations.duration_text(rt.settings.job_retention_s)} ago and were "
                       "pruned")
    ids = [shards[i] for i in sorted(shards)]
    records = rt.indexer.records_of(ids)
    rows = []
    for shard in sorted(shards):
        job_id = shards[shard]
        record = records.get(job_id)
        rows.append({"shard": shard, "job_id": job_id,
                     "state": fold.state_name(record.state) if record else "pruned",
                     "worker": fold.address_or_none(record.worker) if record else None,
                     "reward_wei": fold.wei(record.reward) if record else None})
    first = records.get(ids[0])
    spec = rt.spec_or_none(first.spec_hash.hex()) if first else None
    expected = spec.shards if spec else len(ids)
    complete = len(ids) == expected and all(r["state"] == "finalized" for r in rows)
    return {"group": group, "complete": complete, "shards": rows}


#: Earning rows a provider page carries by default (the newest); ``?rows=all`` for every one.
PROVIDER_ROWS = 200


def provider_page(rt: MarketRuntime, address: str,
                  rows: int | None = PROVIDER_ROWS) -> dict[str, Any]:
    """``rows``: how many of the newest earning rows to carry (None: all, which is then
    ``mesh earnings --json`` exactly); the totals, days and statuses always count all."""
    who = checked_address(address)
    page = _by_head.get(("provider", who, *_head_key(rt)), lambda: _provider_page(rt, who))
    earnings = page["earnings"]
    listed = earnings["rows"]
    if rows is not None and len(listed) > rows:
        ordered = sorted(listed, key=lambda r: (r["block_number"], r["job_id"]))
        newest = ordered[len(ordered) - rows:]  # (not [-rows:]: rows=0 would keep them all)
        earnings = {**earnings, "rows": newest}
    return {**page, "earnings": earnings, "rows_total": len(listed),
            "worker": _worker_of(rt, who)}


def _worker_of(rt: MarketRuntime, who: str) -> dict[str, Any] | None:
    info = rt.state.worker(who)
    if info is None:
        return None
    return {"online": heartbeating(info.last_seen, time.time(), rt.heartbeat_timeout_s),
            "device": info.device, "price_wei": fold.wei(info.price_wei), "slots": info.slots,
            "last_seen": info.last_seen}


_ledgers: dict[tuple[Any, ...], EarningsLedger] = {}
_ledgers_lock = threading.Lock()


def _ledger(rt: MarketRuntime) -> EarningsLedger:
    """The process's earnings ledger of this deployment: a provider's history is read once,
    then extended by the blocks since its last view (``mesh earnings --json`` is a fresh
    ledger's report, so the figures are the same code's)."""
    # by the contracts object too: two nodes (tests' anvils) can hold one address and chain id;
    # the ledger keeps that object alive, so its id is not reused while the entry is here
    key = (id(rt.contracts), rt.chain_id, rt.chain.deployment.address("JobMarket"))
    with _ledgers_lock:
        if key not in _ledgers:
            _ledgers[key] = EarningsLedger(rt.contracts)
            while len(_ledgers) > 8:
                del _ledgers[next(iter(_ledgers))]
        return _ledgers[key]


def _provider_page(rt: MarketRuntime, who: str) -> dict[str, Any]:
    report = _ledger(rt).report(who).to_json()
    by_day, by_status = fold.earnings_by_day(report)
    position = rt.contracts.stake_of(who)
    record = rt.contracts.worker_record(who)
    stakes = rt.chain.deployment.address("StakeManager")
    return {
        "address": who,
        "earnings": report,
        "by_day": by_day,
        "by_status": by_status,
        "stake": {"free_wei": fold.wei(position.free), "locked_wei": fold.wei(position.locked),
                  "unbonding_wei": fold.wei(position.unbonding),
                  "unbonding_until": position.release_at,
                  "slashed_wei": fold.wei(position.slashed)},
        "record": {"completed": record.completed, "missed": record.missed,
                   "slashed": record.slashed, "audits_passed": record.audits_passed},
        "balance_wei": fold.wei(rt.contracts.balance_of(who)),
        "allowance_wei": fold.wei(rt.contracts.allowance(who, stakes)),
    }


def verifier_page(rt: MarketRuntime, address: str) -> dict[str, Any]:
    who = checked_address(address)
    return _by_head.get(("verifier", who, *_head_key(rt)), lambda: _verifier_page(rt, who))


def _verifier_page(rt: MarketRuntime, who: str) -> dict[str, Any]:
    contracts = rt.contracts
    topics = [event_topic(contracts, name) for name in fold.VERIFIER_EVENTS]
    events = contracts.events(
        topics=[topics, None, "0x" + "00" * 12 + who.lower().removeprefix("0x")],
        addresses=[rt.chain.deployment.address("JobMarket")])
    story = fold.verifier_story(events, BlockTimes(rt.chain.w3).of)
    seat = contracts.verifier_seat(who)
    return {
        "address": who,
        **story,
        "seat": None if seat is None else {
            "units": seat.units, "deposit_wei": fold.wei(seat.deposit),
            "leaving": seat.leaving},
    }


def contracts_info(rt: MarketRuntime) -> dict[str, Any]:
    """Addresses and ABIs (the artifacts the Python code uses) of what the page's wallet may
    call."""
    deployment = rt.chain.deployment
    return {"chain_id": rt.chain_id,
            **{key: {"address": deployment.address(name), "abi": load_artifact(name)["abi"]}
               for key, name in WALLET_CONTRACTS.items()}}
