"""``GET /workers/capacity``: the live workers in aggregate, no addresses, bounded output."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
import redis as redis_lib

from meshcompute.market import operations
from meshcompute.market.state import MarketState
from meshcompute.wire.market_client import CapacityRow, MarketClient, WorkerCapacity
from tests.market.helpers import register

NOW = 1_700_000_000.0
CUDA = {"device": "cuda", "cores": 8, "memory_mb": 65536,
        "gpus": [{"name": "H100", "memory_mb": 81920}]}
CPU = {"device": "cpu", "cores": 4, "memory_mb": 8192}


class FakeRuntime(SimpleNamespace):
    """What worker_capacity reads of a MarketRuntime (a subclass takes weak references, as a
    runtime does)."""


@pytest.fixture
def rt(redis_url):
    client = redis_lib.Redis.from_url(f"{redis_url.rstrip('/')}/13")
    client.flushdb()
    operations._capacity_cache.clear()
    yield FakeRuntime(state=MarketState(client), heartbeat_timeout_s=30.0)
    client.close()


def _save(rt, n: int, hardware, price: int, *, seen: float = NOW) -> None:
    rt.state.save_worker("0x" + f"{n:040x}", operator="op", hardware=hardware, price_wei=price,
                         slots=2, now=seen)


def test_capacity_counts_live_workers_by_hardware_and_price_without_addresses(rt):
    for n in range(3):
        _save(rt, n, CPU, 5)
    _save(rt, 3, CUDA, 7)
    _save(rt, 4, CUDA, 7, seen=NOW - 31)  # silent too long: not live, as matching sees it
    view = operations.worker_capacity(rt, NOW)
    assert view == {"live_workers": 4, "truncated": False, "rows": [
        {"device": "cpu", "memory_mb": 8192, "gpu_memory_mb": 0, "price_wei": "5", "workers": 3},
        {"device": "cuda", "memory_mb": 65536, "gpu_memory_mb": 81920, "price_wei": "7",
         "workers": 1},
    ]}
    assert "0x" not in json.dumps(view) and "op" not in json.dumps(view)


def test_capacity_is_capped_and_says_so(rt, monkeypatch):
    monkeypatch.setattr(operations, "CAPACITY_MAX_ROWS", 3)
    for n in range(5):
        _save(rt, n, CPU, n)  # five distinct prices
    _save(rt, 9, CPU, 0)
    view = operations.worker_capacity(rt, NOW)
    assert view["live_workers"] == 6 and view["truncated"]
    assert len(view["rows"]) == 3 and view["rows"][0] == {
        "device": "cpu", "memory_mb": 8192, "gpu_memory_mb": 0, "price_wei": "0", "workers": 2}


def test_capacity_is_reused_for_a_moment(rt):
    _save(rt, 1, CPU, 1)
    first = operations.worker_capacity(rt, NOW)
    _save(rt, 2, CPU, 1)
    assert operations.worker_capacity(rt, NOW + 1) == first
    assert operations.worker_capacity(rt, NOW + operations.CAPACITY_CACHE_S)["live_workers"] == 2


def test_the_route_serves_it_unauthenticated(mk):
    operations._capacity_cache.clear()
    register(mk, mk.world.workers[0], price_wei=3)
    reader = MarketClient(mk.url, None, mk.world.deployment.chain_id, timeout=30)
    capacity = reader.worker_capacity()
    assert capacity == WorkerCapacity(
        live_workers=1, rows=(CapacityRow("cpu", 4096, 0, 3, 1),), truncated=False)


def test_a_market_without_the_route_gives_none() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    reader = MarketClient("http://market", None, 31337, transport=transport)
    assert reader.worker_capacity() is None
