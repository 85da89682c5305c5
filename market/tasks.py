"""The market's Celery app: periodic indexing, matching, lease expiry and settlement.

    celery -A meshcompute.market.tasks worker --pool solo -B     # or: mesh market tasks (MESH_TASK_THREADS)

Broker and result backend are ``REDIS_URL`` (``settings.redis_url``). Tasks carry no payload
beyond ids (the beat tasks take none); each calls one function of :mod:`meshcompute.market.rounds` on the
process's :class:`MarketRuntime`, and every side effect there is idempotent, so a task that is
retried, duplicated or cut off by a crash does no harm when it runs again.

With a thread pool (``--pool threads``, or ``MESH_TASK_THREADS`` > 1 for ``mesh market
tasks``) different rounds run at the same time (a settlement waiting for its receipt does not
hold up matching), but never two runs of the same round, in this process or any
other worker on the same Redis: each round holds ``<prefix>round-lock:<name>`` while it runs
(SET NX with an expiry, so a crashed holder frees it) and a run that finds it held is skipped
(the next beat runs it again).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from meshcompute.market import gc, rounds
from meshcompute.market.runtime import MarketRuntime
from meshcompute.settings import Settings, get_settings

log = logging.getLogger("market.tasks")

#: Default seconds between runs of each periodic task (settings ``MESH_*_INTERVAL_S``
#: override them: ``index_interval_s``, ``match_interval_s``, ...).
INTERVALS = {"index": 1.0, "match": 1.0, "expire": 2.0, "settle": 3.0, "gc": 600.0}

app = Celery("market")


def intervals(settings: Settings) -> dict[str, float]:
    """The beat schedule's intervals from ``settings``."""
    return {
        "index": settings.index_interval_s,
        "match": settings.match_interval_s,
        "expire": settings.expire_interval_s,
        "settle": settings.settle_interval_s,
        "gc": settings.gc_interval_s,
    }


def configure(redis_url: str | None, schedule: dict[str, float] | None = None) -> Celery:
    """Point the Celery app at ``redis_url`` and install the beat schedule (``schedule``:
    task name -> seconds; by default :func:`intervals` of the process settings)."""
    schedule = intervals(get_settings()) if schedule is None else schedule
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            name: {
                "task": f"market.{name}",
                "schedule": interval,
                # a backlog after an outage is useless: drop runs older than two intervals
                "options": {"expires": max(2.0, 2 * interval)},
            }
            for name, interval in schedule.items()
        },
    )
    return app


configure(get_settings().redis_url)

_runtime: MarketRuntime | None = None


_runtime_lock = threading.Lock()


def runtime() -> MarketRuntime:
    """This process's runtime, built from settings on first use (once, across threads)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = MarketRuntime.from_settings(get_settings())
        return _runtime


def use_runtime(rt: MarketRuntime | None) -> None:
    """Make the tasks use ``rt`` (tests run them in-process against their anvil and Redis)."""
    global _runtime
    _runtime = rt


#: Longest a round may hold its lock (a crashed holder's lock lapses after this).
ROUND_LOCK_S = 120
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@contextmanager
def round_lock(rt: MarketRuntime, name: str) -> Iterator[bool]:
    """Hold the lock of round ``name`` for the block; yields False (and holds nothing) when
    another run of that round holds it."""
    key = f"{rt.state.prefix}round-lock:{name}"
    token = uuid.uuid4().hex
    if not rt.redis.set(key, token, nx=True, ex=ROUND_LOCK_S):
        yield False
        return
    try:
        yield True
    finally:
        rt.redis.eval(_UNLOCK, 1, key, token)


_SKIPPED: dict[str, Any] = {"skipped": "another run of this round is in progress"}


@app.task(name="market.index")
def index_chain() -> dict[str, Any]:
    """Follow the chain's events from where the index stopped (reorgs rewound)."""
    rt = runtime()
    with round_lock(rt, "index") as held:
        return rounds.index_round(rt) if held else dict(_SKIPPED)


@app.task(name="market.match")
def match_jobs() -> dict[str, Any]:
    """Offer queued jobs to eligible workers."""
    rt = runtime()
    with round_lock(rt, "match") as held:
        if not held:
            return dict(_SKIPPED)
        report = rounds.match_round(rt)
    return {
        "queued": report.queued,
        "workers": report.workers,
        "offered": [list(pair) for pair in report.offered],
        "spec_problems": {str(k): v for k, v in report.spec_problems.items()},
        "finished_leases": report.finished_leases,
    }


@app.task(name="market.expire")
def expire_leases() -> dict[str, Any]:
    """Take back expired leases and uncollected offers."""
    rt = runtime()
    with round_lock(rt, "expire") as held:
        if not held:
            return dict(_SKIPPED)
        report = rounds.expire_round(rt)
    return {"leases": report.expired_leases, "offers": report.expired_offers}


@app.task(name="market.gc")
def collect_blobs() -> dict[str, Any]:
    """Delete blobs no open job needs, past their retention (:mod:`meshcompute.market.gc`)."""
    rt = runtime()
    with round_lock(rt, "gc") as held:
        return gc.collect_round(rt) if held else dict(_SKIPPED)


@app.task(name="market.settle")
def settle_jobs() -> dict[str, Any]:
    """Finalize payable jobs in batches."""
    rt = runtime()
    with round_lock(rt, "settle") as held:
        return rounds.settle_round(rt) if held else dict(_SKIPPED)
