"""``mesh verifier start`` as a real process: refuses an account without a verifier seat in one
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


def test_start_refuses_an_account_without_a_seat(world, market, tmp_path) -> None:
    result = subprocess.run(
        _mesh("verifier", "start", "--json-logs"), env=_env(market, world.outsider, tmp_path),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    assert "holds no seat in the verifier registry" in result.stderr
    assert "mesh verifier join" in result.stderr
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


def test_canary_service_disputes_a_lazy_pass_and_stops_when_its_canaries_have_ended(
        world, market, tmp_path) -> None:
    """``mesh canary start`` as a real process: it plants one canary (a fresh model, junk
    committed by its own worker under a ticket of the assigner key), the verifier the draw
    picks passes it without recomputing, the service disputes the pass within the window, the
    other verifier overturns it: the lazy verifier loses its bond, and the service, its one
    canary ended, exits 0. No key material reaches its log."""
    from meshcompute.core.job import PASS_BOND_REWARDS
    from meshcompute.units import TOKEN
    from meshcompute.verifier.canary import canary_journal_path, load_planted

    client, worker = world.clients[1], world.workers[2]
    worker_key = worker.account.key.to_0x_hex()
    env = _env(market, client, tmp_path) | {
        "MESH_CANARY_WORKER_KEY": worker_key,
        "MESH_ASSIGNER_KEY": world.assigner.key.to_0x_hex(),
    }
    argv = _mesh("canary", "start", "--json-logs", "--every", "1", "--total", "1",
                 "--families", "mlp", "--reward", "10", "--audit-fee", "1", "--collateral", "50")
    if _unsandboxed():
        argv.append("--allow-unsandboxed")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    tether(process.pid)
    journal = canary_journal_path(tmp_path, world.deployment.chain_id,
                                  world.deployment.address("JobMarket"), client.address)
    try:
        give_up = time.monotonic() + 180
        while not (journal.exists() and load_planted(journal)):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < give_up, "no canary planted in time"
            time.sleep(0.2)
        (job_id,) = load_planted(journal)
        assert world.job(job_id).state == JobState.COMMITTED
        assert world.job(job_id).worker == worker.address
        world.chain.mine(2)  # the draw's seed block
        lazy = world.verifier_for(job_id)
        lazy.resolve_audit(job_id, True, b"\xee" * 32)  # a pass without recomputing
        while world.job(job_id).state == JobState.AUDIT_PASSED:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < give_up, "the canary service did not dispute the pass"
            time.sleep(0.2)
        world.verifier_for(job_id).resolve_appeal(job_id, False, b"\xdd" * 32)
        assert world.job(job_id).state == JobState.SLASHED
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert world.admin.stake_of(lazy.address).slashed == 10 * TOKEN * PASS_BOND_REWARDS
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    statuses = [e.get("status") for e in events if e.get("event") == "canary"]
    assert statuses == ["planted", "disputed", "slashed"], output
    assert load_planted(journal) == {job_id: "slashed"}
    assert worker_key[2:].lower() not in output.lower()
    assert "Traceback" not in output
