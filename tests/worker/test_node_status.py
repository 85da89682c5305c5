"""worker.status: the live table's state, JSON logs without secrets, the health record."""

from __future__ import annotations

import io
import json
import time

from rich.console import Console

from meshcompute.health import write_health
from meshcompute.worker.status import JsonLogSink, LiveStatus, StatusBoard, check_health


def _render(board: StatusBoard) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(board.render())
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_board_follows_job_phases_and_totals():
    board = StatusBoard()
    board.apply({"event": "started", "address": "0xabc", "market": "http://m"})
    board.apply({"event": "registered"})
    board.apply({"event": "phase", "job_id": 7, "phase": "leased", "device": "cpu"})
    board.apply({"event": "phase", "job_id": 7, "phase": "running"})
    board.apply({"event": "phase", "job_id": 8, "phase": "downloading", "device": "cuda"})
    board.apply({"event": "earnings", "earned_wei": str(25 * 10**17), "withdrawable_wei": "0"})
    text = _render(board)
    assert "0xabc" in text and "running" in text and "downloading" in text
    assert "2.5000 MESH" in text
    board.apply({"event": "job_done", "job_id": 7})
    board.apply({"event": "job_failed", "job_id": 8, "reason": "program ran too long"})
    assert board.jobs == {} and (board.done, board.failed) == (1, 1)
    text = _render(board)
    assert "waiting for work" in text and "job 8 failed: program ran too long" in text


def test_json_logs_one_object_per_line_without_secret_fields():
    out = io.StringIO()
    sink = JsonLogSink(out)
    sink({"ts": 1.5, "event": "phase", "job_id": 1, "phase": "running"})
    sink({"event": "oops", "private_key": "0x" + "11" * 32, "password": "hunter2"})
    sink({"event": "warning", "message": "heartbeat failed", "level": "forged"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"ts": 1.5, "level": "info", "service": "worker", "event": "phase",
                        "job_id": 1, "phase": "running"}
    assert [line["event"] for line in lines] == ["phase", "oops", "warning"]
    assert lines[2]["level"] == "warning" and lines[2]["message"] == "heartbeat failed"
    assert "11" * 32 not in out.getvalue() and "hunter2" not in out.getvalue()


def test_live_status_is_a_sink():
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    with LiveStatus(console) as live:
        live({"event": "phase", "job_id": 3, "phase": "uploading", "device": "cpu"})
        assert live.board.jobs[3].phase == "uploading"


def test_health_record(tmp_path):
    path = tmp_path / "worker-health.json"
    ok, message = check_health(path)
    assert not ok and "no health record" in message
    write_health(path, {"last_heartbeat": time.time(), "lease_s": 30, "state": "running",
                        "running": 2})
    ok, message = check_health(path)
    assert ok and "2 job(s) running" in message
    ok, message = check_health(path, now=time.time() + 200)
    assert not ok and "last heartbeat" in message
    write_health(path, {"last_heartbeat": time.time(), "state": "stopped"})
    assert check_health(path) == (False, "the worker has stopped")
