"""`mesh worker start` as a real process: wallet, chain, stake check, JSON logs, SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcompute.chain.contracts import MeshActor
from meshcompute.core.job import JobState
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.tether import tether
from meshcompute.wallet import import_wallet
from tests.worker.market_stack import MarketStack, market_stack, mlp_job

pytestmark = pytest.mark.anvil

PASSWORD = "worker-cli-test"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(anvil, redis_url, tmp_path_factory) -> Iterator[MarketStack]:
    with market_stack(anvil, redis_url, tmp_path_factory.mktemp("market")) as s:
        yield s


def _env(stack: MarketStack, actor: MeshActor, data_dir: Path) -> dict[str, str]:
    import_wallet(data_dir / "wallet.json", actor.account.key, PASSWORD, scrypt_n=1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update({
        "MESH_DATA_DIR": str(data_dir),
        "MESH_RPC_URL": stack.settings.rpc_url or "",
        "MESH_DEPLOYMENTS_DIR": str(stack.settings.deployments_dir),
        "MESH_MARKET_URL": stack.url,
        "MESH_WALLET_PASSWORD": PASSWORD,
        "MESH_WORKER_POLL_INTERVAL_S": "0.2",
        "MESH_WORKER_GRACE_S": "5",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _mesh(*args: str) -> list[str]:
    return [sys.executable, "-c", "from meshcompute.mesh.cli.main import main; main()", *args]


def _start(*args: str) -> list[str]:
    extra = [] if sandbox_available() else ["--allow-unsandboxed"]
    return _mesh("worker", "start", *args, *extra)


def _lines(stream, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line)
    sink.put(None)


def _next_event(lines: queue.Queue, name: str, seen: list[dict], timeout: float = 90) -> dict:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"worker exited before {name!r}; events: {seen}")
        event = json.loads(line)  # every stdout line is one JSON object
        seen.append(event)
        if event["event"] == name:
            return event
    raise AssertionError(f"no {name!r} event within {timeout} s; events: {seen}")


def test_worker_start_runs_jobs_logs_json_and_stops_on_sigterm(stack: MarketStack, tmp_path):
    actor = stack.world.workers[0]
    env = _env(stack, actor, tmp_path)
    process = subprocess.Popen(_start("--json-logs", "--threads", "1"),
                               env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    tether(process.pid)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[dict] = []
    try:
        started = _next_event(lines, "started", seen)
        assert started["address"] == actor.address
        _next_event(lines, "registered", seen)
        program, inputs, _ = mlp_job(batch=4, seed=11)
        job_id = stack.post_job(program, inputs)
        committed = _next_event(lines, "committed", seen)
        assert committed["job_ids"] == [job_id]
        health = subprocess.run(_mesh("worker", "health"), env=env, cwd=REPO, check=False,
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        process.send_signal(signal.SIGTERM)
        _next_event(lines, "stopped", seen, timeout=30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert stack.world.job(job_id).state == JobState.COMMITTED
    everything = json.dumps(seen)
    assert actor.account.key.hex()[-64:] not in everything.lower()  # never the private key
    assert PASSWORD not in everything
    after = subprocess.run(_mesh("worker", "health"), env=env, cwd=REPO, check=False,
                           capture_output=True, text=True, timeout=60)
    assert after.returncode == 1 and "stopped" in after.stdout


def test_worker_start_without_stake_says_stake_first(stack: MarketStack, tmp_path):
    env = _env(stack, stack.world.outsider, tmp_path)
    result = subprocess.run(_start("--json-logs"), env=env, cwd=REPO, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stake first with `mesh provider stake AMOUNT`" in lines[0]


def test_worker_start_refuses_without_sandbox_unless_allowed(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import meshcompute.execution.sandbox
    from meshcompute.errors import SandboxUnavailable
    from meshcompute.mesh.cli.main import app
    from meshcompute.settings import get_settings

    monkeypatch.setattr(meshcompute.execution.sandbox, "sandbox_available", lambda: False)
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_WALLET_PASSWORD", PASSWORD)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker", "start", "--json-logs"])
        assert isinstance(result.exception, SandboxUnavailable)
        message = str(result.exception)
        assert "\n" not in message and "bubblewrap" in message
        assert "--allow-unsandboxed" in message
        # with the flag it gets past the sandbox check (and stops at the missing wallet)
        result = CliRunner().invoke(app, ["worker", "start", "--allow-unsandboxed"])
        assert not isinstance(result.exception, SandboxUnavailable)
        assert result.exception is not None and "wallet" in str(result.exception).lower()
    finally:
        get_settings.cache_clear()
