"""Connection limits below HTTP (market/api/connections.py) on a real uvicorn server: a client
that trickles a request head (slowloris), or opens a connection and sends nothing, is cut off
at the head deadline, so its connections cannot hold the server's concurrency limit forever;
one client cannot open more than its share of connections; honest requests are served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from meshcompute.market.api.connections import GuardedH11Protocol

HEAD_TIMEOUT_S = 0.6
PER_CLIENT = 4


class _Guarded(GuardedH11Protocol):
    header_timeout_s = HEAD_TIMEOUT_S
    max_per_client = PER_CLIENT


async def _app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", http=_Guarded, limit_concurrency=PER_CLIENT + 1,
                            timeout_keep_alive=30)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def _connect(address: str) -> socket.socket:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_trickled_request_head_is_cut_off_at_its_deadline(server: str) -> None:
    sock = _connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
    assert not _closed_by_server(sock, HEAD_TIMEOUT_S / 3)  # still within its deadline
    sock.sendall(b"X-Slow: 1\r\n")  # more bytes do not buy more time
    assert _closed_by_server(sock, 3 * HEAD_TIMEOUT_S)
    sock.close()


def test_a_silent_connection_is_closed_and_an_honest_keep_alive_is_not(server: str) -> None:
    silent = _connect(server)
    with httpx.Client(base_url=f"http://{server}") as client:
        assert client.get("/").text == "ok"
        time.sleep(2 * HEAD_TIMEOUT_S)  # idle between requests: keep-alive, not a head
        assert client.get("/").text == "ok"
    assert _closed_by_server(silent, 3 * HEAD_TIMEOUT_S)
    silent.close()


def test_a_head_trickled_after_a_served_request_is_cut_off_too(server: str) -> None:
    sock = _connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    assert b"200 OK" in sock.recv(4096)
    sock.sendall(b"GET / HTTP/1.1\r\n")  # the second request's head stalls
    assert _closed_by_server(sock, 3 * HEAD_TIMEOUT_S)
    sock.close()


def test_one_client_holds_at_most_its_share_and_the_server_recovers(server: str) -> None:
    held = [_connect(server) for _ in range(PER_CLIENT)]
    for sock in held:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # slowloris on every one
    extra = _connect(server)
    assert _closed_by_server(extra, HEAD_TIMEOUT_S / 2)  # over the cap: closed as it opens
    extra.close()
    for sock in held:
        assert _closed_by_server(sock, 3 * HEAD_TIMEOUT_S)
        sock.close()
    # the stuck connections are gone: an honest request is served, not refused with a 503
    assert httpx.get(f"http://{server}/").status_code == 200
