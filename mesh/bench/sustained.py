"""``mesh bench sustained``: the end-to-end stack held under load for minutes, window by
window: jobs paid, audits drawn and audits judged, and what a job's record costs to read.

The end-to-end bench (``mesh bench e2e``) measures a 30 s window, too short to see what
accumulates: the audits the verifiers have not judged yet, the chain's history that every
log query spans, the verifiers' journals. This one keeps the e2e bench's stack (four workers,
two verifiers, 50-shard submissions) in a closed loop (its client keeps at most
``outstanding`` jobs posted and not final, audited jobs aside) for ``windows`` windows of
``window_s`` and reports each. The deployment's default audit window (600 s) keeps a verdict
that comes late from punishing a seat, so the run must end before the first audits near it.

Each window: blocks mined, JobPaid, AuditDrawn (drawn for audit) and AuditResolved events in
them; jobs outstanding; and the node's time to answer one job's log query twice: as the
services ask it (``record_logs_ms``: from just before its first event, once they know the
job) and from the deployment block (``full_history_logs_ms``, how every read began before),
each the median of five.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import replace
from typing import Any


def run_sustained_bench(*, windows: int = 8, window_s: float = 25.0,
                        outstanding: int = 600) -> dict[str, Any]:
    from meshcompute.chain.deploy import DeployParams
    from meshcompute.mesh.bench.stack_bench import E2E_PARAMS, warm_e2e_stack

    params = replace(E2E_PARAMS, audit_window_s=DeployParams().audit_window_s)
    if windows * window_s > 0.8 * params.audit_window_s:
        raise ValueError(f"{windows} windows of {window_s:g} s outlast 80 % of the "
                         f"{params.audit_window_s} s audit window: use fewer or shorter ones")
    rows: list[dict[str, Any]] = []
    with warm_e2e_stack(params=params) as load:
        stack, contracts = load.stack, load.contracts
        w3 = stack.chain.w3()
        stop = threading.Event()
        threads, errors = load.post_continuously(stop.is_set, max_outstanding=outstanding)
        try:
            last = w3.eth.block_number
            for _ in range(windows):
                start = time.perf_counter()
                while time.perf_counter() - start < window_s:
                    if errors:
                        raise errors[0]
                    stack.check_alive()
                    load.collect()
                    time.sleep(0.25)
                head = w3.eth.block_number
                elapsed = time.perf_counter() - start
                events = contracts.job_events(None, last + 1, head, names=(
                    "JobPaid", "AuditDrawn", "AuditResolved"))
                paid = sum(e.name == "JobPaid" for e in events)
                drawn = sum(e.name == "AuditDrawn" and bool(e.args.get("audited"))
                            for e in events)
                judged = sum(e.name == "AuditResolved" for e in events)
                rows.append({
                    "blocks": head - last,
                    "paid_per_s": round(paid / elapsed, 2),
                    "drawn_per_s": round(drawn / elapsed, 2),
                    "judged_per_s": round(judged / elapsed, 2),
                    "outstanding": load.outstanding(),
                    "outstanding_not_audited": load.outstanding(audited=False),
                    **_read_costs(contracts, load, head),
                })
                last = head
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    first, rest = rows[0], rows[1:] or rows
    return {
        "windows": windows,
        "window_s": window_s,
        "outstanding_jobs": outstanding,
        "paid_per_s_first": first["paid_per_s"],
        "paid_per_s_last": rows[-1]["paid_per_s"],
        "judged_per_s_mean": round(statistics.mean(r["judged_per_s"] for r in rest), 2),
        "drawn_per_s_mean": round(statistics.mean(r["drawn_per_s"] for r in rest), 2),
        "record_logs_ms_last": rows[-1]["record_logs_ms"],
        "full_history_logs_ms_last": rows[-1]["full_history_logs_ms"],
        "by_window": rows,
        "method": "mesh bench e2e's stack (4 workers, 2 verifiers, 50-shard submissions, "
                  "600 s audit window), warmed up once, its client keeping at most "
                  "outstanding_jobs posted and not final, audited jobs aside; per window the "
                  "JobPaid, AuditDrawn(audited) and AuditResolved events in the blocks mined "
                  "during it; means of judged/drawn leave out the first window",
    }


def _read_costs(contracts: Any, load: Any, head: int) -> dict[str, float]:
    """Milliseconds for the node to answer the log query of one final job's record: from
    just before the job's first event, as the services read it once they know the job, and
    from the deployment block, as every read began before (each the median of five)."""
    job_id = next(iter(load.final_at), None)
    if job_id is None:
        return {"record_logs_ms": 0.0, "full_history_logs_ms": 0.0}
    first = contracts.job_events([job_id], to_block=head)[0].block_number

    def median_ms(since: int | None) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            contracts.job_events([job_id], from_block=since, to_block=head)
            times.append(1000 * (time.perf_counter() - start))
        return round(statistics.median(times), 1)

    return {"record_logs_ms": median_ms(max(first - 64, contracts.deployment.block)),
            "full_history_logs_ms": median_ms(None)}
