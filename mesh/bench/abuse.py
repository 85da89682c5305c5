"""``mesh bench abuse``: the market under attack while honest clients and workers work.

A whole dev stack (:mod:`meshcompute.mesh.devstack`: anvil, Valkey, the market API and its
rounds, two workers) on loopback. An honest client submits small jobs back to back and times
its own market requests (a signed blob upload, an unsigned job read) through two phases of
``duration_s`` each: first alone, then while attacker threads offer each of ``rates``
requests a second in all, then as fast as they can (a flood):

- ``oversized``: unsigned 300 MiB bodies (``POST /workers``), streamed;
- ``blob_flood``: unique 64 KiB blobs, each from a fresh key (no stake, no escrow);
- ``group_output``: downloads of the honest client's group output, unsigned and signed by
  strangers;
- ``replay``: the honest client's own signed request sent again, and requests signed for
  another market and for another deployment (JobMarket) behind this market's host;
- ``malformed``: malformed and 100,000-deep nested JSON, unsigned and signed by fresh keys.

Figures: ``attack_requests`` (and per kind, by status), ``honest_jobs_settled`` per phase,
``honest_p95_ms`` quiet and under the first offered rate (``honest_p95_ms_by_phase`` for
all), with the API in ``api_workers`` processes (``MESH_MARKET_API_WORKERS``),
``market_idle_rss_mib`` and ``market_max_rss_mib`` (the API's processes together, sampled
every 0.2 s), ``disk_bytes_written_by_attackers`` (the bytes of attacker
uploads the market accepted) against the strangers' pool, ``server_errors`` (any 5xx, honest
or attacker). Targets: no 5xx; max RSS < 2x idle; attackers' bytes within their quota; honest
p95 under attack within 2x of the quiet phase.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshcompute.mesh.bench.stack_bench import E2E_ENV, _client, _percentile
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig

QUOTA_ENV = {
    "MESH_QUOTA_BASE_BYTES": str(1 << 20),
    "MESH_QUOTA_STRANGERS_BYTES": str(16 << 20),
}
"""The bench's quotas: 1 MiB per key without standing, 16 MiB for all of them together."""

_OVERSIZED = 300 << 20
_BLOB = 64 << 10
_REQUESTS_PER_ROUND = 11 / 5
"""Requests one attack round sends on average (the five kinds send 1, 2, 3, 4 and 1)."""


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and every process below it (the API's worker processes
    when it runs several), in MiB."""
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # gone meanwhile
    return total / 1024


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        member = todo.pop()
        out.append(member)
        todo.extend(children.get(member, []))
    return out


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: dict[str, Counter[int]] = {}
        self.accepted_bytes = 0

    def add(self, kind: str, status: int, accepted: int = 0) -> None:
        with self.lock:
            self.by_kind.setdefault(kind, Counter())[status] += 1
            self.accepted_bytes += accepted

    def server_errors(self) -> int:
        return sum(n for counts in self.by_kind.values() for s, n in counts.items() if s >= 500)

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_kind.values())


def run_abuse_bench(*, duration_s: float = 20.0, workers: int = 2, attackers: int = 4,
                    rates: tuple[float, ...] = (200.0, 400.0),
                    api_workers: int = 2) -> dict[str, Any]:
    import torch

    from meshcompute.execution.programs import export_program
    from meshcompute.mesh.models import MLP
    from meshcompute.units import TOKEN
    from meshcompute.wire.auth import sign_request

    torch.manual_seed(0)
    model = MLP(d_in=8, d_hidden=8, d_out=2, depth=2).eval()
    program = export_program(model, (torch.randn(2, 8),))
    config = StackConfig(workers=workers, cheaters=0, verifier=False, worker_slots=2,
                         params=replace(FAST_PARAMS, challenge_window_s=1, min_audit_bps=0),
                         extra_env=dict(E2E_ENV) | QUOTA_ENV
                         | {"MESH_MARKET_API_WORKERS": str(api_workers)})
    with DevStack(config) as stack:
        market_proc = stack.services["market-api"].process
        assert market_proc is not None
        pid = market_proc.pid
        client = _client(stack)
        # a client that posts all day stakes a little (README, "Trust model"): its own rate
        # and upload quota, whatever strangers do to theirs
        client.actor.stake(100 * TOKEN)
        url = stack.market_url
        chain_id = stack.deployment.chain_id if stack.deployment else 31337
        paid: set[int] = set()
        rss: list[float] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                rss.append(_rss_mib(pid))
                stop_sampling.wait(0.2)

        # warm up: one submission to its payment (worker processes, program caches)
        first = client.submit(program, (torch.randn(4, 8),), shards=4, pay="0.04",
                              collateral="1", deadline="30m", audit_bps=0)
        client.wait(first, timeout_s=300)
        group = first.group
        time.sleep(2)
        idle_samples = []
        for _ in range(10):
            idle_samples.append(_rss_mib(pid))
            time.sleep(0.1)
        idle_rss = max(idle_samples)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        honest_errors: Counter[str] = Counter()

        def honest_phase(label: str) -> dict[str, Any]:
            latencies: list[float] = []
            by_call: dict[str, list[float]] = {"signed_upload": [], "unsigned_read": []}
            posted: list[int] = []
            end = time.perf_counter() + duration_s
            seed = 0
            submission = None
            while time.perf_counter() < end:
                seed += 1
                if submission is None or seed % 10 == 0:
                    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
                    submission = client.submit(program, (x,), shards=4, pay="0.04",
                                               collateral="1", deadline="30m", audit_bps=0)
                    posted += submission.job_ids
                for name, call in (
                        ("signed_upload", lambda: client.market.put_blob(os.urandom(256))),
                        ("unsigned_read", lambda: client.market.job(first.job_ids[0]))):
                    start = time.perf_counter()
                    try:
                        call()
                    except Exception as exc:  # noqa: BLE001 - counted, reported
                        honest_errors[f"{label}: {type(exc).__name__}"] += 1
                        status = getattr(exc, "status_code", 0)
                        if status >= 500:
                            tally.add("honest", status)
                        continue
                    latencies.append((time.perf_counter() - start) * 1000)
                    by_call[name].append(latencies[-1])
                time.sleep(0.05)
            drain = time.perf_counter() + 60
            contracts = client.connection.contracts
            while time.perf_counter() < drain:
                done = {int(e.args["jobId"]) for e in contracts.job_events(posted, 0)
                        if e.name == "JobPaid"}
                if set(posted) <= done:
                    break
                time.sleep(0.5)
            settled = {int(e.args["jobId"]) for e in contracts.job_events(posted, 0)
                       if e.name == "JobPaid"}
            paid.update(settled)
            return {"p95_ms": round(_percentile(latencies, 0.95), 1),
                    "p95_ms_by_call": {name: round(_percentile(values, 0.95), 1)
                                       for name, values in by_call.items()},
                    "p50_ms": round(_percentile(latencies, 0.5), 1),
                    "requests": len(latencies), "jobs_posted": len(posted),
                    "jobs_settled": len(settled & set(posted))}

        tally = _Tally()
        quiet = honest_phase("quiet")

        # ---------------------------------------------------------------- attackers
        contract = stack.deployment.address("JobMarket")
        replayable = sign_request(client.account, "POST", "/workers/heartbeat",
                                  b'{"running":[]}', chain_id, market=url, contract=contract)
        ctx = multiprocessing.get_context("spawn")

        def attack_phase(rate: float | None) -> dict[str, Any]:
            """One honest phase while the attackers offer ``rate`` requests a second in
            all (None: as fast as they can); their answers are added to the tally."""
            stop = ctx.Event()
            results = ctx.Queue()
            attack = ctx.Process(target=_attack_process, daemon=True,
                                 args=(url, chain_id, contract, group, dict(replayable),
                                       attackers, rate, stop, results))
            attack.start()
            started = time.perf_counter()
            phase = honest_phase(_rate_label(rate))
            stop.set()
            by_kind, accepted = results.get(timeout=120)
            attack.join(30)
            sent = 0
            for kind, counts in by_kind.items():
                for status, n in counts.items():
                    tally.by_kind.setdefault(kind, Counter())[int(status)] += n
                    sent += n
            tally.accepted_bytes += accepted
            phase["attack_per_s"] = round(sent / (time.perf_counter() - started), 1)
            return phase

        attacked = {_rate_label(rate): attack_phase(rate) for rate in (*rates, None)}
        stop_sampling.set()
        sampler.join(5)
        stack.check_alive()
        sandboxed = stack.sandboxed
    max_rss = max(rss) if rss else float("nan")
    strangers_pool = int(QUOTA_ENV["MESH_QUOTA_STRANGERS_BYTES"])
    server_errors = tally.server_errors()
    main = attacked[_rate_label(rates[0])] if rates else attacked[_rate_label(None)]
    phases = {"quiet": quiet, **attacked}
    return {
        "attack_requests": tally.total(),
        "attack_by_kind": {kind: {str(s): n for s, n in sorted(c.items())}
                           for kind, c in tally.by_kind.items()},
        "attack_per_s": {label: phase["attack_per_s"] for label, phase in attacked.items()},
        "honest_jobs_settled": {"quiet": quiet["jobs_settled"], "attack": main["jobs_settled"]},
        "honest_jobs_posted": {"quiet": quiet["jobs_posted"], "attack": main["jobs_posted"]},
        "honest_p95_ms": {"quiet": quiet["p95_ms"], "attack": main["p95_ms"]},
        "honest_p50_ms": {"quiet": quiet["p50_ms"], "attack": main["p50_ms"]},
        "honest_p95_ms_by_phase": {label: phase["p95_ms"] for label, phase in phases.items()},
        "honest_p95_ms_by_call": {label: phase["p95_ms_by_call"]
                                  for label, phase in phases.items()},
        "honest_jobs_settled_by_phase": {label: phase["jobs_settled"]
                                         for label, phase in phases.items()},
        "honest_requests": {label: phase["requests"] for label, phase in phases.items()},
        "honest_errors": dict(honest_errors),
        "market_idle_rss_mib": round(idle_rss, 1),
        "market_max_rss_mib": round(max_rss, 1),
        "disk_bytes_written_by_attackers": tally.accepted_bytes,
        "attackers_quota_bytes": strangers_pool,
        "server_errors": server_errors,
        "targets": {
            "no_server_errors": server_errors == 0,
            "rss_under_2x_idle": max_rss < 2 * idle_rss,
            "attackers_within_quota": tally.accepted_bytes <= strangers_pool,
            "honest_p95_within_2x": main["p95_ms"] <= 2 * quiet["p95_ms"],
            "honest_p95_within_2x_flood": (attacked[_rate_label(None)]["p95_ms"]
                                           <= 2 * quiet["p95_ms"]),
        },
        "duration_s_per_phase": duration_s,
        "attacker_threads": attackers,
        "attack_rates_per_s": list(rates),
        "market_api_workers": api_workers,
        "workers": workers,
        "sandboxed": sandboxed,
        "paid_total": len(paid),
        "method": "dev stack on loopback; honest client: a submission of 4 shards every 10 "
                  "probe rounds, each round a signed 256-byte blob upload and an unsigned job "
                  "read, timed; phases: quiet, then attackers offering each of "
                  "attack_rates_per_s requests a second in all (the 'attack' figures are the "
                  "first), then a flood as fast as they can; attackers (threads of one "
                  "separate process at nice 19, each from its own loopback address: on "
                  "loopback their CPU is the market's machine's, in production it is their "
                  "own) cycle oversized unsigned bodies, unique blobs from fresh keys, "
                  "group-output downloads, replays and cross-market requests, malformed and "
                  "deeply nested JSON; the market API runs market_api_workers processes "
                  "(uvicorn workers); RSS of all of them together sampled every 0.2 s",
    }


def _rate_label(rate: float | None) -> str:
    return "flood" if rate is None else f"attack_{rate:g}_per_s"


def _attack_process(url: str, chain_id: int, contract: str, group: str | None,
                    replayable: dict[str, str],
                    threads: int, rate: float | None, stop: Any, results: Any) -> None:
    """The attackers: ``threads`` threads cycling the attack kinds until ``stop``, offering
    ``rate`` requests a second between them (None: each as fast as it is answered); puts
    ``(counts by kind and status, accepted upload bytes)`` on ``results``."""
    import httpx
    from eth_account import Account

    from meshcompute.wire.auth import sign_request

    os.nice(19)
    parent = os.getppid()  # gone (reparented) if the bench dies: stop too, leave nothing behind
    tally = _Tally()
    local = threading.local()

    def oversized() -> None:
        def body():  # type: ignore[no-untyped-def]
            sent = 0
            while sent < _OVERSIZED:
                chunk = b"x" * min(1 << 20, _OVERSIZED - sent)
                sent += len(chunk)
                yield chunk
        try:
            r = local.http.post(f"{url}/workers", content=body(),
                          headers={"Content-Type": "application/json",
                                   "Content-Length": str(_OVERSIZED)})
            tally.add("oversized", r.status_code)
        except httpx.HTTPError:
            tally.add("oversized", 0)  # hung up on mid-body: refused unread

    def blob_flood() -> None:
        account = Account.create()
        data = os.urandom(_BLOB)
        sha = hashlib.sha256(data).hexdigest()
        headers = sign_request(account, "PUT", f"/blobs/{sha}", b"", chain_id, market=url,
                               contract=contract, body_sha256=sha)
        r = local.http.put(f"{url}/blobs/{sha}", content=data, headers=headers)
        tally.add("blob_flood", r.status_code, accepted=len(data) if r.status_code == 201 else 0)

    def group_output() -> None:
        path = f"/groups/{group}/output"
        tally.add("group_output", local.http.get(url + path).status_code)
        headers = sign_request(Account.create(), "GET", path, b"", chain_id, market=url,
                               contract=contract)
        tally.add("group_output", local.http.get(url + path, headers=headers).status_code)

    def replay() -> None:
        body = b'{"running":[]}'
        tally.add("replay", local.http.post(f"{url}/workers/heartbeat", content=body,
                                      headers=replayable).status_code)
        other = sign_request(Account.create(), "POST", "/leases", b'{"max_jobs":1}', chain_id,
                             market="other-market.example:8000", contract=contract)
        tally.add("replay", local.http.post(f"{url}/leases", content=b'{"max_jobs":1}',
                                      headers=other).status_code)
        elsewhere = sign_request(Account.create(), "POST", "/leases", b'{"max_jobs":1}',
                                 chain_id, market=url, contract="0x" + "cd" * 20)
        tally.add("replay", local.http.post(f"{url}/leases", content=b'{"max_jobs":1}',
                                      headers=elsewhere).status_code)

    nested = b'{"max_jobs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    def malformed() -> None:
        for body in (b'{"max_jobs": 1,', nested):
            tally.add("malformed", local.http.post(f"{url}/leases", content=body).status_code)
            headers = sign_request(Account.create(), "POST", "/leases", body, chain_id,
                                   market=url, contract=contract)
            headers["Content-Type"] = "application/json"
            tally.add("malformed", local.http.post(f"{url}/leases", content=body,
                                             headers=headers).status_code)

    kinds = [blob_flood, group_output, replay, malformed, oversized]

    def attacker(index: int) -> None:
        # each attacker from its own loopback address: on the internet they are not the
        # honest client's IP either
        local.http = httpx.Client(timeout=30, transport=httpx.HTTPTransport(
            local_address=f"127.0.0.{2 + index}"))
        n = index
        # an attack kind sends one or two requests: pace the rounds at the offered rate
        interval = 0.0 if rate is None else threads * _REQUESTS_PER_ROUND / rate
        due = time.perf_counter()
        while not stop.is_set() and os.getppid() == parent:
            if interval:
                due += interval
                pause = due - time.perf_counter()
                if pause > 0:
                    stop.wait(pause)
            kind = kinds[n % len(kinds)]
            try:
                kind()
            except httpx.HTTPError:
                tally.add(kind.__name__, 0)
            n += 1

    workers = [threading.Thread(target=attacker, args=(i,), daemon=True)
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(({kind: dict(counts) for kind, counts in tally.by_kind.items()},
                 tally.accepted_bytes))
