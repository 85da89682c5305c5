"""`mesh wallet new|import|show|faucet` against anvil."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from meshcompute.units import TOKEN
from tests.cli.conftest import WALLET_ETH, WALLET_MESH, assert_one_line_error

pytestmark = pytest.mark.anvil


def test_new_then_show_round_trip(world, mesh_env: Path, run_mesh) -> None:
    created = run_mesh("wallet", "new", "--json")
    assert created.code == 0, created.err
    address = json.loads(created.out)["address"]
    keystore = mesh_env / "wallet.json"
    assert json.loads(created.out)["path"] == str(keystore)
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600

    shown = json.loads(run_mesh("wallet", "show", "--json").out)
    assert shown["address"] == address
    assert shown["mesh"]["wei"] == "0" and shown["eth"]["wei"] == "0"

    world.admin.mint(address, 12 * TOKEN + TOKEN // 2)
    shown = json.loads(run_mesh("wallet", "show", "--json").out)
    assert shown["mesh"] == {"wei": str(12 * TOKEN + TOKEN // 2), "mesh": "12.5"}
    text = run_mesh("wallet", "show")
    assert text.code == 0 and address in text.out and "12.5 MESH" in text.out

    again = run_mesh("wallet", "new")
    assert_one_line_error(again, "already exists", str(keystore))


def test_import_from_key_file_and_env_never_prints_the_key(
    mesh_env: Path, run_mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = Account.create()
    key_hex = account.key.hex().removeprefix("0x")
    key_file = tmp_path / "key.txt"
    key_file.write_text(key_hex + "\n")
    result = run_mesh("wallet", "import", "--key-file", str(key_file))
    assert result.code == 0, result.err
    assert account.address in result.out
    assert key_hex not in result.out + result.err
    assert key_hex not in (mesh_env / "wallet.json").read_text()

    other = Account.create()
    monkeypatch.setenv("NODE_KEY", other.key.hex())
    second = tmp_path / "second.json"
    result = run_mesh("wallet", "import", "--key-env", "NODE_KEY", "--path", str(second), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["address"] == other.address
    assert other.key.hex().removeprefix("0x") not in result.out + result.err


def test_import_without_a_key_source_is_one_line(mesh_env: Path, run_mesh) -> None:
    assert_one_line_error(run_mesh("wallet", "import"), "--key-file", "--key-env")


def test_show_reports_stake_and_withdrawable(world, cli_wallet, run_mesh) -> None:
    shown = json.loads(run_mesh("wallet", "show", "--json").out)
    assert shown["address"] == cli_wallet.address
    assert int(shown["eth"]["wei"]) == WALLET_ETH
    assert int(shown["mesh"]["wei"]) == WALLET_MESH
    assert shown["stake"]["free"]["wei"] == "0"
    assert shown["withdrawable"]["wei"] == "0"


def test_faucet_pays_once_then_names_the_cooldown(world, cli_wallet, run_mesh) -> None:
    credit = world.admin.credit
    drip = int(credit.functions.faucetAmount().call())
    first = run_mesh("wallet", "faucet", "--json")
    assert first.code == 0, first.err
    assert int(json.loads(first.out)["received"]["wei"]) == drip
    assert world.admin.balance_of(cli_wallet.address) == WALLET_MESH + drip
    line = assert_one_line_error(run_mesh("wallet", "faucet"), "try again after")
    assert cli_wallet.address in line


def test_wrong_password_is_one_line(cli_wallet, run_mesh, monkeypatch) -> None:
    monkeypatch.setenv("MESH_WALLET_PASSWORD", "not the password")
    assert_one_line_error(run_mesh("wallet", "faucet"), "wrong password for")


def test_no_password_source_is_one_line(cli_wallet, run_mesh, monkeypatch) -> None:
    monkeypatch.delenv("MESH_WALLET_PASSWORD")
    assert_one_line_error(
        run_mesh("wallet", "faucet"), "MESH_WALLET_PASSWORD", "MESH_WALLET_PASSWORD_FILE"
    )


def test_password_file_unlocks(cli_wallet, run_mesh, monkeypatch, tmp_path: Path) -> None:
    from tests.cli.conftest import PASSWORD

    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.delenv("MESH_WALLET_PASSWORD")
    monkeypatch.setenv("MESH_WALLET_PASSWORD_FILE", str(secret))
    assert run_mesh("wallet", "faucet").code == 0
