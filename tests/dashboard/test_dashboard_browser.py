"""The dashboard in a real browser against the real stack (issue 16): every page, a job
followed live from posting to payment, the provider's figures against the chain to the wei,
staking and withdrawing through an injected EIP-1193 wallet, the cheater's slash, bad input.
Screenshots of every page at desktop and phone widths go to docs/screenshots/."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import torch

from meshcompute.chain.contracts import JobParams, MeshContracts
from meshcompute.chain.earnings import earnings_report
from meshcompute.client import Client, Submission
from meshcompute.core.job import JobState
from meshcompute.mesh.devstack import FAST_PARAMS, DevStack, StackConfig
from meshcompute.mesh.models import MLP
from meshcompute.units import TOKEN
from tests.dashboard.conftest import FakeWallet, PageSession, stack_tails, wait_js, wait_until

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

TERMINAL = {"finalized", "slashed", "refunded"}


@dataclass
class Market:
    stack: DevStack
    client: Client
    contracts: MeshContracts
    first: Submission
    """Posted when the stack is up: every shard drawn for audit, so the cheater is slashed."""

    @property
    def url(self) -> str:
        return self.stack.market_url

    @property
    def honest(self) -> str:
        return self.stack.worker_accounts()[0].address

    @property
    def cheater(self) -> str:
        return next(iter(self.stack.cheater_addresses()))

    def states(self, job_ids: list[int]) -> dict[int, JobState]:
        records = self.contracts.job_records(job_ids)
        return {i: records[i].state for i in job_ids}

    def wait_terminal(self, job_ids: list[int], timeout_s: float = 150) -> dict[int, JobState]:
        return wait_until(lambda: (s := self.states(job_ids)) and all(x.terminal for x in s.values()) and s,
                          f"jobs {job_ids} terminal on chain", timeout_s, self.stack.check_alive)


def _submit(client: Client, shards: int, seed: int) -> Submission:
    torch.manual_seed(seed)
    model = MLP(d_in=16, d_hidden=32, d_out=4, depth=2).eval()
    x = torch.randn(shards * 2, 16, generator=torch.Generator().manual_seed(seed))
    return client.submit(model, (x,), shards=shards, pay=str(shards), audit_bps=10_000,
                         deadline="20m")


@pytest.fixture(scope="module")
def market() -> Iterator[Market]:
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0,
                         params=replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=120))
    with DevStack(config) as stack:
        client = stack.client()
        yield Market(stack, client, client.connection.contracts, _submit(client, 4, seed=1))


@pytest.fixture(scope="module")
def stack_logs(market: Market) -> Callable[[], str]:
    return lambda: stack_tails(market.stack)


@pytest.fixture(scope="module")
def settled(market: Market) -> dict[int, JobState]:
    """The first submission, every shard ended on chain (the cheater's slashed)."""
    states = market.wait_terminal(market.first.job_ids)
    assert JobState.SLASHED in states.values(), f"the cheater was not slashed: {states}"
    return states


def _text(page: Any, testid: str) -> str:
    return page.get_by_test_id(testid).first.inner_text()


def _wei(page: Any, testid: str) -> int:
    return int(page.get_by_test_id(testid).first.get_attribute("data-wei"))


def _wait_rendered_after(page: Any, before: str) -> None:
    wait_js(page, f"document.body.dataset.rendered !== '{before}'")


# ---------------------------------------------------------------------- live


def test_a_job_is_followed_live_from_posting_to_payment(
        market: Market, session_factory: Callable[..., PageSession]) -> None:
    s = session_factory(market.url)
    fetched: list[str] = []
    s.page.on("request", lambda r: fetched.append(r.url) if "/api/overview" in r.url else None)
    page = s.open("#/")
    page.evaluate("window.__noReload = 1")
    page.get_by_test_id("live-state").filter(has_text="live").wait_for()
    submission = _submit(market.client, 2, seed=2)
    job_id = submission.job_ids[0]
    # the overview lists the new job by itself, drawn from the overview the market's stream
    # sent (the page fetched it once, when it opened); follow its link (a hash change)
    new_job = page.locator(f'[data-testid="recent-job"][data-job="{job_id}"] a').first
    new_job.wait_for(timeout=30_000)
    assert len(fetched) == 1, f"the overview page fetched the overview again: {fetched}"
    new_job.click()
    page.get_by_test_id("job-state").wait_for()
    seen: list[str] = []

    def state() -> str | None:
        text = _text(page, "job-state")
        if not seen or seen[-1] != text:
            seen.append(text)
        return text if text in TERMINAL else None

    final = wait_until(state, f"job {job_id} terminal on the page (seen {seen})", 150,
                       market.stack.check_alive)
    assert page.evaluate("window.__noReload") == 1, "the page reloaded"
    chain = market.wait_terminal(submission.job_ids)
    assert final == chain[job_id].name.lower()
    assert len(seen) > 1, f"the page never showed the job before it ended: {seen}"
    # the group page shows both shards reach what the chain has: the honest worker's never
    # slashed, the cheater's never paid (which worker leases which shard is the market's
    # choice: the cheater may take both while the honest one still works on the first
    # submission; a verdict too late on a busy machine ends a job refunded)
    page.get_by_test_id("job-group").locator("a").click()
    page.get_by_test_id("shard-row").nth(1).wait_for()
    rows = page.get_by_test_id("shard-row")
    expected = {i: st.name.lower() for i, st in chain.items()}
    for i, st in expected.items():
        honest = market.contracts.job(i).worker.lower() == market.honest.lower()
        assert st != ("slashed" if honest else "finalized"), (i, st, "honest" if honest else
                                                              "cheater")

    def shown() -> dict[int, str]:
        return {int(rows.nth(i).get_attribute("data-job")): rows.nth(i).get_attribute("data-state")
                for i in range(rows.count())}

    wait_until(lambda: shown() == expected, f"group page {shown()} != chain {expected}", 30,
               market.stack.check_alive)
    assert page.evaluate("window.__noReload") == 1


# ---------------------------------------------------------------------- figures


def test_every_page_and_screenshots(market: Market, settled: dict[int, JobState],
                                    session_factory: Callable[..., PageSession]) -> None:
    paid = next(i for i, st in settled.items() if st == JobState.FINALIZED)
    group = market.client.market.job(paid).group
    verifier = market.contracts.job(paid).auditor
    routes = {"overview": "#/", "job": f"#/job/{paid}", "group": f"#/group/{group}",
              "provider": f"#/provider/{market.honest}", "verifier": f"#/verifier/{verifier}"}
    for viewport in ((1280, 800), (390, 844)):
        s = session_factory(market.url, viewport=viewport)
        for name, route in routes.items():
            page = s.open(route)
            assert page.get_by_test_id("error").is_hidden(), _text(page, "error")
            if name == "overview":
                page.get_by_test_id("settled-chart").locator("canvas").wait_for()
                assert int(_text(page, "workers-online")) == 2
            if name == "provider":
                page.get_by_test_id("earnings-chart").locator("canvas").wait_for()
            if viewport[0] == 390:  # nothing wider than the phone but the tables' own scrollers
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, f"{name} is {width}px wide on a phone"
            s.shot(name)
    # the job page: timeline with each step's transaction, the verdict, the verify command
    page = s.open(f"#/job/{paid}")
    assert _text(page, "job-state") == "finalized"
    events = market.contracts.job_events([paid])
    rows = page.get_by_test_id("timeline-row")
    shown = [(rows.nth(i).get_attribute("data-event"), _text(rows.nth(i), "timeline-tx"))
             for i in range(rows.count())]
    assert {(e.name, e.tx_hash) for e in events} <= set(shown), shown
    assert "JobPaid" in [n for n, _ in shown]
    assert _text(page, "audit-verdict") == "passed"
    assert _text(page, "audit-evidence").startswith("0x")
    # the evidence hash names a blob: the verifier's claim document, which hashes back to it
    href = page.get_by_test_id("evidence-link").get_attribute("href")
    document = page.request.get(urljoin(page.url, href))
    assert document.ok, (href, document.status)
    on_chain = _text(page, "audit-evidence").split()[0].removeprefix("0x")
    assert hashlib.sha256(document.body()).hexdigest() == on_chain
    assert _text(page, "verify-command") == f"mesh verify {paid}"


def test_provider_figures_equal_the_chain_to_the_wei(
        market: Market, settled: dict[int, JobState],
        session_factory: Callable[..., PageSession]) -> None:
    s = session_factory(market.url)
    for address in (market.honest, market.cheater):
        page = s.open(f"#/provider/{address}")
        report = earnings_report(market.contracts, address).to_json()
        totals = report["totals"]
        for key in ("earned", "withdrawn", "withdrawable"):
            assert _wei(page, f"total-{key}") == int(totals[key]["wei"]), key
        assert _wei(page, "status-pending") == int(totals["pending"]["wei"])
        assert _wei(page, "status-slashed") == int(totals["slashed"]["wei"])
        rows = page.get_by_test_id("earning-row")
        shown = sorted((int(rows.nth(i).get_attribute("data-job")),
                        rows.nth(i).get_attribute("data-status"), _wei(rows.nth(i), "row-amount"),
                        _wei(rows.nth(i), "row-fee")) for i in range(rows.count()))
        assert shown == sorted((r["job_id"], r["status"], int(r["amount"]["wei"]),
                                int(r["fee"]["wei"])) for r in report["rows"])
        stake = market.contracts.stake_of(address)
        assert _wei(page, "stake-free") == stake.free
        assert _wei(page, "stake-locked") == stake.locked
        assert _wei(page, "stake-unbonding") == stake.unbonding
        assert _wei(page, "stake-slashed") == stake.slashed
        assert _wei(page, "balance") == market.contracts.balance_of(address)


def test_the_cheaters_job_is_shown_slashed(market: Market, settled: dict[int, JobState],
                                           session_factory: Callable[..., PageSession]) -> None:
    slashed = next(i for i, st in settled.items() if st == JobState.SLASHED)
    s = session_factory(market.url)
    page = s.open(f"#/job/{slashed}")
    assert _text(page, "job-state") == "slashed"
    assert _text(page, "audit-verdict") in ("failed", "passed")  # an appeal may have decided
    assert page.get_by_test_id("job-worker").locator("a").get_attribute("title") == market.cheater
    page = s.open(f"#/provider/{market.cheater}")
    assert _wei(page, "status-slashed") > 0
    assert page.locator(f'[data-testid="slash-row"][data-job="{slashed}"]').count() == 1
    page = s.open("#/")
    assert int(_text(page, "slashes-count")) >= 1


# ---------------------------------------------------------------------- wallet


def _connect(page: Any, address: str) -> None:
    page.get_by_test_id("connect-wallet").click()
    wait_js(page, f"document.getElementById('wallet').dataset.account === '{address}'")


def _confirm(page: Any, function: str) -> None:
    dialog = page.get_by_test_id("confirm")
    dialog.wait_for()
    assert function in _text(page, "confirm-function"), _text(page, "confirm-function")
    page.get_by_test_id("confirm-ok").click()


def _notice(page: Any, text: str, timeout_ms: int = 30_000) -> None:
    page.get_by_test_id("notice").filter(has_text=text).wait_for(timeout=timeout_ms)


def test_stake_unstake_and_withdraw_through_the_wallet(
        market: Market, settled: dict[int, JobState],
        session_factory: Callable[..., PageSession]) -> None:
    address = market.honest
    wallet = FakeWallet(market.stack.chain.rpc_url, address)
    s = session_factory(market.url, wallet=wallet)
    page = s.open(f"#/provider/{address}")
    _connect(page, address)
    page.get_by_test_id("amount").wait_for()
    before = market.contracts.stake_of(address)
    page.get_by_test_id("amount").fill("10")
    page.get_by_test_id("stake").click()
    _confirm(page, "approve")  # the allowance to the StakeManager is short
    _confirm(page, "stake")
    _notice(page, "StakeManager.stake confirmed")
    after = market.contracts.stake_of(address)
    assert after.free + after.locked == before.free + before.locked + 10 * TOKEN
    # the page redraws with the new stake: the next amount is typed after that redraw (once,
    # under load, the unstake below sent the previous amount, 10: the redraw met the typing;
    # the page's side of it is not yet understood)
    wait_js(page, f"document.querySelector('[data-testid=stake-free]').dataset.wei === "
                  f"'{after.free}'")
    # unstake 4: it starts unbonding
    page.get_by_test_id("amount").fill("4")
    wait_js(page, "document.querySelector('[data-testid=amount]').value === '4'")
    page.get_by_test_id("unstake").click()
    _confirm(page, "unstake")
    _notice(page, "StakeManager.unstake confirmed")
    assert market.contracts.stake_of(address).unbonding == before.unbonding + 4 * TOKEN
    # the page shows the chain's new figures by itself
    wait_js(
        page,
        f"document.querySelector('[data-testid=stake-unbonding]').dataset.wei === "
        f"'{before.unbonding + 4 * TOKEN}'")
    # withdraw the earnings from JobMarket
    owed = market.contracts.account_of(address).withdrawable
    assert owed > 0, "the honest worker has nothing to withdraw"
    balance = market.contracts.balance_of(address)
    page.get_by_test_id("withdraw-earnings").click()
    _confirm(page, "withdraw")
    _notice(page, "JobMarket.withdraw confirmed")
    assert market.contracts.account_of(address).withdrawable == 0
    assert market.contracts.balance_of(address) == balance + owed
    # a cancelled confirmation sends nothing
    sent = len(wallet.sent)
    page.get_by_test_id("withdraw-unbonded").click()
    page.get_by_test_id("confirm-cancel").click()
    _notice(page, "Cancelled")
    assert len(wallet.sent) == sent
    assert page.get_by_test_id("error").is_hidden()


def test_a_client_cancels_a_job_nobody_holds_through_the_wallet(
        market: Market, session_factory: Callable[..., PageSession]) -> None:
    """A posted job whose spec the market does not hold is offered to no worker: its client
    cancels it from the job page and gets the whole escrow back."""
    client = market.stack.actor(market.stack.client_account)
    params = JobParams(spec_hash=os.urandom(32), reward=TOKEN, audit_fee=TOKEN // 10,
                       collateral=TOKEN, deadline=int(time.time()) + 3600, audit_bps=0)
    (job_id,) = client.post_jobs([params])
    # opened before the market indexed it, the page would rightly say "not known" (and the
    # browser log the 404): wait for the index
    wait_until(lambda: httpx.get(f"{market.url}/dashboard/api/jobs/{job_id}",
                                 timeout=10).status_code == 200,
               f"job {job_id} indexed by the market", 30, market.stack.check_alive)
    address = market.stack.client_account.address
    wallet = FakeWallet(market.stack.chain.rpc_url, address)
    s = session_factory(market.url, wallet=wallet)
    page = s.open(f"#/job/{job_id}")
    page.get_by_test_id("job-state").filter(has_text="posted").wait_for()
    _connect(page, address)
    balance = market.contracts.balance_of(address)
    page.get_by_test_id("reclaim").click()
    _confirm(page, "reclaim")
    _notice(page, "JobMarket.reclaim confirmed")
    assert market.states([job_id])[job_id] == JobState.REFUNDED
    assert market.contracts.balance_of(address) == balance + params.reward + params.audit_fee
    page.get_by_test_id("job-state").filter(has_text="refunded").wait_for()  # live, no reload
    assert page.get_by_test_id("reclaim").count() == 0


def test_wallet_on_the_wrong_chain_and_a_rejected_signature(
        market: Market, session_factory: Callable[..., PageSession]) -> None:
    address = market.honest
    wrong = FakeWallet(market.stack.chain.rpc_url, address, chain_id=1)
    s = session_factory(market.url, wallet=wrong)
    page = s.open(f"#/provider/{address}")
    page.get_by_test_id("connect-wallet").click()
    page.get_by_test_id("error").filter(has_text="on chain 1").wait_for()
    assert str(market.stack.chain.chain_id) in _text(page, "error")

    rejecting = FakeWallet(market.stack.chain.rpc_url, address, reject=True)
    s = session_factory(market.url, wallet=rejecting)
    page = s.open(f"#/provider/{address}")
    _connect(page, address)
    page.get_by_test_id("withdraw-earnings").click()
    _confirm(page, "withdraw")
    page.get_by_test_id("error").filter(has_text="rejected").wait_for()
    assert "nothing was sent" in _text(page, "error")
    assert page.get_by_test_id("provider-address").is_visible()  # the page is still there


# ---------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_message(market: Market,
                                        session_factory: Callable[..., PageSession]) -> None:
    s = session_factory(market.url)
    s.allow("Failed to load resource")  # the browser logs each 4xx/5xx it was answered
    page = s.open("#/job/999999")
    assert "404" in _text(page, "error")
    # a malformed address (docs/dashboard-api.md says 400; the market answers 422 today)
    page = s.open("#/provider/0xnot-an-address")
    assert "Malformed request" in _text(page, "error")
    assert "not an Ethereum address" in _text(page, "error")
    page = s.open("#/verifier/0x1234")
    assert "Malformed request" in _text(page, "error")
    page = s.open("#/nowhere")
    assert "There is no page" in _text(page, "error")
    # a pruned job (the market answers 410 after job_retention_s)
    page.route("**/dashboard/api/jobs/7", lambda route: route.fulfill(
        status=410, json={"detail": "job 7 was pruned after the market's retention"}))
    page = s.open("#/job/7")
    assert "410" in _text(page, "error") and "pruned" in _text(page, "error")
    page.unroute("**/dashboard/api/jobs/7")
    # chain or Redis down: 503
    page.route("**/dashboard/api/overview", lambda route: route.fulfill(
        status=503, json={"detail": "chain unreachable"}))
    page = s.open("#/")
    assert "503" in _text(page, "error")
    page.unroute("**/dashboard/api/overview")


def test_a_market_that_is_down_and_a_stale_index(
        market: Market, session_factory: Callable[..., PageSession]) -> None:
    s = session_factory(market.url)
    s.allow("Failed to load resource", "net::ERR_FAILED", "EventSource")
    page = s.open("#/")
    assert page.get_by_test_id("stale").count() == 0
    page.route("**/dashboard/api/**", lambda route: route.abort())
    page.evaluate("location.hash = '#/provider/" + market.honest + "'")
    page.get_by_test_id("error").filter(has_text="not reachable").wait_for()
    page.unroute("**/dashboard/api/**")

    def stale_overview(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["chain"]["stale"] = True
        route.fulfill(response=response, json=body)

    page.route("**/dashboard/api/overview", stale_overview)
    s.open("#/")
    page.get_by_test_id("stale").wait_for()
    assert page.get_by_test_id("stale").is_visible()
    page.unroute("**/dashboard/api/overview")
