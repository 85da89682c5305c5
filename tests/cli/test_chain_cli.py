"""The one-line errors through the installed entry point (a real process), `mesh chain up`'s
local chain record and dev-wallet funding, and the faucet on a chain where it is disabled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcompute.chain.connect import chain_record_path, connect
from meshcompute.chain.contracts import mesh_sender
from meshcompute.chain.deploy import deploy_contracts, save_deployment
from meshcompute.chain.local import LocalChain
from meshcompute.errors import ChainUnavailable, ConfigError, DeploymentNotFound
from meshcompute.settings import REPO_ROOT, load_settings
from meshcompute.tether import tether
from meshcompute.units import TOKEN
from meshcompute.wallet import create_wallet, import_wallet
from tests.cli.conftest import PASSWORD, Outcome, assert_one_line_error

pytestmark = pytest.mark.anvil


def _clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(MESH_DATA_DIR=str(data_dir), MESH_WALLET_SCRYPT_N=str(2**10), COLUMNS="200", **extra)
    return env


def _mesh_command() -> list[str]:
    """The installed ``mesh`` script next to this interpreter, else the same entry point."""
    script = Path(sys.executable).parent / "mesh"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from meshcompute.mesh.cli import main; main()"]


def _mesh_process(env: dict[str, str], *args: str) -> Outcome:
    done = subprocess.run(
        [*_mesh_command(), *args],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def test_errors_are_one_line_in_a_real_process(tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    create_wallet(data / "wallet.json", PASSWORD, scrypt_n=2**10)
    no_chain = _mesh_process(_clean_env(data), "wallet", "show")
    assert_one_line_error(no_chain, "no chain configured", "mesh chain up", "MESH_RPC_URL")
    debug = _mesh_process(_clean_env(data), "--debug", "wallet", "show")
    assert debug.code != 0 and "Traceback" in debug.err


def test_chain_errors_are_one_line(anvil, tmp_path: Path, monkeypatch, run_mesh) -> None:
    data = tmp_path / "mesh"
    create_wallet(data / "wallet.json", PASSWORD, scrypt_n=2**10)
    for name in ("MESH_CHAIN_ID", "MESH_DEPLOYMENTS_DIR", "MESH_WALLET_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESH_DATA_DIR", str(data))
    monkeypatch.setenv("MESH_RPC_URL", "http://127.0.0.1:9")
    assert_one_line_error(run_mesh("earnings"), "no chain reachable at http://127.0.0.1:9")

    monkeypatch.setenv("MESH_RPC_URL", anvil.rpc_url)
    assert_one_line_error(
        run_mesh("provider", "status"),
        "no deployment for chain id 31337",
        f"mesh chain deploy --rpc-url {anvil.rpc_url}",
    )
    monkeypatch.setenv("MESH_CHAIN_ID", "5")
    assert_one_line_error(run_mesh("wallet", "show"), "chain id 31337 but MESH_CHAIN_ID is 5")


def test_wrong_password_in_a_real_process(anvil, tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    chain_snapshot = anvil.snapshot()
    admin = mesh_sender(anvil.w3(), anvil.accounts[0])
    try:
        deployment = deploy_contracts(admin)
        save_deployment(deployment, data / "deployments")
        address = create_wallet(data / "wallet.json", PASSWORD, scrypt_n=2**10)
        admin.send({"to": address, "value": 10**18})
        env = _clean_env(data, MESH_RPC_URL=anvil.rpc_url, MESH_WALLET_PASSWORD="wrong")
        result = _mesh_process(env, "wallet", "faucet")
    finally:
        anvil.revert(chain_snapshot)
        admin.resync()
    assert_one_line_error(result, f"wrong password for {data / 'wallet.json'}")


def test_connect_errors_name_the_next_step(anvil, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, deployments_dir=tmp_path / "deployments")
    with pytest.raises(ConfigError, match="mesh chain up"):
        connect(settings)
    with pytest.raises(ChainUnavailable, match="no chain reachable"):
        connect(settings, rpc_url="http://127.0.0.1:9")
    with pytest.raises(DeploymentNotFound, match="mesh chain deploy --rpc-url"):
        connect(settings, rpc_url=anvil.rpc_url)


def test_faucet_disabled_on_a_non_dev_chain(tmp_path: Path, monkeypatch, run_mesh) -> None:
    data = tmp_path / "mesh"
    with LocalChain(chain_id=4242) as chain:
        deployment = deploy_contracts(mesh_sender(chain.w3(), chain.accounts[0]))
        save_deployment(deployment, data / "deployments")
        # an own key: a development key is refused outright off the dev chain
        import_wallet(data / "wallet.json", "0x" + "42" * 32, PASSWORD, scrypt_n=2**10)
        for name in ("MESH_CHAIN_ID", "MESH_DEPLOYMENTS_DIR", "MESH_WALLET_PATH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MESH_DATA_DIR", str(data))
        monkeypatch.setenv("MESH_RPC_URL", chain.rpc_url)
        monkeypatch.setenv("MESH_WALLET_PASSWORD", PASSWORD)
        result = run_mesh("wallet", "faucet")
    assert_one_line_error(result, "faucet is disabled on chain id 4242")


def test_chain_up_records_the_chain_and_funds_the_wallet(tmp_path: Path, anvil_binary) -> None:
    data = tmp_path / "mesh"
    address = create_wallet(data / "wallet.json", PASSWORD, scrypt_n=2**10)
    env = _clean_env(data, MESH_ANVIL_PATH=anvil_binary)
    process = subprocess.Popen(
        [*_mesh_command(), "chain", "up"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )
    tether(process.pid, group=True)
    record = chain_record_path(data)
    try:
        deadline = time.monotonic() + 60
        while not record.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.exists(), process.stderr.read() if process.poll() is not None else "timeout"
        saved = json.loads(record.read_text())
        assert saved["chain_id"] == 31337 and saved["pid"] == process.pid

        shown = _mesh_process(env, "wallet", "show", "--json")  # no MESH_RPC_URL: the record
        assert shown.code == 0, shown.err
        info = json.loads(shown.out)
        assert info["address"] == address
        assert int(info["mesh"]["wei"]) == 100_000 * TOKEN
        assert int(info["eth"]["wei"]) == 100 * 10**18
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not record.exists()
    assert address in err
    for dev in (
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",  # verifier
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",  # second verifier
    ):
        assert dev in err
    # how to run each role by hand, both verifiers included
    for command in ("mesh market serve", "mesh worker start"):
        assert command in err, command
    assert err.count("&& mesh verifier start\n") == 2
    assert "private" not in err.lower()
    assert "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80" not in err + _out
    assert_one_line_error(_mesh_process(env, "wallet", "show"), "no chain configured")
