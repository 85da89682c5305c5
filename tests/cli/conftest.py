"""CLI tests run ``mesh`` (its real entry point, ``meshcompute.mesh.cli.main.main``) in process
against the session's anvil with the marketplace deployed once per module; each test starts
from a snapshot and is reverted afterwards.

``cli_wallet`` is a fresh random account imported into a keystore in the test's data dir and
funded with ETH and MESH, so the commands sign with a key nobody else uses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.deploy import save_deployment
from meshcompute.mesh.cli.main import main
from meshcompute.settings import get_settings
from meshcompute.units import TOKEN
from meshcompute.wallet import import_wallet
from tests.contracts.world import World

PASSWORD = "correct horse battery staple"
WALLET_MESH = 50_000 * TOKEN
WALLET_ETH = 10 * 10**18
_ENV = (
    "MESH_RPC_URL",
    "MESH_CHAIN_ID",
    "MESH_DEPLOYMENTS_DIR",
    "MESH_WALLET_PATH",
    "MESH_WALLET_PASSWORD",
    "MESH_WALLET_PASSWORD_FILE",
)


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def mesh_env(world: World, anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment for ``mesh``: this anvil, a data dir with the deployment record, the
    wallet password and a cheap scrypt work factor. Returns the data dir."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "mesh"
    save_deployment(world.deployment, data_dir / "deployments")
    monkeypatch.setenv("MESH_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MESH_RPC_URL", anvil.rpc_url)
    monkeypatch.setenv("MESH_WALLET_PASSWORD", PASSWORD)
    monkeypatch.setenv("MESH_WALLET_SCRYPT_N", str(2**10))
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


@pytest.fixture
def cli_wallet(world: World, mesh_env: Path) -> LocalAccount:
    """A funded account whose keystore is the CLI's default wallet."""
    account: LocalAccount = Account.create()
    import_wallet(mesh_env / "wallet.json", account.key.hex(), PASSWORD, scrypt_n=2**10)
    world.admin.mint(account.address, WALLET_MESH)
    world.admin.sender.send({"to": account.address, "value": WALLET_ETH})
    return account


@pytest.fixture
def run_mesh(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``mesh ARGS...`` through the real entry point; returns exit code and output."""

    def run(*args: str) -> Outcome:
        get_settings.cache_clear()
        monkeypatch.setattr(sys, "argv", ["mesh", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def worker_actor(world: World, account: LocalAccount) -> MeshActor:
    """Drive the CLI wallet's account as a worker (assign, commit) the way the node would."""
    return MeshActor(world.w3, world.deployment, account)


def assert_one_line_error(result: Outcome, *fragments: str) -> str:
    """Exit code 1, exactly one non-empty stderr line starting with ``error:``, no traceback."""
    assert result.code == 1, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out
    assert len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
