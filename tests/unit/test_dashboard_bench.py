"""The dashboard bench's settlement part (mesh/bench/dashboard.py): the emulated viewers, one
child process for the whole run, opened and closed on command, each block's traffic counted (a
small local HTTP server plays the market's two routes they use; the bench itself runs them
against the real market); and how its windows are ordered and compared."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcompute.mesh.bench.dashboard import Viewers, bracketed_changes, windows_order


class _Market(BaseHTTPRequestHandler):
    streams_open = 0
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/dashboard/api/overview":
            body = json.dumps({"jobs": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path != "/dashboard/api/stream?overview=true":  # an overview page's stream
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with _Market.lock:
            _Market.streams_open += 1
        try:
            for n in range(200):
                # every other tick says the index moved; every other such tick comes after
                # the overview itself, the rest without it (the market could not compute it)
                pushed = n % 4 == 1
                tick = {"indexed": n // 2, "changed": n % 2 == 1, "overview": pushed}
                if pushed:
                    self.wfile.write(b'event: overview\ndata: {"jobs":{}}\n\n')
                self.wfile.write(f"event: tick\ndata: {json.dumps(tick)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with _Market.lock:
                _Market.streams_open -= 1


@pytest.fixture
def market_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Market)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_the_viewers_open_and_close_on_command_and_count_each_block(market_url):
    with Viewers(market_url, 3) as viewers:
        assert viewers.close() == {"ticks": 0, "pushed": 0, "fetches": 0, "errors": 0,
                                   "still_open": 0}
        viewers.open()
        assert _wait_for(lambda: _Market.streams_open == 3)
        time.sleep(0.5)
        block = viewers.close()
        assert block["still_open"] == 0 and block["errors"] == 0
        assert block["ticks"] >= 3 * 4
        # one fetch each on opening, then one per tick that says the index moved without
        # the overview having come before it; none for the ones that came with it
        quarter = block["ticks"] // 4
        assert quarter - 3 <= block["pushed"] <= quarter + 3, block
        assert 3 + quarter - 3 <= block["fetches"] <= 3 + quarter + 3, block
        assert _wait_for(lambda: _Market.streams_open == 0)
        assert viewers.close()["ticks"] == 0  # closed: nothing counted since
        viewers.open()
        assert _wait_for(lambda: _Market.streams_open == 3)
        assert viewers.close()["ticks"] > 0
        process = viewers.process
    assert process.poll() is not None  # leaving the block ends the child


def test_a_viewers_process_that_died_is_an_error_not_a_silent_zero(market_url):
    with Viewers(market_url, 1) as viewers:
        viewers.process.kill()
        viewers.process.wait()
        with pytest.raises((RuntimeError, BrokenPipeError)):
            viewers.close()


def test_windows_alternate_and_each_window_with_dashboards_lies_between_two_without():
    assert windows_order(1) == [False, True, False]
    order = windows_order(4)
    assert order == [False, True] * 4 + [False]


def test_a_straight_drift_cancels_out_of_each_bracketed_change():
    # a stack slowing 5 jobs/s a window, the dashboards costing exactly 10 %
    drift = [100 - 5 * n for n in range(9)]
    rates = [r * (0.9 if n % 2 else 1.0) for n, r in enumerate(drift)]
    assert bracketed_changes(rates) == pytest.approx([-10.0] * 4)
    # and with no effect, none is seen, where pairs (A B) would show the drift as one
    assert bracketed_changes(drift) == pytest.approx([0.0] * 4)


def test_bracketing_needs_an_odd_number_of_windows():
    with pytest.raises(ValueError, match="odd number"):
        bracketed_changes([1.0, 2.0])
