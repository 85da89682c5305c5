"""The market API's factory: one FastAPI app wiring the routers of
:mod:`meshcompute.market.api.routes`, the runtime they depend on, and the error answers. The
contract is docs/market-api.md; ``/openapi.json`` is the generated reference.
"""

from __future__ import annotations

import sys
import time

import redis
from fastapi import FastAPI
from fastapi.routing import APIRoute

from meshcompute.errors import ServiceUnavailable
from meshcompute.market.api.deps import LazyRuntime, signed_address
from meshcompute.market.api.errors import ERROR_RESPONSES, install_error_handlers
from meshcompute.market.api.gate import RequestGate, check_public_hosts
from meshcompute.market.api.routes import (
    blobs,
    dashboard,
    groups,
    health,
    jobs,
    leases,
    results,
    specs,
    workers,
)
from meshcompute.market.ratelimit import RequestLimiter
from meshcompute.market.runtime import MarketRuntime
from meshcompute.settings import Settings
from meshcompute.wire.auth import SignedRequest

_RECURSION_LIMIT = 4000


def create_app(settings: Settings, *, runtime: MarketRuntime | None = None) -> FastAPI:
    """The market API for ``settings`` (``runtime`` injects a prebuilt one, for tests)."""
    # py_ecc (imported with eth_account) raises the interpreter's recursion limit to 100000:
    # json.loads of a body nested that deep then overflows the C stack and kills the whole
    # process, before any signature is checked. The market needs no deep recursion; with
    # this limit such a body is refused with 400 like any unparsable one.
    sys.setrecursionlimit(min(sys.getrecursionlimit(), _RECURSION_LIMIT))
    app = FastAPI(
        title="meshcompute market",
        version="1",
        description="Operator service of the meshcompute marketplace; see docs/market-api.md.",
        responses=ERROR_RESPONSES,
    )
    def build() -> MarketRuntime:
        built = runtime or MarketRuntime.from_settings(settings)
        check_public_hosts(settings, built.chain_id)
        return built

    lazy = LazyRuntime(build)
    app.state.runtime = lazy
    install_error_handlers(app)
    routers = [module.router for module in
               (health, blobs, jobs, groups, specs, workers, leases, results,
                dashboard)]
    for router in routers:
        app.include_router(router)
    # outermost: a request is bounded and its signature checked before any route reads it
    limiter = RequestLimiter(settings)
    app.add_middleware(RequestGate, settings=settings,
                       routes=[route for router in routers for route in router.routes
                               if isinstance(route, APIRoute)],
                       identity=lambda: lazy.get().identity, signer=signed_address,
                       limit=lambda address, ip, lookup: limiter.check(
                           lazy.get(), address=address, client_ip=ip, lookup=lookup),
                       claim=lambda signed, check_only: _claim(lazy.get(), signed,
                                                               check_only))
    return app


def _claim(rt: MarketRuntime, signed: SignedRequest, check_only: bool) -> None:
    """Check (``check_only``) or claim a signed request's nonce; a Redis that cannot be
    reached is 503, not a 500 from the outermost middleware."""
    try:
        if check_only:
            rt.state.check_nonce_unused(signed.address, signed.nonce)
        else:
            rt.state.claim_nonce(signed.address, signed.nonce, expires=signed.expires,
                                 now=time.time())
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"request nonces cannot be checked: {exc}") from None


def app_from_settings() -> FastAPI:
    """The app for this process's settings: the factory each of uvicorn's worker processes
    calls when the API runs in several (``market_api_workers`` > 1)."""
    from meshcompute.logs import configure_logging
    from meshcompute.settings import get_settings

    settings = get_settings()
    configure_logging("market", json_lines=settings.market_json_logs)
    return create_app(settings)
