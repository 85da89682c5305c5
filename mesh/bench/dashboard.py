"""``mesh bench dashboard``: how fast the dashboard draws with a large index, what a page view
costs the market, and whether open dashboards slow settlement (issue 16).

1. **Pages with many jobs indexed.** A dev stack (anvil, Valkey, the market API and its tasks;
   no verifier, no worker process) gets ``jobs`` real jobs posted on chain in batches, each
   taken with a market-signed ticket, committed and paid, as in a market that has run a while
   (few open jobs, many ended ones): the measured provider (a dev account, staked) did
   ``provider_jobs`` of them, a second one the rest. Once the market's index holds them all,
   Debian's Chromium loads the overview and that provider's page ``loads`` times each, each in a new
   tab; a load's time is ``performance.now()`` when the page marks itself drawn
   (``body[data-rendered]``: its data fetched, its DOM and charts drawn). The market API
   process's CPU time (user + system, from /proc) over all loads, divided by their count, is
   its CPU per page view.
2. **Settlement with dashboards open.** The end-to-end bench's stack (``mesh bench e2e``),
   warmed up once, its client keeping a fixed number of jobs in flight (a closed loop), then
   windows alternately without and with ``dashboards`` open (A B A ... A, ``pairs`` with
   them, each compared with the two around it): each window's rate is the jobs paid in the
   blocks mined during it per second. An open dashboard here is what the page does on the
   network on the overview: it holds the event stream, which carries the overview each time
   the index moved (an HTTP client per dashboard, not a browser: on a two-core machine ten
   browsers' own rendering would be charged to the market). The viewers run in one child process for the whole run, under
   SCHED_IDLE, and are opened and closed between windows.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from meshcompute.mesh.bench.stack_bench import _percentile

CHROMIUM = "/usr/bin/chromium"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _fill(stack: Any, jobs: int, provider_jobs: int, batch: int) -> dict[str, Any]:
    """Post ``jobs`` jobs and see every one through to payment, as in a market that has been
    running a while: the measured provider takes, commits and is paid for ``provider_jobs``
    of them, a second provider for the rest."""
    from meshcompute.chain.contracts import JobParams, MeshContracts
    from meshcompute.chain.tickets import AssignTicket, sign_ticket
    from meshcompute.mesh.devstack import ADMIN, ASSIGNER, FIRST_WORKER
    from meshcompute.units import TOKEN

    w3 = stack.chain.w3()
    contracts = MeshContracts(w3, stack.deployment)
    admin = stack.actor(stack.accounts[ADMIN])
    client = stack.actor(stack.client_account)
    reward, collateral = TOKEN // 100, TOKEN // 10
    admin.mint(stack.client_account.address, jobs * reward * 2)
    started = time.perf_counter()
    deadline = int(w3.eth.get_block("latest")["timestamp"]) + 86_400
    ids: list[int] = []
    for first in range(0, jobs, batch):
        count = min(batch, jobs - first)
        params = [JobParams(spec_hash=os.urandom(32), reward=reward, audit_fee=0,
                            collateral=collateral, deadline=deadline, audit_bps=0)
                  for _ in range(count)]
        ids += client.post_jobs(params)
    posted_s = time.perf_counter() - started
    shares = [(stack.accounts[FIRST_WORKER], ids[:provider_jobs]),
              (stack.accounts[FIRST_WORKER + 1], ids[provider_jobs:])]
    assigner = stack.accounts[ASSIGNER]
    market_address = stack.deployment.address("JobMarket")
    step = 250
    for account, taken in shares:
        if not taken:
            continue
        worker = stack.actor(account)
        admin.mint(account.address, len(taken) * collateral * 2)
        worker.stake(len(taken) * collateral * 2)
        for first in range(0, len(taken), step):
            chunk = taken[first:first + step]
            records = contracts.job_records(chunk, verify=False)
            ticket = AssignTicket(account.address, tuple(chunk), 0,
                                  int(w3.eth.get_block("latest")["timestamp"]) + 3600)
            signature = sign_ticket(ticket, assigner, chain_id=stack.deployment.chain_id,
                                    job_market=market_address)
            worker.assign_and_commit(ticket, signature, [os.urandom(32) for _ in chunk],
                                     [records[i] for i in chunk])
    stack.chain.increase_time(stack.config.params.challenge_window_s + 1)
    stack.chain.mine(2)
    for _account, taken in shares:
        for first in range(0, len(taken), step):
            admin.finalize_batch(taken[first:first + step])
    return {"posted": len(ids), "provider": stack.accounts[FIRST_WORKER].address,
            "provider_jobs": min(provider_jobs, len(ids)),
            "fill_s": round(time.perf_counter() - started, 1), "post_s": round(posted_s, 1)}


def _wait_indexed(stack: Any, timeout_s: float) -> float:
    import httpx

    started = time.perf_counter()
    while True:
        chain = httpx.get(f"{stack.market_url}/dashboard/api/overview", timeout=120).json()[
            "chain"]
        if chain["lag_blocks"] == 0:
            return time.perf_counter() - started
        stack.check_alive()
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"the market did not index the chain in {timeout_s:.0f} s "
                               f"({chain['lag_blocks']} blocks behind)\n"
                               + stack.services["market-tasks"].tail(20))
        time.sleep(1.0)


def _page_loads(url: str, loads: int, viewport: dict[str, int]) -> list[float]:
    """Milliseconds from navigation until the page marked itself drawn, one new tab a load;
    a console error or a page that says it failed fails the bench."""
    from playwright.sync_api import sync_playwright

    times: list[float] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"],
                                     headless=True)
        try:
            context = browser.new_context(viewport=viewport)
            for _ in range(loads):
                page = context.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                        else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url)
                # polled through the DevTools protocol: the page's Content-Security-Policy
                # refuses the in-page evaluation wait_for_function would use
                give_up = time.monotonic() + 60
                while not page.evaluate("document.body.dataset.rendered"):
                    if time.monotonic() > give_up:
                        raise RuntimeError(f"{url} was not drawn in 60 s; console errors "
                                           f"{errors[:3]}; the page says: "
                                           f"{page.inner_text('body')[:500]!r}")
                    time.sleep(0.005)
                failed = page.query_selector('[data-testid="error"]:not(:empty)')
                if failed is not None:
                    errors.append(failed.inner_text())
                times.append(float(page.evaluate("performance.now()")))
                page.close()
        finally:
            browser.close()
    if errors:
        raise RuntimeError(f"{url}: the page reported errors: {errors[:3]}")
    return times


def _pages_bench(jobs: int, provider_jobs: int, loads: int, batch: int) -> dict[str, Any]:
    from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig

    # no verifier here: no job is drawn for audit (each would end void after its window)
    config = StackConfig(workers=0, cheaters=0, verifier=False,
                         params=replace(FAST_PARAMS, challenge_window_s=1, min_audit_bps=0),
                         extra_env={"MESH_INDEX_INTERVAL_S": "0.5"})
    with DevStack(config) as stack:
        filled = _fill(stack, jobs, provider_jobs, batch)
        index_s = _wait_indexed(stack, timeout_s=1800)
        pid = stack.services["market-api"].process.pid
        desktop = {"width": 1280, "height": 800}
        base = f"{stack.market_url}/dashboard#"
        cpu_before = _cpu_seconds(pid)
        overview = _page_loads(f"{base}/", loads, desktop)
        provider = _page_loads(f"{base}/provider/{filled['provider']}", loads, desktop)
        cpu_s = _cpu_seconds(pid) - cpu_before
    return {
        "jobs_indexed": filled["posted"],
        "overview_ms_p95": round(_percentile(overview, 0.95), 1),
        "overview_ms_p50": round(_percentile(overview, 0.5), 1),
        "overview_ms_first": round(overview[0], 1),
        "provider_ms_p95": round(_percentile(provider, 0.95), 1),
        "provider_ms_p50": round(_percentile(provider, 0.5), 1),
        "provider_ms_first": round(provider[0], 1),
        "provider_jobs": filled["provider_jobs"],
        "loads_per_page": loads,
        "market_cpu_ms_per_page_view": round(1000 * cpu_s / (2 * loads), 1),
        "fill_s": filled["fill_s"],
        "index_wait_s": round(index_s, 1),
    }


def emulate_dashboards(url: str, count: int) -> None:
    """Run in a child process (see :class:`Viewers`): ``count`` dashboards' traffic against
    the market at ``url`` while open, each an overview page: it holds the event stream with
    the overview in it, and fetches the overview only when it opens and when a tick says the
    index moved without the overview having come before it (as the page does). Reads commands
    from standard input: ``open`` opens them, ``close`` closes them and answers the block's
    counts of ticks, overviews pushed, overview fetches and errors as one JSON line; the end of
    input closes them and ends the process."""
    import json
    import sys

    import httpx

    lock = threading.Lock()
    counts = {"ticks": 0, "pushed": 0, "fetches": 0, "errors": 0}

    def fetch(http: httpx.Client) -> None:
        answer = http.get("/dashboard/api/overview")
        with lock:  # a refusal (429, 503) is an error, not a page drawn
            counts["fetches" if answer.status_code == 200 else "errors"] += 1

    def dashboard(stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            first = True
            while not stop.is_set():
                try:
                    if first:
                        fetch(http)
                        first = False
                    with http.stream("GET", "/dashboard/api/stream?overview=true") as answer:
                        event = ""
                        for line in answer.iter_lines():
                            if stop.is_set():
                                return
                            if line.startswith("event: "):
                                event = line.removeprefix("event: ")
                            if not line.startswith("data: "):
                                continue
                            data = json.loads(line.removeprefix("data: "))
                            with lock:
                                counts["pushed" if event == "overview" else "ticks"] += 1
                            if event == "tick" and data.get("changed") and not data.get("overview"):
                                fetch(http)
                except (httpx.HTTPError, ValueError):
                    with lock:
                        counts["errors"] += 1
                    time.sleep(0.5)

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def close() -> dict[str, int]:
        stop.set()
        for thread in threads:  # a stream sees the stop at its next tick
            thread.join(timeout=10)
        still_open = sum(thread.is_alive() for thread in threads)
        threads.clear()
        with lock:
            block = dict(counts, still_open=still_open)
            counts.update(ticks=0, pushed=0, fetches=0, errors=0)
        return block

    for command in sys.stdin:
        if command.strip() == "open" and not threads:
            stop = threading.Event()
            threads[:] = [threading.Thread(target=dashboard, args=(stop,), daemon=True)
                          for _ in range(count)]
            for thread in threads:
                thread.start()
        elif command.strip() == "close":
            print(json.dumps(close()), flush=True)
    close()


class Viewers:
    """``count`` dashboards' traffic, opened and closed on demand (:func:`emulate_dashboards`
    in one child process for the whole run, so a window's start costs no process start). Each
    is an overview page: it holds the event stream, which carries the overview each time the
    index moved (reconnecting when the stream ends). The child runs under SCHED_IDLE (nice 19 where
    chrt is missing): a viewer's browser runs on the viewer's machine, so what it spends must
    not be charged to the market sharing this one. What the market does for them is."""

    def __init__(self, url: str, count: int) -> None:
        import subprocess
        import sys

        # chrt(1) and nice(1), not a preexec_fn: this process has threads
        idle = ["chrt", "--idle", "0"] if shutil.which("chrt") else []
        self.process = subprocess.Popen(
            [*idle, "nice", "-n", "19", sys.executable, "-c",
             ("import sys; from meshcompute.mesh.bench.dashboard import "
              "emulate_dashboards as e; e(sys.argv[1], int(sys.argv[2]))"),
             url, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.scheduling = "SCHED_IDLE + nice 19" if idle else "nice 19"

    def _say(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def open(self) -> None:
        self._say("open")

    def close(self) -> dict[str, Any]:
        """Close them; the counts of the block since :meth:`open`."""
        import json

        self._say("close")
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the emulated dashboards' process ended without reporting: "
                               "its load is unknown, so this run cannot count")
        return json.loads(line)

    def cpu_s(self) -> float:
        return _cpu_seconds(self.process.pid)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.process.communicate(input="", timeout=30)
        except Exception:  # noqa: BLE001 - whatever went wrong, the child must not outlive us
            self.process.kill()
            self.process.wait()


def _cpu_ticks() -> tuple[int, int]:
    """The machine's CPU ticks since boot, (busy, all), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def windows_order(pairs: int) -> list[bool]:
    """Which windows have dashboards open: strictly alternating, beginning and ending without
    (A B A B ... A: ``pairs`` windows with, ``pairs + 1`` without), so each window with them
    lies between two without."""
    return [n % 2 == 1 for n in range(2 * pairs + 1)]


def bracketed_changes(rates: list[float]) -> list[float]:
    """Per cent change of each window with dashboards (the odd ones of
    :func:`windows_order`) against the mean of the two windows without around it. A drift of
    the stack over the run that is straight across three windows cancels out of each change
    (the stack's throughput falls over a long run: 111 to 50 jobs a second over five minutes,
    measured); comparing pairs instead leaves it in, with alternating signs, and the spread."""
    if len(rates) < 3 or len(rates) % 2 == 0:
        raise ValueError(f"need windows A B A ... A (an odd number, at least 3), got {len(rates)}")
    changes = []
    for i in range(1, len(rates), 2):
        around = (rates[i - 1] + rates[i + 1]) / 2
        changes.append(100 * (rates[i] - around) / around)
    return changes


def _settlement_bench(dashboards: int, window_s: float, pairs: int, settle_s: float = 5.0,
                      outstanding: int = 600) -> dict[str, Any]:
    """The end-to-end bench's stack (``mesh bench e2e``: four workers, two verifiers, 50-shard
    submissions), warmed up once, its client keeping at most ``outstanding`` jobs posted and
    not final, those drawn for audit aside (a closed loop), then windows of ``window_s``
    alternately without and with ``dashboards`` open (:func:`windows_order`). A window's rate
    is the JobPaid events in the blocks mined during it per second; each window with
    dashboards is compared with the two without around it (:func:`bracketed_changes`). Each
    window begins ``settle_s`` after its condition changed.

    Why it is built this way (measured on two cores):

    - One stack for all windows: two stacks started one after another differ by more than the
      effect measured (single e2e runs went from 48 to 75 jobs a second, nothing changed).
    - A closed loop: posting as fast as it can, the client grows the backlog for as long as
      the run lasts.
    - Audited jobs aside, and the deployment's default audit window (600 s, not the dev
      stack's 60 s): the two verifiers judge about one audit in four seconds between them,
      while 5 % of 80 jobs a second is four a second. Counted
      in the loop, audited jobs soon fill it and settlement stalls (86 down to 2.5 jobs a
      second in five minutes); in a 60 s window, verdicts come late, seats are punished for
      silence, and the client can no longer post (two seats must cover a shard). The run
      ends long before its oldest audit reaches 600 s.
    - Bracketed windows: even so the stack slows over a run (111 down to 50 jobs a second in
      five minutes), a drift each bracket cancels where it is straight."""
    from meshcompute.chain.deploy import DeployParams
    from meshcompute.mesh.bench.stack_bench import E2E_PARAMS, warm_e2e_stack

    series: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    windows: list[dict[str, Any]] = []
    params = replace(E2E_PARAMS, audit_window_s=DeployParams().audit_window_s)
    run_s = (2 * pairs + 1) * (settle_s + window_s)  # the warm-up's audits are judged in it
    if run_s > 0.8 * params.audit_window_s:
        raise ValueError(
            f"{pairs} pairs of {window_s:g} s windows take {run_s:.0f} s: audits drawn at "
            f"the start would be near the end of their {params.audit_window_s} s window by then "
            f"and later windows would measure expiring audits; use fewer pairs or shorter "
            f"windows (at most {0.8 * params.audit_window_s:.0f} s in all)")
    with warm_e2e_stack(params=params) as load:
        stack = load.stack
        w3 = stack.chain.w3()
        api = stack.services["market-api"].process.pid
        stop = threading.Event()
        threads, errors = load.post_continuously(stop.is_set, max_outstanding=outstanding)

        def wait(seconds: float) -> None:
            ends = time.perf_counter() + seconds
            while time.perf_counter() < ends:
                if errors:
                    raise errors[0]
                stack.check_alive()
                load.collect()
                time.sleep(0.25)

        try:
            with Viewers(stack.market_url, dashboards) as viewers:
                for dash in windows_order(pairs):
                    if dash:
                        viewers.open()
                    wait(settle_s)
                    first, start = w3.eth.block_number, time.perf_counter()
                    api_cpu, viewers_cpu, ticks = (_cpu_seconds(api), viewers.cpu_s(),
                                                   _cpu_ticks())
                    wait(window_s)
                    last, end = w3.eth.block_number, time.perf_counter()
                    busy = _cpu_ticks()
                    seen: dict[str, Any] = {
                        "market_api_cpu_s": round(_cpu_seconds(api) - api_cpu, 2),
                        "viewers_cpu_s": round(viewers.cpu_s() - viewers_cpu, 2),
                        "machine_busy": round((busy[0] - ticks[0])
                                              / max(1, busy[1] - ticks[1]), 3),
                        "outstanding": load.outstanding(),
                    }
                    if dash:
                        seen.update(viewers.close())
                        if seen.get("still_open") or not seen.get("ticks"):
                            raise RuntimeError(f"the emulated dashboards did not run as asked "
                                               f"in a window: {seen}")
                    paid = len(load.contracts.job_events(None, first + 1, last,
                                                         names=("JobPaid",)))
                    rate = paid / (end - start)
                    series.append(rate)
                    cpu[dash].append(seen["market_api_cpu_s"])
                    windows.append({"dashboards": dashboards if dash else 0,
                                    "settled_jobs_per_s": round(rate, 2), **seen})
                scheduling = viewers.scheduling
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    changes = bracketed_changes(series)
    base, loaded = statistics.mean(series[0::2]), statistics.mean(series[1::2])
    return {
        "settled_jobs_per_s_without": round(base, 2),
        "settled_jobs_per_s_with_dashboards": round(loaded, 2),
        # each window with dashboards against the mean of the two without around it
        "settlement_change_pct": round(statistics.mean(changes), 1),
        "settlement_change_pct_by_window": [round(c, 1) for c in changes],
        # how far the mean change may be off: the changes' spread / sqrt(their number)
        "settlement_change_pct_stderr": round(
            statistics.stdev(changes) / len(changes) ** 0.5, 1) if len(changes) > 1 else None,
        "market_api_cpu_s_without": round(statistics.mean(cpu[False]), 2),
        "market_api_cpu_s_with_dashboards": round(statistics.mean(cpu[True]), 2),
        "dashboards": dashboards,
        "viewers_scheduling": scheduling,
        "settlement_pairs": pairs,
        "settlement_window_s": window_s,
        "settlement_outstanding_jobs": outstanding,
        "settlement_windows": windows,
    }


def run_dashboard_bench(*, jobs: int = 100_000, provider_jobs: int = 2_000, loads: int = 20,
                        dashboards: int = 10, duration_s: float = 30.0, pairs: int = 4,
                        batch: int = 500, outstanding: int = 600,
                        pages: bool = True) -> dict[str, Any]:
    if pages and not shutil.which(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (make setup does)")
    drawn = _pages_bench(jobs, provider_jobs, loads, batch) if pages else {}
    settlement = (_settlement_bench(dashboards, duration_s, pairs, outstanding=outstanding)
                  if dashboards else {})
    return {
        **drawn,
        **settlement,
        "targets": {"overview_ms_p95": 1000, "provider_ms_p95": 1000,
                    "settlement_change_pct": -5},
        "method": "pages: Debian Chromium, a new tab per load, performance.now() when the page "
                  "marks itself drawn; CPU: the market API process's user+system time over "
                  "all loads / loads; settlement: mesh bench e2e's stack, warmed up once, its "
                  "client keeping a fixed number of jobs posted and not final (closed loop), "
                  "windows alternately without and with the dashboards' traffic (an "
                  "overview page each: the event stream carrying the overview, fetched when "
                  "it opens; viewers under SCHED_IDLE) in "
                  "A B A ... A order; a window's rate = JobPaid in the blocks mined during it "
                  "/ its length; each B against the mean of the A before and after it",
    }
