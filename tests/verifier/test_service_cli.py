"""``mesh verifier start`` as a real process: refuses an account without VERIFIER_ROLE in one
line, and audits a job drawn for audit end to end (JSON logs, health record, SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from meshcompute.core.job import JobState
from meshcompute.tether import tether
from meshcompute.wallet import import_wallet
from tests.verifier import test_service_chain as chain
from tests.verifier.test_service_chain import _unsandboxed, post_and_commit

world_module = chain.world_module
world = chain.world
market = chain.market
kit = chain.kit

PASSWORD = "verifier-test-only"


def _env(market, actor, data_dir) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    import_wallet(data_dir / "wallet.json", actor.account.key, PASSWORD, scrypt_n=1024)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return base | market.settings_env | {
        "MESH_DATA_DIR": str(data_dir),
        "MESH_WALLET_PASSWORD": PASSWORD,
        "MESH_VERIFIER_POLL_INTERVAL_S": "0.5",
        "PYTHONUNBUFFERED": "1",
    }


def _mesh(*args: str) -> list[str]:
    extra = ["--allow-unsandboxed"] if _unsandboxed() and args[:2] == ("verifier", "start") else []
    return [sys.executable, "-m", "meshcompute.mesh.cli.main", *args, *extra]


def test_start_refuses_an_account_without_the_role(world, market, tmp_path) -> None:
    result = subprocess.run(
        _mesh("verifier", "start", "--json-logs"), env=_env(market, world.outsider, tmp_path),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    assert "does not hold VERIFIER_ROLE" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_refuses_a_verifier_without_stake(world, market, tmp_path) -> None:
    verifier = world.verifiers[0]
    position = world.admin.stake_of(verifier.address)
    if position.free:
        verifier.unstake(position.free)  # unbonding: no free stake left
    assert world.admin.stake_of(verifier.address).free == 0
    result = subprocess.run(
        _mesh("verifier", "start", "--json-logs"), env=_env(market, verifier, tmp_path),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    assert "stake first with `mesh provider stake" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_audits_a_drawn_job_and_stops_on_sigterm(world, market, kit, tmp_path) -> None:
    job_id = post_and_commit(world, market, kit, kit.honest)
    verifier = world.verifier_for(job_id)  # the draw's choice: the only one that may post
    env = _env(market, verifier, tmp_path)
    process = subprocess.Popen(_mesh("verifier", "start", "--json-logs"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tether(process.pid)
    try:
        give_up = time.monotonic() + 120
        while world.job(job_id).state != JobState.AUDIT_PASSED:  # open for a dispute
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < give_up, "verifier did not post a verdict in time"
            time.sleep(0.5)
        health = subprocess.run(_mesh("verifier", "health"), env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    posted = [e for e in events if e["event"] == "verdict_posted"]
    assert [(e["job_id"], e["verdict"]) for e in posted] == [(job_id, True)]
    assert events[-1]["event"] == "stopped"
