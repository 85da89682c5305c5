"""Prometheus metrics, read at scrape time from the chain index and Redis.

The API and the Celery processes are separate, and either may restart, so counters the tasks
produce (lease expiries, settlement batches) are kept in Redis by :class:`MarketState` and
exposed here by a custom collector; job states and audit outcomes come from the indexed chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshcompute.core.job import JobState
from meshcompute.market.runtime import MarketRuntime

log = logging.getLogger("market.metrics")

BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250)


class MarketCollector(Collector):
    def __init__(self, rt: MarketRuntime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        jobs = GaugeMetricFamily("mesh_jobs", "Jobs on chain by state (indexed, and those "
                                 "pruned after their retention)", labels=["state"])
        tallies = rt.indexer.history_tallies()
        for state in JobState:
            if state != JobState.NONE:
                jobs.add_metric([state.name.lower()],
                                tallies.get(f"state:{state.name.lower()}", 0))
        yield jobs

        audits = CounterMetricFamily(
            "mesh_audit_outcomes", "Audit draws and verdicts seen on chain", labels=["outcome"]
        )
        for name in ("drawn", "not_drawn", "passed", "failed"):
            audits.add_metric([name], tallies.get(f"audit:{name}", 0))
        yield audits

        stored = rt.state.metrics()
        for name, help_ in (
            ("lease_expiries", "Leases that expired before the worker committed"),
            ("offer_expiries", "Offers no worker collected in time"),
            ("leases_released", "Leases given back by their worker"),
            ("jobs_failed_runs", "Runs a worker reported as failed"),
            ("settled_jobs", "Jobs finalized by the market's settlement batches"),
        ):
            counter = CounterMetricFamily(f"mesh_{name}", help_)
            counter.add_metric([], stored.get(name, 0))
            yield counter

        sizes = rt.state.batch_sizes()
        buckets = []
        for bound in BATCH_BUCKETS:
            buckets.append((str(bound), sum(n for size, n in sizes.items() if size <= bound)))
        buckets.append(("+Inf", sum(sizes.values())))
        yield HistogramMetricFamily(
            "mesh_settlement_batch_size",
            "Jobs per settlement transaction",
            buckets=buckets,
            sum_value=sum(size * n for size, n in sizes.items()),
        )

        head = int(rt.chain.w3.eth.block_number)
        indexed = int(rt.indexer.indexed_block)
        lag = GaugeMetricFamily("mesh_indexer_lag_blocks", "Chain head minus last indexed block")
        lag.add_metric([], max(head - indexed, 0))
        yield lag
        leases = GaugeMetricFamily("mesh_leases_open", "Leases currently held by workers")
        leases.add_metric([], len(rt.state.all_leases()))
        yield leases
        workers = GaugeMetricFamily("mesh_workers_registered", "Registered workers")
        workers.add_metric([], len(rt.state.workers()))
        yield workers


def render_metrics(rt: MarketRuntime) -> bytes:
    registry = CollectorRegistry()
    registry.register(MarketCollector(rt))
    return generate_latest(registry)
