"""The gate every request passes before a route sees it: a signed request's signature is
checked from its headers before a byte of its body is read (401), and no body is read past the
limit of its route (413, up front from Content-Length or as soon as the bytes pass it).

Why here and not in the routes: FastAPI reads and parses a JSON body before it resolves a
route's dependencies, so a signature checked in a dependency comes after the whole body is in
memory. A stranger's 300 MiB unsigned POST must cost the market nothing but its headers.

What each route may carry (:class:`Kind`), found from the app's own routes:

- ``SIGNED_JSON``: a route that depends on :data:`deps.Signer`: headers checked, then the
  body read whole up to ``max_json_body_bytes`` and checked against the signed hash, then
  handed to the route;
- ``SIGNED_BLOB`` (``PUT /blobs/{sha256}``): signed over the blob's name; streamed to the
  route, which stores it, cut off past ``max_blob_bytes``;
- ``SIGNED_BUNDLE`` (``POST /blobs/bundle``): headers checked; the route reads at most
  ``max_bundle_bytes`` and checks the bytes against the signed hash;
- ``PUBLIC_JSON``: an unsigned route with a body (``POST /blobs/fetch``): read whole up to
  ``max_json_body_bytes``;
- ``NO_BODY``: everything else, unknown paths included; a request that carries a body is
  refused unread.

Before any body is read, the request must also be within its rate (``market/ratelimit.py``:
a signed request its address's, from its stake and open escrow; an unsigned one its client
IP's): 429 with Retry-After otherwise. Signed requests of strangers (no stake, no open
escrow) are then served ``market_stranger_concurrency`` at a time: a flood from fresh keys
queues behind itself, not in front of staked workers and paying clients.

A signed request's nonce is checked as soon as its signature checks out, before its rate is
counted: a captured request replayed by someone else is refused (401) without spending its
signer's rate, so nobody can throttle a user with copies of the user's own requests. It is
claimed once the rate passed (so the nonces the market stores grow with the rates, not with
what anyone sends); a client that gets 429 signs its next attempt afresh.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import ipaddress
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match

from meshcompute.errors import AuthError, ConfigError, MeshError
from meshcompute.market.ratelimit import RateLimited
from meshcompute.settings import Settings
from meshcompute.units import DEV_CHAIN_ID
from meshcompute.wire.auth import SignedRequest, check_body, verify_signed_request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SIGNED = "mesh_signed"
"""``request.state`` key of the :class:`SignedRequest` the gate checked."""


class Kind(enum.Enum):
    NO_BODY = "no body"
    PUBLIC_JSON = "public JSON"
    SIGNED_JSON = "signed JSON"
    SIGNED_BLOB = "signed blob stream"
    SIGNED_BUNDLE = "signed bundle"


_LIMITS = {
    Kind.PUBLIC_JSON: ("a JSON body", "max_json_body_bytes"),
    Kind.SIGNED_JSON: ("a JSON body", "max_json_body_bytes"),
    Kind.SIGNED_BLOB: ("a blob", "max_blob_bytes"),
    Kind.SIGNED_BUNDLE: ("a bundle", "max_bundle_bytes"),
}
"""What a route's body is called, and the setting that limits it."""


def too_large(kind: Kind, limit: int, size: int | None = None) -> BodyTooLarge:
    what, setting = _LIMITS[kind]
    of = f" of {size} bytes" if size is not None else ""
    return BodyTooLarge(f"{what}{of} exceeds the limit of {limit} bytes ({setting}); "
                        "nothing was stored")


STREAMS: dict[tuple[str, str], Kind] = {
    ("PUT", "/blobs/{sha256}"): Kind.SIGNED_BLOB,
    ("POST", "/blobs/bundle"): Kind.SIGNED_BUNDLE,
}
"""The signed routes that read their own body as a stream (they authenticate in the
endpoint, over a hash they know)."""


class BodyTooLarge(MeshError):
    """A request body over its route's limit (HTTP 413)."""


class BodyTimeout(MeshError):
    """A JSON body that did not arrive in time (HTTP 408): a slow sender holds nothing."""


def route_kind(route: APIRoute, signer: Callable[..., Any]) -> Kind:
    """What ``route`` may carry; ``signer`` is the dependency that marks a signed route."""
    for method in route.methods or ():
        kind = STREAMS.get((method, route.path))
        if kind is not None:
            return kind
    if _depends_on(route.dependant, signer):
        return Kind.SIGNED_JSON
    if route.body_field is not None:
        return Kind.PUBLIC_JSON
    return Kind.NO_BODY


def _depends_on(dependant: Any, call: Callable[..., Any]) -> bool:
    return any(dep.call is call or _depends_on(dep, call) for dep in dependant.dependencies)


class RequestGate:
    """Pure ASGI middleware (see the module docstring) in front of ``routes`` (the app's
    routes, as included without a prefix). ``identity`` gives the chain id and JobMarket
    address the signatures name (it may block: it is called once, in a thread); ``signer`` is
    the dependency of signed routes; ``claim(signed, check_only)`` claims a verified request's
    nonce, or with ``check_only`` only checks it is unclaimed (AuthError for one seen before);
    ``limit`` counts a request against its rate (see
    :meth:`RequestLimiter.check`)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, routes: Sequence[APIRoute],
                 identity: Callable[[], tuple[int, str]], signer: Callable[..., Any],
                 limit: Callable[[str | None, str, bool], bool | None],
                 claim: Callable[[SignedRequest, bool], None]) -> None:
        self.app = app
        self.settings = settings
        self.identity = identity
        self.claim = claim
        self.limit = limit
        self.routes = [(route, route_kind(route, signer)) for route in routes]
        # signed requests of strangers (no stake, no open escrow) run a few at a time, so
        # their floods queue among themselves, not in front of staked workers and clients
        self._strangers = asyncio.Semaphore(settings.market_stranger_concurrency)
        # so do the chain reads of addresses with no stake or escrow lately (a fresh key's
        # first request): a flood of fresh keys costs the market a few reads at a time
        self._lookups = asyncio.Semaphore(settings.market_lookup_concurrency)
        self._identity: tuple[int, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self._kind_of(scope)
        if kind is Kind.NO_BODY:
            try:
                if _has_body(Request(scope).headers):
                    # refused unread (an unknown path too: a 404 would read the body to its end)
                    raise BodyTooLarge("this request takes no body")
                await run_in_threadpool(self.limit, None, _client_ip(scope), False)
            except MeshError as exc:
                await _refuse(exc)(scope, receive, send)
                return
            await self.app(scope, _capped(receive, 0, kind), send)
            return
        try:
            stranger = await self._limit_rate(scope, kind)
        except MeshError as exc:
            await _refuse(exc)(scope, receive, send)
            return
        if stranger:
            try:
                await self._wait(self._strangers)
            except RateLimited as exc:
                await _refuse(exc)(scope, receive, send)
                return
            try:
                await self._serve(scope, receive, send, kind)
            finally:
                self._strangers.release()
        else:
            await self._serve(scope, receive, send, kind)

    async def _limit_rate(self, scope: Scope, kind: Kind) -> bool:
        """The signature checked from the headers (a signed kind), then the caller's rate;
        whether the signer is a stranger."""
        address = None
        if kind is not Kind.PUBLIC_JSON:
            signed = await self._verify(Request(scope), kind)
            # a replayed copy is refused before it counts against its signer's rate
            await run_in_threadpool(self.claim, signed, True)
            scope.setdefault("state", {})[SIGNED] = signed
            address = signed.address
        client_ip = _client_ip(scope)
        stranger = await run_in_threadpool(self.limit, address, client_ip, False)
        if stranger is None:  # a chain read for an address without credit lately
            await self._wait(self._lookups)
            try:
                stranger = await run_in_threadpool(self.limit, address, client_ip, True)
            finally:
                self._lookups.release()
        if address is not None:  # claimed once within its rate: stored nonces follow rates
            await run_in_threadpool(self.claim, scope["state"][SIGNED], False)
        return bool(stranger)

    async def _wait(self, places: asyncio.Semaphore) -> None:
        """One of ``places``, waited for at most ``market_stranger_wait_s`` (RateLimited)."""
        try:
            await asyncio.wait_for(places.acquire(), self.settings.market_stranger_wait_s)
        except TimeoutError:
            raise RateLimited(
                "the market is busy with requests from addresses without stake or open "
                "escrow; retry later (or stake to skip this queue)", 1.0) from None

    async def _serve(self, scope: Scope, receive: Receive, send: Send, kind: Kind) -> None:
        try:
            body = await self._admit(scope, receive, kind)
        except MeshError as exc:
            await _refuse(exc)(scope, receive, send)
            return
        if body is None:  # streamed to the route, which checks the bytes it stores
            await self.app(scope, _capped(receive, self._limit(kind), kind), send)
        else:
            await self.app(scope, _replay(body, receive), send)

    async def _admit(self, scope: Scope, receive: Receive, kind: Kind) -> bytes | None:
        """Checks what can be checked before the route runs: the signature (from the headers),
        the declared length, and for a JSON body the body itself, which is returned."""
        request = Request(scope)
        limit = self._limit(kind)
        signed = scope.get("state", {}).get(SIGNED)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(kind, limit, int(declared))
        if kind in (Kind.SIGNED_BLOB, Kind.SIGNED_BUNDLE):
            return None
        try:
            body = await asyncio.wait_for(_read(receive, limit, kind),
                                          self.settings.market_body_timeout_s)
        except TimeoutError:
            raise BodyTimeout(f"the body did not arrive within "
                              f"{self.settings.market_body_timeout_s:g} s") from None
        if signed is not None:
            check_body(signed, hashlib.sha256(body).hexdigest())
        return body

    def _kind_of(self, scope: Scope) -> Kind:
        for route, kind in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return kind
        return Kind.NO_BODY

    def _limit(self, kind: Kind) -> int:
        return int(getattr(self.settings, _LIMITS[kind][1]))

    async def _verify(self, request: Request, kind: Kind) -> SignedRequest:
        # headers only: a request without a valid signature is refused unread
        name = request.url.path.rsplit("/", 1)[-1] if kind is Kind.SIGNED_BLOB else None
        if self._identity is None:  # read once (the runtime is built on first use)
            self._identity = await run_in_threadpool(self.identity)
        chain_id, contract = self._identity
        return verify_signed_request(request.headers, request.method, request.url.path, None,
                                     chain_id, now=time.time(), body_sha256=name,
                                     markets=self._names(request), contract=contract)

    def _names(self, request: Request) -> list[str]:
        """This market's names: ``market_public_hosts``, else the request's Host header."""
        configured = [name.strip() for name in self.settings.market_public_hosts.split(",")
                      if name.strip()]
        return configured or [request.headers.get("host", "")]


def check_public_hosts(settings: Settings, chain_id: int) -> None:
    """ConfigError when a market off the dev chain names no ``market_public_hosts``: it would
    trust each request's Host header, which a replayer rewrites."""
    if chain_id != DEV_CHAIN_ID and not settings.market_public_hosts.strip():
        raise ConfigError(
            f"MESH_MARKET_PUBLIC_HOSTS is required on chain id {chain_id}: the host[:port] "
            "names clients reach this market by (a signed request names the market it is "
            "for, and is refused by every other)")


def signed_request(request: Request) -> SignedRequest:
    """The signature the gate checked for ``request`` (AuthError when it checked none)."""
    signed = getattr(request.state, SIGNED, None)
    if not isinstance(signed, SignedRequest):
        raise AuthError(f"{request.method} {request.url.path} was not checked for a signature")
    return signed


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client_key(str(client[0])) if client else "unknown"


def client_key(host: str) -> str:
    """Whom a per-client rate counts: an IPv4 address, or the /64 network of an IPv6 one (a
    single home or server gets a whole /64, so counting each address would let one client
    take 2^64 rates)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _has_body(headers: Any) -> bool:
    declared = headers.get("content-length", "0").strip()
    return declared != "0" or "transfer-encoding" in headers


def _refuse(exc: MeshError) -> JSONResponse:
    from meshcompute.market.api.errors import headers_of, status_of

    return JSONResponse({"detail": str(exc)}, status_code=status_of(exc),
                        headers={"Connection": "close", **headers_of(exc)})


async def _read(receive: Receive, limit: int, kind: Kind) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge("the client went away before its body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(kind, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _capped(receive: Receive, limit: int, kind: Kind) -> Receive:
    size = 0

    async def capped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                if kind is Kind.NO_BODY:
                    raise BodyTooLarge("this request takes no body")
                raise too_large(kind, limit)
        return message

    return capped
