"""The dashboard's JSON (docs/dashboard-api.md) on the real app, a real anvil and Redis: each
page's figures against the chain, a job followed from posting to payment, the provider page
equal to `mesh earnings --json` to the wei, the verifier page against the fee events, the
stale sign, the tick stream, and bad input answered with a clear status."""

from __future__ import annotations

import json
import sys
import time

import httpx
import pytest

from meshcompute.chain.artifacts import load_artifact
from meshcompute.chain.earnings import earnings_report
from meshcompute.core.job import JobRecord, JobState
from meshcompute.market import rounds
from meshcompute.mesh.cli.main import main
from meshcompute.settings import get_settings
from meshcompute.units import TOKEN
from tests.contracts.world import TEST_PARAMS
from tests.market.conftest import Market
from tests.market.helpers import register

pytestmark = pytest.mark.anvil

REDIS_DB = 6
MARKET_SETTINGS = {"dashboard_tick_s": 0.2, "dashboard_stream_s": 1.5,
                   "dashboard_stale_blocks": 5, "dashboard_concurrency": 2,
                   "dashboard_queue_s": 0.5}
EVIDENCE = b"\x0e" * 32


def _get(mk: Market, path: str) -> httpx.Response:
    return httpx.get(mk.url + path, timeout=30)


def _json(mk: Market, path: str) -> dict:
    answer = _get(mk, path)
    assert answer.status_code == 200, (path, answer.status_code, answer.text)
    return answer.json()


def _record_of(page: dict) -> JobRecord:
    """The page's ``record`` read back as the chain's Job struct."""
    values = []
    for value, name in zip(page["record"], JobRecord.__dataclass_fields__, strict=True):
        if name in ("spec_hash", "result_hash"):
            values.append(bytes.fromhex(value.removeprefix("0x")))
        elif name in ("client", "worker", "auditor"):
            values.append(value)
        else:
            values.append(int(value))
    return JobRecord.from_tuple(values)


def test_a_job_page_follows_a_job_from_posting_to_payment(mk: Market) -> None:
    world = mk.world
    (job_id,) = world.post()
    mk.rt.indexer.sync()
    page = _json(mk, f"/dashboard/api/jobs/{job_id}")
    assert page["state"] == "posted" and page["worker"] is None and page["reclaimable"]
    # the record a wallet passes to reclaim(jobId, job) is the chain's, field for field
    assert _record_of(page) == world.job(job_id)
    assert page["audit"]["drawn"] is None and page["verify_command"] == f"mesh verify {job_id}"

    worker = world.workers[0]
    world.assign(worker, [job_id], audit_bps=10_000)
    world.commit(worker, [job_id])
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)  # the draw: audited
    verifier = world.verifier_for(job_id)
    verifier.resolve_audit(job_id, True, EVIDENCE)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize(job_id)  # the pass stands: paid
    mk.rt.indexer.sync()

    page = _json(mk, f"/dashboard/api/jobs/{job_id}")
    assert page["state"] == "finalized" and not page["reclaimable"]
    assert page["worker"] == worker.address and page["auditor"] == verifier.address
    names = [row["event"] for row in page["timeline"]]
    assert names[0] == "JobPosted" and "JobPaid" in names
    assert names.index("AuditDrawn") < names.index("AuditResolved") < names.index("JobPaid")
    for row in page["timeline"]:  # each step's transaction is the one that emitted it
        receipt = world.w3.eth.get_transaction_receipt(row["tx"])
        assert receipt["blockNumber"] == row["block"]
        assert row["time"] == world.w3.eth.get_block(row["block"])["timestamp"]
    assert page["audit"] == {"drawn": True, "verdict": "passed", "verifier": verifier.address,
                             "evidence": "0x" + EVIDENCE.hex(), "appeal": None,
                             "contest": None, "escalation": None}


def test_the_overview_counts_what_the_chain_holds_and_says_when_it_is_stale(
        mk: Market) -> None:
    world = mk.world
    posted = world.post(n=2)
    paid = world.committed_job()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(paid)
    register(mk, world.workers[1], price_wei=7)
    mk.rt.indexer.sync()
    page = _json(mk, "/dashboard/api/overview")

    assert [world.job(j).state for j in posted] == [JobState.POSTED] * 2
    assert page["jobs"]["by_state"]["posted"] == 2
    assert page["jobs"]["by_state"]["finalized"] == 1
    assert page["jobs"]["total"] == 3 and page["jobs"]["open"] == 2
    assert sum(page["series"]["settled"]) == 1  # ended within the hour, in the last minute
    assert page["series"]["settled"][-1] == 1
    assert page["workers"]["online"] == 1
    assert page["workers"]["by_device"] == [{"device": "cpu", "count": 1, "min_price_wei": "7",
                                             "max_price_wei": "7"}]
    assert [row["job_id"] for row in page["recent"]] == sorted([*posted, paid], reverse=True)
    assert page["chain"]["stale"] is False
    assert page["series"]["workers_online"] == [None] * 60  # no round sampled the market yet

    now = time.time()
    assert rounds.sample_minute(mk.rt, now)  # the index round's sample of the minute
    assert not rounds.sample_minute(mk.rt, now)  # once a minute
    world.chain.mine(1)
    mk.rt.indexer.sync()  # (the overview is kept while the index stands, within a second)
    at = (int(now) - page["series"]["start"]) // page["series"]["bucket_s"]  # sampled minute

    def sampled(page: dict) -> bool:
        return page["series"]["workers_online"][at] is not None

    series = _overview_within_a_tick(mk, sampled)["series"]
    assert series["workers_online"][at] == 1 and series["open_jobs"][at] == 2
    assert series["backlog"][at] == 0

    world.chain.mine(MARKET_SETTINGS["dashboard_stale_blocks"] + 1)  # the index falls behind
    stale = _overview_within_a_tick(mk, lambda page: page["chain"]["stale"])["chain"]
    assert stale["lag_blocks"] > MARKET_SETTINGS["dashboard_stale_blocks"]
    mk.rt.indexer.sync()
    fresh = _overview_within_a_tick(mk, lambda page: not page["chain"]["stale"])["chain"]
    assert fresh["lag_blocks"] == 0


def _overview_within_a_tick(mk: Market, holds) -> dict:
    """The overview once ``holds(page)``: the chain status (and with it the index head the
    overview is kept by) is read once per tick and shared, so the page may lag the index by
    one tick, and no more (two ticks is a failure)."""
    ends = time.monotonic() + 2 * MARKET_SETTINGS["dashboard_tick_s"]
    while True:
        page = _json(mk, "/dashboard/api/overview")
        if holds(page) or time.monotonic() > ends:
            assert holds(page), page["chain"]
            return page
        time.sleep(0.02)


def _mesh_earnings_json(mk: Market, address: str, monkeypatch, capsys) -> dict:
    """`mesh earnings ADDRESS --json` through the real entry point against this chain."""
    monkeypatch.setenv("MESH_DATA_DIR", str(mk.settings.data_dir))
    monkeypatch.setenv("MESH_DEPLOYMENTS_DIR", str(mk.settings.deployments_dir))
    monkeypatch.setenv("MESH_RPC_URL", mk.settings.rpc_url)
    monkeypatch.setattr(sys, "argv", ["mesh", "earnings", address, "--json"])
    get_settings.cache_clear()
    capsys.readouterr()
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    out = json.loads(capsys.readouterr().out)
    out.pop("chain_id")
    return out


def test_the_provider_page_equals_mesh_earnings_to_the_wei(mk: Market, monkeypatch,
                                                           capsys) -> None:
    world = mk.world
    me = world.workers[2]
    plain = world.committed_job(worker=me, reward=40 * TOKEN)
    failed = world.audited_job(worker=me)
    world.verifier_for(failed).resolve_audit(failed, False, EVIDENCE)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize_batch([plain, failed])  # one paid, one slashed
    pending = world.committed_job(worker=me, reward=20 * TOKEN)
    mk.rt.indexer.sync()

    page = _json(mk, f"/dashboard/api/providers/{me.address.lower()}?rows=all")
    assert page["address"] == me.address
    assert page["earnings"] == _mesh_earnings_json(mk, me.address, monkeypatch, capsys)
    assert page["rows_total"] == 2
    newest = _json(mk, f"/dashboard/api/providers/{me.address}?rows=1")  # the newest row only
    assert [r["job_id"] for r in newest["earnings"]["rows"]] == [pending]
    assert newest["rows_total"] == 2 and newest["by_status"] == page["by_status"]
    assert newest["earnings"]["totals"] == page["earnings"]["totals"]
    assert _json(mk, f"/dashboard/api/providers/{me.address}?rows=0")["earnings"]["rows"] == []
    assert page["earnings"] == earnings_report(mk.rt.contracts, me.address).to_json()
    rows = {row["job_id"]: row for row in page["earnings"]["rows"]}
    assert set(rows) == {plain, pending}
    assert page["by_status"]["paid_wei"] == rows[plain]["amount"]["wei"]
    assert page["by_status"]["pending_wei"] == rows[pending]["amount"]["wei"]
    (slash,) = page["earnings"]["slashes"]
    assert slash["job_id"] == failed
    assert page["by_status"]["slashed_wei"] == slash["amount"]["wei"] == str(50 * TOKEN)
    assert sum(int(d["final_wei"]) for d in page["by_day"]) == int(rows[plain]["amount"]["wei"])
    position = mk.rt.contracts.stake_of(me.address)
    assert page["stake"] == {"free_wei": str(position.free), "locked_wei": str(position.locked),
                             "unbonding_wei": str(position.unbonding),
                             "unbonding_until": position.release_at,
                             "slashed_wei": str(position.slashed)}
    assert page["record"]["slashed"] == 1 and page["record"]["completed"] == 1
    assert page["balance_wei"] == str(mk.rt.contracts.balance_of(me.address))
    assert page["worker"] is None  # never registered with this market


def test_the_verifier_page_counts_its_verdicts_and_the_fees_the_chain_paid(mk: Market) -> None:
    world = mk.world
    jobs = [world.audited_job() for _ in range(3)]
    judged: dict[str, list[int]] = {}
    for i, job_id in enumerate(jobs):
        verifier = world.verifier_for(job_id)
        if i == 2:
            verifier.void_audit(job_id, EVIDENCE)
        else:
            verifier.resolve_audit(job_id, True, EVIDENCE)
        judged.setdefault(verifier.address, []).append(job_id)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize_batch(jobs[:2])
    for verifier in world.verifiers:
        page = _json(mk, f"/dashboard/api/verifiers/{verifier.address}")
        mine = judged.get(verifier.address, [])
        fees = world.admin.market.events.AuditFeePaid().get_logs(
            from_block=world.deployment.block, argument_filters={"verifier": verifier.address})
        assert page["audits"] == len(mine)
        assert page["fees_earned_wei"] == str(sum(int(log["args"]["amount"]) for log in fees))
        assert sorted(row["job_id"] for row in page["recent"]) == sorted(mine)
        assert page["verdicts"]["void"] == (1 if jobs[2] in mine else 0)
        assert page["seat"] is not None and not page["seat"]["leaving"]
    outsider = _json(mk, f"/dashboard/api/verifiers/{world.outsider.address}")
    assert outsider["audits"] == 0 and outsider["seat"] is None


def test_the_contracts_are_the_artifacts_python_uses(mk: Market) -> None:
    page = _json(mk, "/dashboard/api/contracts")
    assert page["chain_id"] == mk.world.deployment.chain_id
    for key, name in (("token", "MeshCredit"), ("stake_manager", "StakeManager"),
                      ("job_market", "JobMarket"), ("verifier_registry", "VerifierRegistry")):
        assert page[key]["address"] == mk.world.deployment.address(name)
        assert page[key]["abi"] == load_artifact(name)["abi"]


def _next_tick() -> None:
    """Wait out the tick kept for this tick period: the test before may have read it from a
    chain this test's fixture has since reverted."""
    time.sleep(MARKET_SETTINGS["dashboard_tick_s"])


def test_the_stream_ticks_and_says_when_the_index_moved(mk: Market) -> None:
    mk.rt.indexer.sync()
    _next_tick()
    ticks = []
    with httpx.stream("GET", mk.url + "/dashboard/api/stream", timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():  # the stream ends after dashboard_stream_s
            if line.startswith("data: "):
                ticks.append(json.loads(line.removeprefix("data: ")))
                if len(ticks) == 2:
                    mk.world.post()
                    mk.rt.indexer.sync()
    assert not any(t["changed"] for t in ticks[:2]), ticks  # nothing moved yet
    assert any(t["changed"] for t in ticks[2:]), ticks  # the index moved: fetch again
    assert all({"head", "indexed", "lag_blocks", "stale"} <= set(t) for t in ticks)


def _calls_of(name: str, monkeypatch) -> list[float]:
    """When each call of the dashboard's views.``name`` was made, from now on."""
    from meshcompute.market.dashboard import views

    calls: list[float] = []
    real = getattr(views, name)

    def counted(rt):
        calls.append(time.monotonic())
        return real(rt)

    monkeypatch.setattr(views, name, counted)
    return calls


def _events(mk: Market, query: str, on_tick=None) -> list[tuple[str, dict]]:
    """Every event of one stream (it ends after dashboard_stream_s), as (name, data);
    ``on_tick(n)`` runs after the n-th tick."""
    events: list[tuple[str, dict]] = []
    name = "message"
    with httpx.stream("GET", mk.url + "/dashboard/api/stream" + query, timeout=30) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "tick" and on_tick is not None:
                    on_tick(sum(n == "tick" for n, _ in events))
    return events


def test_the_overview_page_gets_the_overview_in_the_stream(mk: Market) -> None:
    """The overview page asks for the overview in its stream: each tick that says the index
    moved comes after the overview at the new head, so the page fetches nothing; a stream that
    did not ask gets none."""
    mk.rt.indexer.sync()
    _next_tick()

    def post(n: int) -> None:
        if n == 2:
            mk.world.post()
            mk.rt.indexer.sync()

    events = _events(mk, "?overview=true", post)
    changed = [i for i, (name, data) in enumerate(events) if name == "tick" and data["changed"]]
    assert changed, events
    for i in changed:
        assert events[i][1]["overview"] is True, events[i]
        name, pushed = events[i - 1]
        assert name == "overview", events[i - 1]
        assert pushed["chain"]["indexed"] == events[i][1]["indexed"]
    fetched = _json(mk, "/dashboard/api/overview")
    assert set(events[changed[-1] - 1][1]) == set(fetched)
    assert events[changed[-1] - 1][1]["jobs"] == fetched["jobs"]
    # a tick that did not change carries no overview before it
    assert all(events[i - 1][0] == "tick" for i, (name, data) in enumerate(events)
               if i and name == "tick" and not data["changed"])

    plain = _events(mk, "", post)
    assert {name for name, _ in plain} == {"tick"}
    assert not any(data["overview"] for _, data in plain)


def test_open_streams_share_one_computation_of_the_overview(mk: Market, monkeypatch) -> None:
    """Four overview pages open cost one overview computation each time the index moves, not
    one each, and a stream without the overview costs none."""
    computed = _calls_of("overview_json", monkeypatch)
    mk.rt.indexer.sync()
    _next_tick()
    _events(mk, "")
    assert computed == [], "a stream that did not ask for the overview computed it"
    streams = 4
    pushed: list[int] = [0] * streams

    def follow(n: int) -> None:
        def move(ticks: int) -> None:
            if n == 0 and ticks in (2, 4):
                mk.world.post()
                mk.rt.indexer.sync()
        pushed[n] = sum(name == "overview" for name, _ in _events(mk, "?overview=true", move))

    import threading
    threads = [threading.Thread(target=follow, args=(n,)) for n in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert min(pushed) >= 1, pushed
    # once on the ticker's first turn with them (at the head it finds) and once per move (two)
    assert len(computed) <= 3, (len(computed), pushed)


@pytest.mark.parametrize("query", ["?overview=maybe", "?overview="])
def test_a_malformed_overview_flag_is_refused(mk: Market, query: str) -> None:
    answer = _get(mk, "/dashboard/api/stream" + query)
    assert answer.status_code == 422, answer.text
    assert "overview" in answer.text


def test_open_streams_share_one_read_of_each_tick(mk: Market, monkeypatch) -> None:
    """Ten dashboards open cost the market one tick read per tick, not one each: every stream
    but its first tick (read when it opens) is fed by one shared reader."""
    reads = _calls_of("tick", monkeypatch)
    mk.rt.indexer.sync()
    _next_tick()
    streams = 4
    received: list[int] = [0] * streams

    def follow(n: int) -> None:
        with httpx.stream("GET", mk.url + "/dashboard/api/stream", timeout=30) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    received[n] += 1

    import threading
    threads = [threading.Thread(target=follow, args=(n,)) for n in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    ticks = max(received)
    assert min(received) >= 3, received  # each stream ticked all along
    # one read per stream as it opens, then one per tick for all of them together (a stream
    # reading its own ticks would make streams * ticks reads)
    assert len(reads) <= streams + ticks + 1, (len(reads), received)


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/dashboard/api/jobs/abc", 422, "not a job id"),
    ("/dashboard/api/jobs/987654321", 404, "not known"),
    ("/dashboard/api/providers/0x1234", 422, "not an Ethereum address"),
    ("/dashboard/api/verifiers/not-an-address", 422, "not an Ethereum address"),
    ("/dashboard/api/groups/XYZ", 422, "not a group id"),
    ("/dashboard/api/providers/0x" + "11" * 20 + "?rows=-1", 422, "rows must be"),
    ("/dashboard/api/groups/" + "ab" * 32, 404, "not known"),
    ("/dashboard/assets/..%2F..%2Fviews.py", 404, "Not Found"),
    ("/dashboard/assets/.hidden", 404, "no dashboard asset"),
    ("/dashboard/assets/nothing.js", 404, "no dashboard asset"),
])
def test_bad_input_gets_a_clear_answer(mk: Market, path: str, status: int, words: str) -> None:
    answer = _get(mk, path)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]


def test_a_pruned_job_is_gone_not_unknown(mk: Market, monkeypatch) -> None:
    from meshcompute.market import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 2)
    paid = mk.world.committed_job()
    mk.world.advance(TEST_PARAMS.challenge_window_s + 1)
    mk.world.admin.finalize(paid)
    mk.world.chain.mine(4)
    mk.rt.indexer.sync()
    assert paid in mk.rt.indexer.prune(time.time() + 1)
    answer = _get(mk, f"/dashboard/api/jobs/{paid}")
    assert answer.status_code == 410 and "pruned" in answer.json()["detail"]


def test_the_page_is_served_when_built(mk: Market) -> None:
    from meshcompute.market.api.routes.dashboard import DIST

    if not (DIST / "index.html").is_file():
        pytest.skip("the dashboard is not built (npm run build:dashboard)")
    answer = _get(mk, "/dashboard")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_a_flood_of_page_requests_waits_its_turn_and_is_told_when_busy(mk: Market,
                                                                        monkeypatch) -> None:
    """At most dashboard_concurrency pages are computed at once; one that waits past
    dashboard_queue_s is 503 (busy), and the market's own routes keep answering meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from meshcompute.market.dashboard import views

    def slow_page(rt, address, rows=None):  # a page whose chain reads take 1.5 s
        time.sleep(1.5)
        return {"address": address}

    monkeypatch.setattr(views, "provider_page", slow_page)
    address = mk.world.outsider.address
    with ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(_get, mk, f"/dashboard/api/providers/{address}")
                   for _ in range(3)]
        time.sleep(0.2)
        assert _get(mk, "/health").status_code == 200  # while the pages are computed
        answers = [future.result() for future in pending]
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503], codes
    busy = next(a for a in answers if a.status_code == 503)
    assert "busy" in busy.json()["detail"]
