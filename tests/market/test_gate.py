"""meshcompute.market.api.gate: which routes are gated as what (no network: the app's own
route table), and the server limits ``mesh market serve`` hands to uvicorn."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel

from meshcompute.market.api.app import create_app
from meshcompute.market.api.deps import signed_address
from meshcompute.market.api.gate import Kind, RequestGate, client_key, route_kind
from meshcompute.settings import Settings


def _gate(app) -> dict:
    (middleware,) = [m for m in app.user_middleware if m.cls is RequestGate]
    return middleware.kwargs


def test_every_route_is_gated_and_every_signed_route_is_checked_before_its_body(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))
    routes = _gate(app)["routes"]
    kinds = {(next(iter(route.methods)), route.path): route_kind(route, signed_address)
             for route in routes}
    # every API route of the app is in the gate's table
    assert len(routes) == len({(tuple(sorted(r.methods)), r.path) for r in routes})
    assert {path for _, path in kinds} >= {"/workers", "/leases", "/specs/batch",
                                          "/results/{job_id}", "/blobs/fetch"}
    assert kinds[("PUT", "/blobs/{sha256}")] is Kind.SIGNED_BLOB
    assert kinds[("POST", "/blobs/bundle")] is Kind.SIGNED_BUNDLE
    assert kinds[("POST", "/blobs/fetch")] is Kind.PUBLIC_JSON
    for (method, path), kind in kinds.items():
        if (method, path) == ("GET", "/groups/{group}/output"):
            assert kind is Kind.SIGNED_JSON  # the group's client's alone (an empty body)
        elif method == "GET":
            assert kind is Kind.NO_BODY, path
        elif path not in ("/blobs/fetch", "/blobs/bundle", "/blobs/{sha256}"):
            # every other state-changing route depends on the signer
            assert kind is Kind.SIGNED_JSON, (method, path)


class _In(BaseModel):
    x: int


def test_a_route_with_a_body_and_no_signer_is_public(tmp_path):
    router = APIRouter()

    @router.post("/open")
    def open_route(body: _In) -> dict:
        return {}

    (route,) = [r for r in router.routes if isinstance(r, APIRoute)]
    assert route_kind(route, signed_address) is Kind.PUBLIC_JSON


@pytest.mark.parametrize("workers", [1, 3])
def test_serve_passes_the_connection_and_header_limits_to_uvicorn(monkeypatch, tmp_path,
                                                                  workers):
    import uvicorn

    from meshcompute.mesh.cli import market as market_cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setenv("MESH_MARKET_API_WORKERS", str(workers))
    monkeypatch.setenv("MESH_MARKET_MAX_CONNECTIONS", "77")
    monkeypatch.setenv("MESH_MARKET_MAX_HEADER_BYTES", "8192")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    from meshcompute.settings import get_settings

    get_settings.cache_clear()
    try:
        market_cli.serve(host=None, port=None)
    finally:
        get_settings.cache_clear()
    assert seen["limit_concurrency"] == 77
    assert seen["h11_max_incomplete_event_size"] == 8192
    from meshcompute.market.api.connections import GuardedH11Protocol

    assert seen["http"] is GuardedH11Protocol  # head deadlines, connections per client
    if workers == 1:  # one process: the app itself
        assert not seen["factory"] and seen["workers"] is None
    else:  # several: each of uvicorn's processes builds its own from the same settings
        assert (seen["app"], seen["factory"], seen["workers"]) == (
            "meshcompute.market.api.app:app_from_settings", True, workers)
        from meshcompute.market.api.app import app_from_settings

        monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
        get_settings.cache_clear()
        try:
            assert app_from_settings().title == "meshcompute market"
        finally:
            get_settings.cache_clear()


@pytest.mark.parametrize("size", [1023])
def test_the_json_limit_has_a_floor(size):
    with pytest.raises(ValueError, match="max_json_body_bytes"):
        Settings(max_json_body_bytes=size)


def test_a_market_off_the_dev_chain_must_name_its_public_hosts(tmp_path):
    from meshcompute.errors import ConfigError
    from meshcompute.market.api.gate import check_public_hosts

    check_public_hosts(Settings(data_dir=tmp_path), 31337)  # the dev chain: Host header
    with pytest.raises(ConfigError, match="MESH_MARKET_PUBLIC_HOSTS is required on chain id 5"):
        check_public_hosts(Settings(data_dir=tmp_path), 5)
    check_public_hosts(Settings(data_dir=tmp_path, market_public_hosts="market.example"), 5)


def test_chain_reads_for_addresses_without_credit_queue_and_known_users_pass_them():
    """Lookups of fresh keys' standing run ``market_lookup_concurrency`` at a time, each
    waiting at most ``market_stranger_wait_s`` (429); an address with credit lately never
    waits in that queue. The gate around a stand-in ``limit`` (its chain read held open)."""
    import asyncio
    import threading

    import httpx
    from eth_account import Account
    from fastapi import Depends, FastAPI

    from meshcompute.wire.auth import sign_request

    def signer() -> str:  # the dependency that marks a route as signed
        return ""

    app = FastAPI()

    @app.post("/ping")
    def ping(body: _In, who: str = Depends(signer)) -> dict:
        return {"x": body.x}

    release = threading.Event()
    staked = Account.create()
    known = staked.address
    looked_up: list[str] = []

    def limit(address, ip, lookup):
        if address == known:
            return False
        if not lookup:
            return None  # not cached, no credit lately: the gate queues the read
        looked_up.append(address)
        release.wait(10)  # the chain read, held open
        return True

    contract = "0x" + "ab" * 20
    settings = Settings(market_lookup_concurrency=1, market_stranger_wait_s=0.3)
    gated = RequestGate(app, settings=settings,
                        routes=[r for r in app.routes if isinstance(r, APIRoute)],
                        identity=lambda: (31337, contract), signer=signer, limit=limit,
                        claim=lambda signed, check_only: None)

    async def post(account) -> httpx.Response:
        body = b'{"x": 1}'
        headers = sign_request(account, "POST", "/ping", body, 31337, market="test",
                               contract=contract)
        headers["Content-Type"] = "application/json"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gated),
                                     base_url="http://test") as client:
            return await client.post("/ping", content=body, headers=headers)

    async def scenario():
        first = asyncio.create_task(post(Account.create()))
        await asyncio.sleep(0.05)  # its lookup holds the one place
        second = await post(Account.create())
        served = await post(staked)
        release.set()
        return await first, second, served

    first, second, served = asyncio.run(scenario())
    assert second.status_code == 429
    assert "busy with requests from addresses without stake" in second.json()["detail"]
    assert served.status_code == 200, served.text  # served while the lookup was held
    assert first.status_code == 200
    assert len(looked_up) == 1  # the refused one cost no chain read


def test_an_ipv6_client_is_rated_by_its_64_network():
    # one client holds a whole /64: counting each address would give it 2^64 rates
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == \
        "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("testclient") == "testclient"
