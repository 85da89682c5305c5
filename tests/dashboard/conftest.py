"""Browser fixtures for the dashboard (issue 16): Debian's Chromium driven by Playwright, one
dev stack (anvil, Valkey, market, two verifiers, an honest worker and a cheater) per module.

A failing test prints the stack's log tails (so it fails with its cause, not at a timeout), and
every test fails on a console error or an uncaught page error."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _skip_without_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: `make setup` installs Debian's chromium package "
                    "(apt-get install chromium) for the dashboard's browser tests")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _skip_without_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"],
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class FakeWallet:
    """What an EIP-1193 wallet answers, backed by anvil (whose dev accounts are unlocked, so
    eth_sendTransaction with ``from`` signs there: no key in the page or in this process)."""

    rpc_url: str
    address: str
    chain_id: int | None = None
    """Report this chain id instead of anvil's (a wallet on the wrong chain)."""
    reject: bool = False
    """Answer eth_sendTransaction with EIP-1193 error 4001 (the user rejected it)."""
    sent: list[dict[str, Any]] = field(default_factory=list)

    def request(self, method: str, params_json: str) -> dict[str, Any]:
        params = json.loads(params_json or "[]")
        if method in ("eth_requestAccounts", "eth_accounts"):
            return {"result": [self.address]}
        if method == "eth_chainId" and self.chain_id is not None:
            return {"result": hex(self.chain_id)}
        if method == "eth_sendTransaction":
            if self.reject:
                return {"error": {"code": 4001, "message": "User rejected the request."}}
            self.sent.append(params[0])
        answer = httpx.post(self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                "params": params}, timeout=30).json()
        return {"error": answer["error"]} if "error" in answer else {"result": answer["result"]}


WALLET_SCRIPT = """
window.ethereum = {
  isMeshFakeWallet: true,
  async request({ method, params }) {
    const answer = await window.__meshWalletRequest(method, JSON.stringify(params || []));
    if (answer.error) {
      const err = new Error(answer.error.message);
      err.code = answer.error.code;
      throw err;
    }
    return answer.result;
  },
  on() {}, removeListener() {},
};
"""


@dataclass
class PageSession:
    """A page with its console errors collected; ``open`` loads a hash route and waits for it."""

    page: Any
    base_url: str
    errors: list[str]
    allowed: list[str] = field(default_factory=list)

    def open(self, route: str = "#/") -> Any:
        self.page.goto("about:blank")
        self.page.goto(f"{self.base_url}/dashboard{route}")
        wait_js(self.page, "document.body.dataset.rendered !== undefined")
        return self.page

    def allow(self, *fragments: str) -> None:
        """Console errors the test expects (the browser logs a failed load of a 4xx/5xx)."""
        self.allowed.extend(fragments)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def shot(self, name: str) -> None:
        width = self.page.viewport_size["width"]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)


@pytest.fixture
def session_factory(browser: Any, request: pytest.FixtureRequest,
                    stack_logs: Callable[[], str]) -> Iterator[Callable[..., PageSession]]:
    """Make pages (optionally with a test wallet); at the end fail on any unexpected console
    error, and print the stack's logs when the test failed."""
    contexts: list[Any] = []
    sessions: list[PageSession] = []

    def make(base_url: str, wallet: FakeWallet | None = None,
             viewport: tuple[int, int] = (1280, 800)) -> PageSession:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        if wallet is not None:
            context.expose_function("__meshWalletRequest", wallet.request)
            context.add_init_script(WALLET_SCRIPT)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        session = PageSession(page, base_url, errors)
        sessions.append(session)
        return session

    try:
        yield make
    finally:
        for context in contexts:
            context.close()
    failed = request.node.stash.get(_FAILED, False)
    if failed:
        print(stack_logs())
    else:
        problems = [e for s in sessions for e in s.unexpected_errors()]
        assert not problems, "errors in the browser console:\n" + "\n".join(problems)


def wait_js(page: Any, expression: str, timeout_s: float = 20.0) -> Any:
    """Poll a JavaScript expression until it is truthy. Not ``page.wait_for_function``: that
    evaluates the string in the page, which the dashboard's Content-Security-Policy (no
    'unsafe-eval') refuses, as it should; this asks through the DevTools protocol."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression!r} still false after {timeout_s:.0f} s")
        time.sleep(0.05)


def wait_until(check: Callable[[], Any], what: str, timeout_s: float,
               alive: Callable[[], None] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the limit."""
    give_up = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        value = check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.3)


def stack_tails(stack: Any, lines: int = 25) -> str:
    return "\n".join(f"--- {name} (last {lines} lines)\n{service.tail(lines)}"
                     for name, service in stack.services.items())

