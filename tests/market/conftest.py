"""Fixtures for market API tests: a deployed marketplace on the session anvil, a market
runtime on its own Redis database, and the real app served by uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_lib
import uvicorn

from meshcompute.chain.deploy import save_deployment
from meshcompute.market.api.app import create_app
from meshcompute.market.runtime import MarketRuntime
from meshcompute.settings import Settings, load_settings
from meshcompute.wire.market_client import MarketClient
from tests.contracts.world import World, build_world

MAX_BLOB_BYTES = 4 * 1024 * 1024


@dataclass
class Market:
    world: World
    settings: Settings
    rt: MarketRuntime
    url: str

    @property
    def contract(self) -> str:
        """The JobMarket address this market's signed requests name."""
        return self.world.deployment.address("JobMarket")

    def client(self, account=None) -> MarketClient:
        return MarketClient(self.url, account, self.world.deployment.chain_id, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def market_settings(root: Path, rpc_url: str, redis_url: str, **overrides) -> Settings:
    values = {
        "rpc_url": rpc_url,
        "chain_id": 31337,
        "data_dir": root,
        "deployments_dir": root / "deployments",
        "redis_url": redis_url,
        "max_blob_bytes": MAX_BLOB_BYTES,
        "lease_s": 60,
        "stake_cache_s": 0,
        # with no stake cache every signed request of an address without credit is a chain
        # read: the tests' strangers would meet the lookup rations meant for fresh-key floods
        "rate_lookups_per_s": 1000,
        "rate_lookups_per_ip_per_s": 1000,
        "offer_ttl_s": 30,
        "market_json_logs": False,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="module")
def market(anvil, redis_url, tmp_path_factory, request) -> Iterator[Market]:
    """A fresh deployment, a flushed Redis database of its own, and the app on uvicorn."""
    db = getattr(request.module, "REDIS_DB", 11)
    url = f"{redis_url.rstrip('/')}/{db}"
    redis_lib.Redis.from_url(url).flushdb()
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    root = tmp_path_factory.mktemp("market")
    settings = market_settings(root, anvil.rpc_url, url,
                               **getattr(request.module, "MARKET_SETTINGS", {}))
    save_deployment(world.deployment, settings.deployments_dir)
    rt = MarketRuntime.from_settings(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                       lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("market API did not start")
        time.sleep(0.02)
    try:
        yield Market(world=world, settings=settings, rt=rt, url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()
        anvil.revert(snapshot)
        world.resync()


@pytest.fixture
def mk(market: Market, anvil) -> Iterator[Market]:
    """The module's market with a clean slate per test: chain snapshot reverted afterwards,
    the market's Redis database flushed before."""
    market.rt.redis.flushdb()
    anvil.mine(1)  # a fresh block, so world.now() is current chain time
    snapshot = anvil.snapshot()
    try:
        yield market
    finally:
        anvil.revert(snapshot)
        market.world.resync()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    """A decoding Redis client on the test Redis."""
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis_lib.Redis, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh key prefix for one test (named after its module), deleted afterwards."""
    name = f"test:{request.module.__name__.rsplit('.', 1)[-1]}:{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(redis_client.scan_iter(match=name + "*"))
    if keys:
        redis_client.delete(*keys)
