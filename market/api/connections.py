"""Connection limits below HTTP: what uvicorn does not bound on its own.

uvicorn counts every open connection toward ``limit_concurrency`` but sets no deadline on a
request head: a client that opens connections and trickles header bytes (slowloris) holds them
forever, and enough of them get every other client a 503. :class:`GuardedH11Protocol` is
uvicorn's h11 protocol with two more limits, both from the settings:

- ``market_header_timeout_s``: a connection must complete each request head (request line and
  headers) within this many seconds of the first byte of it, or of the connection opening;
  otherwise the server closes it. Idle keep-alive connections are closed by uvicorn's own
  ``timeout_keep_alive``, and a body that trickles after its head by the gate's
  ``market_body_timeout_s``.
- ``market_max_connections_per_client``: at most this many open connections per client (an
  IPv4 address, an IPv6 /64: :func:`~meshcompute.market.api.gate.client_key`); more are
  closed as they open. 0 turns it off (behind a reverse proxy every client is the proxy).

``mesh market serve`` hands the class to uvicorn (``http=``); each API process counts its own
connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from meshcompute.market.api.gate import client_key
from meshcompute.settings import get_settings

log = logging.getLogger(__name__)

_open: Counter[str] = Counter()
"""Open connections per client key, in this process (the event loop is single-threaded)."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request heads and a per-client cap."""

    header_timeout_s: float | None = None
    max_per_client: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        if self.header_timeout_s is None:
            self.header_timeout_s = settings.market_header_timeout_s
        if self.max_per_client is None:
            self.max_per_client = settings.market_max_connections_per_client
        self._key: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_for: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._key = client_key(self.client[0]) if self.client else "unknown"
        _open[self._key] += 1
        if self.max_per_client and _open[self._key] > self.max_per_client:
            log.warning("connection refused: %s holds %d connections (at most %d)",
                        self._key, _open[self._key] - 1, self.max_per_client)
            self.transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._key is not None:
            _open[self._key] -= 1
            if _open[self._key] <= 0:
                del _open[self._key]
            self._key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_timer is None and idle:
            self._arm()  # the first bytes of a new request head start its clock
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._armed_for:
            self._disarm()  # a new request's head is complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timeout takes over

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle
        self._head_timer = self.loop.call_later(float(self.header_timeout_s or 0),
                                                self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is self._armed_for and not self.transport.is_closing():
            log.info("connection closed: no complete request head from %s within %.0f s",
                     self._key, self.header_timeout_s)
            self.transport.close()
