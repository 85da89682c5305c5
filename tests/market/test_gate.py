"""meshcompute.market.api.gate: which routes are gated as what (no network: the app's own
route table), and the server limits ``mesh market serve`` hands to uvicorn."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel

from meshcompute.market.api.app import create_app
from meshcompute.market.api.deps import signed_address
from meshcompute.market.api.gate import Kind, RequestGate, route_kind
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


def test_serve_passes_the_connection_and_header_limits_to_uvicorn(monkeypatch, tmp_path):
    import uvicorn

    from meshcompute.mesh.cli import market as market_cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
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
