"""The market's Celery app: periodic indexing, matching, lease expiry and settlement.

    celery -A market.tasks worker --pool solo -B     # or: mesh market tasks

Broker and result backend are ``REDIS_URL`` (``settings.redis_url``). Tasks carry no payload
beyond ids (the beat tasks take none); each calls one function of :mod:`market.rounds` on the
process's :class:`MarketRuntime`, and every side effect there is idempotent, so a task that is
retried, duplicated or cut off by a crash does no harm when it runs again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from market import rounds
from market.runtime import MarketRuntime
from meshcompute.settings import Settings, get_settings

log = logging.getLogger("market.tasks")

#: Default seconds between runs of each periodic task (settings ``MESH_*_INTERVAL_S``
#: override them: ``index_interval_s``, ``match_interval_s``, ...).
INTERVALS = {"index": 1.0, "match": 1.0, "expire": 2.0, "settle": 3.0}

app = Celery("market")


def intervals(settings: Settings) -> dict[str, float]:
    """The beat schedule's intervals from ``settings``."""
    return {
        "index": settings.index_interval_s,
        "match": settings.match_interval_s,
        "expire": settings.expire_interval_s,
        "settle": settings.settle_interval_s,
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


def runtime() -> MarketRuntime:
    """This process's runtime, built from settings on first use."""
    global _runtime
    if _runtime is None:
        _runtime = MarketRuntime.from_settings(get_settings())
    return _runtime


def use_runtime(rt: MarketRuntime | None) -> None:
    """Make the tasks use ``rt`` (tests run them in-process against their anvil and Redis)."""
    global _runtime
    _runtime = rt


@app.task(name="market.index")
def index_chain() -> dict[str, Any]:
    """Follow the chain's events from where the index stopped (reorgs rewound)."""
    return rounds.index_round(runtime())


@app.task(name="market.match")
def match_jobs() -> dict[str, Any]:
    """Offer queued jobs to eligible workers."""
    report = rounds.match_round(runtime())
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
    report = rounds.expire_round(runtime())
    return {"leases": report.expired_leases, "offers": report.expired_offers}


@app.task(name="market.settle")
def settle_jobs() -> dict[str, Any]:
    """Finalize payable jobs in batches."""
    return rounds.settle_round(runtime())
