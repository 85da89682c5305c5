"""What the routes depend on, as ``Annotated`` aliases: the runtime (:data:`Runtime`), the
address that signed the request (:data:`Signer`; a route that depends on it is gated as signed
by :mod:`.gate`), and the path parameters.

The runtime (Redis, chain, blob store) is built on first use (:class:`LazyRuntime`), so the API
starts even while the chain or Redis is still coming up and answers 503 until they are
reachable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated

import redis
from fastapi import Depends, Path, Request

from meshcompute.errors import ChainError, ConfigError, DeploymentNotFound, ServiceUnavailable
from meshcompute.market.api.gate import signed_request
from meshcompute.market.api.schemas import SHA256_PATTERN
from meshcompute.market.runtime import MarketRuntime


class LazyRuntime:
    """Builds the runtime on first use (and again after a failed attempt)."""

    def __init__(self, factory: Callable[[], MarketRuntime]) -> None:
        self._factory = factory
        self._runtime: MarketRuntime | None = None
        self._lock = threading.Lock()

    def get(self) -> MarketRuntime:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    try:
                        self._runtime = self._factory()
                    except (ChainError, ConfigError, DeploymentNotFound, redis.RedisError) as exc:
                        raise ServiceUnavailable(f"market not ready: {exc}") from exc
        return self._runtime


def _runtime(request: Request) -> MarketRuntime:
    return request.app.state.runtime.get()


Runtime = Annotated[MarketRuntime, Depends(_runtime)]


def authenticate(request: Request) -> str:
    """The address that signed ``request``: its signature was checked and its nonce claimed
    by the gate (:mod:`.gate`) before the body was read, so the request cannot be replayed."""
    return signed_request(request).address


async def signed_address(request: Request, runtime: Runtime) -> str:
    """The address that signed this request (its body checked against the signature by the
    gate before the route parsed it). Depending on the runtime makes a signed route answer
    503 while the market is not ready, before it parses anything."""
    del runtime
    return authenticate(request)


Signer = Annotated[str, Depends(signed_address)]

Sha256Path = Annotated[str, Path(pattern=SHA256_PATTERN, description="lowercase sha256 hex")]
JobIdPath = Annotated[int, Path(ge=0, le=2**63 - 1)]
