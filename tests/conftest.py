"""Session-wide fixtures: a shared anvil node and a Redis URL (embedded Valkey by default).

Both are stopped when the session ends, so no process outlives pytest. Under pytest-xdist
(``make test`` runs two workers) each worker is a session of its own, with its own anvil and
Valkey; :func:`pytest_xdist_make_scheduler` decides which tests share a worker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from meshcompute.chain.local import LocalChain
from meshcompute.settings import get_settings

if TYPE_CHECKING:
    from tests.contracts.world import World


@pytest.fixture(scope="session")
def anvil_binary() -> str:
    """The anvil executable; skips the test when it is not installed."""
    path = get_settings().anvil_path
    if shutil.which(path) is None:
        message = f"anvil not found at {path!r}; run `make setup`"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the anvil suites, never skip them
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def anvil(anvil_binary: str) -> Iterator[LocalChain]:
    """One anvil for the whole session (automine). Tests that change its state should
    snapshot/revert, as the ``dev_chain`` fixture does."""
    with LocalChain(anvil_path=anvil_binary) as chain:
        yield chain


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` when set; otherwise an embedded Valkey on a free loopback port. Under
    pytest-xdist only the first worker's tests use ``REDIS_URL``: they pick their database
    numbers themselves, so two workers on one server would flush each other's; the others
    start their own Valkey. (A process stack reads ``REDIS_URL`` itself: the stack tests all
    run on one worker.)"""
    configured = os.environ.get("REDIS_URL") or os.environ.get("MESH_REDIS_URL")
    if configured and os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        yield configured
        return
    from meshcompute.market.embedded_redis import start_valkey

    server = start_valkey()
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def _deployed(anvil: LocalChain) -> Iterator[World]:
    """The marketplace deployed once per test module (tests/contracts/world.py)."""
    from tests.contracts.world import build_world

    snapshot = anvil.snapshot()
    world = build_world(anvil)
    yield world
    anvil.revert(snapshot)
    world.resync()


@pytest.fixture
def world(_deployed: World, anvil: LocalChain) -> Iterator[World]:
    """The module's deployed world, reverted to its state before the test afterwards."""
    snapshot = anvil.snapshot()
    yield _deployed
    anvil.revert(snapshot)
    _deployed.resync()


#: Tests that run whole process stacks (anvil, Valkey, the market, workers, verifiers, a
#: browser): one after another on one xdist worker, so two stacks never share the two cores
#: and a stack's timing is what it would be alone beside the lighter tests.
STACK_TESTS = ("tests/e2e/", "tests/test_demo.py", "tests/dashboard/test_dashboard_browser.py")

#: Tests that write the same files in the checkout (the Solidity compilers' caches and
#: slither's export folder): on one worker.
SHARED_CHECKOUT_TESTS = ("tests/unit/test_slither.py", "tests/unit/test_artifacts.py")


def xdist_group_of(nodeid: str) -> str:
    """The group a test runs in under ``make test``'s xdist workers: the stacks together, the
    tests sharing checkout files together, and otherwise its module, so a module's fixtures
    (a deployed world, a market) are built once, on one worker."""
    if nodeid.startswith(STACK_TESTS):
        return "stack"
    if nodeid.startswith(SHARED_CHECKOUT_TESTS):
        return "checkout"
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With ``--dist loadscope`` (``make test``), whole groups (:func:`xdist_group_of`) are
    handed to the workers instead of modules. Not xdist's own ``loadgroup``: under pytest 9
    the group it appends to a test's id does not take (pytest reads ``Node._id``), so every
    test would go out alone."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    return ByGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The stack tests first: they are the longest chain run one after another, so the other
    worker takes the rest beside them (``make test`` passes ``--no-loadscope-reorder``, so the
    groups are handed out in this order)."""
    items.sort(key=lambda item: xdist_group_of(item.nodeid) != "stack")
