"""meshcompute.wallet: V3 keystores, passwords from env/file/prompt, no key ever leaks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from meshcompute import wallet
from meshcompute.errors import WalletError
from meshcompute.settings import get_settings, load_settings

FAST = 2**10  # scrypt work factor for tests (the default 2**18 costs ~1 s per operation)
KEY = "0x" + "4c" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MESH_WALLET_PASSWORD", "MESH_WALLET_PASSWORD_FILE", "MESH_WALLET_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MESH_WALLET_SCRYPT_N", str(FAST))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_create_wallet_round_trip_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "w" / "wallet.json"
    address = wallet.create_wallet(path, "s3cret", scrypt_n=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    account = wallet.load_account(path, "s3cret")
    assert account.address == address
    assert wallet.keystore_address(path) == address
    keystore = json.loads(path.read_text())
    assert keystore["version"] == 3 and keystore["crypto"]["kdf"] == "scrypt"
    assert keystore["crypto"]["kdfparams"]["n"] == FAST
    assert account.key.hex().removeprefix("0x") not in path.read_text()


def test_create_wallet_uses_the_work_factor_setting(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    wallet.create_wallet(path, "pw")
    assert json.loads(path.read_text())["crypto"]["kdfparams"]["n"] == FAST


def test_create_wallet_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    first = wallet.create_wallet(path, "pw", scrypt_n=FAST)
    with pytest.raises(WalletError, match="already exists"):
        wallet.create_wallet(path, "other", scrypt_n=FAST)
    assert wallet.load_account(path, "pw").address == first


def test_import_wallet_keeps_the_address_and_never_stores_the_key(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    address = wallet.import_wallet(path, KEY.removeprefix("0x"), "pw", scrypt_n=FAST)
    assert address == Account.from_key(KEY).address
    assert "4c" * 32 not in path.read_text()
    assert wallet.load_account(path, "pw").key.hex().removeprefix("0x") == "4c" * 32


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "0x" + "00" * 32, ""])
def test_import_wallet_rejects_bad_keys_without_echoing_them(tmp_path: Path, bad: str) -> None:
    with pytest.raises(WalletError) as caught:
        wallet.import_wallet(tmp_path / "wallet.json", bad, "pw", scrypt_n=FAST)
    if bad.strip("0x"):
        assert bad.removeprefix("0x") not in str(caught.value)
    assert not (tmp_path / "wallet.json").exists()


def test_wrong_password_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    wallet.create_wallet(path, "right", scrypt_n=FAST)
    with pytest.raises(WalletError, match=f"wrong password for {path}"):
        wallet.load_account(path, "wrong")


def test_missing_and_malformed_keystores(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="mesh wallet new"):
        wallet.load_account(tmp_path / "absent.json", "pw")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(WalletError, match="not a readable keystore"):
        wallet.load_account(junk, "pw")
    junk.write_text('{"address": "00"}')
    with pytest.raises(WalletError, match="not a V3 keystore"):
        wallet.keystore_address(junk)


def test_keystore_declaring_another_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    wallet.create_wallet(path, "pw", scrypt_n=FAST)
    data = json.loads(path.read_text())
    data["address"] = "11" * 20
    path.write_text(json.dumps(data))
    with pytest.raises(WalletError, match="another address"):
        wallet.load_account(path, "pw")


def test_empty_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="empty password"):
        wallet.create_wallet(tmp_path / "wallet.json", "", scrypt_n=FAST)


def test_resolve_password_prefers_env_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("MESH_WALLET_PASSWORD_FILE", str(secret))
    assert wallet.resolve_password(prompt=False) == "from-file"
    monkeypatch.setenv("MESH_WALLET_PASSWORD", "from-env")
    assert wallet.resolve_password(prompt=False) == "from-env"


def test_resolve_password_file_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_WALLET_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(WalletError, match="cannot read the password file"):
        wallet.resolve_password(prompt=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("MESH_WALLET_PASSWORD_FILE", str(empty))
    with pytest.raises(WalletError, match="empty"):
        wallet.resolve_password(prompt=False)


def test_resolve_password_without_source_says_which_variables_to_set() -> None:
    with pytest.raises(WalletError) as caught:
        wallet.resolve_password(prompt=False)
    assert "MESH_WALLET_PASSWORD" in str(caught.value)
    assert "MESH_WALLET_PASSWORD_FILE" in str(caught.value)


def test_resolve_password_prompts_and_confirms(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(wallet.getpass, "getpass", lambda _prompt: next(answers))
    assert wallet.resolve_password(prompt=True, confirm=True) == "typed"

    answers = iter(["one", "two"])
    with pytest.raises(WalletError, match="differ"):
        wallet.resolve_password(prompt=True, confirm=True)

    def no_terminal(_prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(wallet.getpass, "getpass", no_terminal)
    with pytest.raises(WalletError, match="no password typed"):
        wallet.resolve_password(prompt=True)


def test_unlock_reads_the_wallet_path_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node" / "key.json"
    address = wallet.import_wallet(path, KEY, "pw", scrypt_n=FAST)
    monkeypatch.setenv("MESH_WALLET_PATH", str(path))
    monkeypatch.setenv("MESH_WALLET_PASSWORD", "pw")
    assert wallet.unlock(load_settings(), prompt=False).address == address
    monkeypatch.setenv("MESH_WALLET_PASSWORD", "nope")
    with pytest.raises(WalletError, match="wrong password"):
        wallet.unlock(load_settings(), prompt=False)


def test_default_wallet_path_is_under_the_data_dir(tmp_path: Path) -> None:
    assert load_settings().wallet_path == tmp_path / "data" / "wallet.json"
    with pytest.raises(WalletError, match="no wallet at"):
        wallet.unlock(load_settings(), prompt=False)


def test_load_account_error_never_contains_the_key(tmp_path: Path) -> None:
    path = tmp_path / "wallet.json"
    wallet.import_wallet(path, KEY, "pw", scrypt_n=FAST)
    with pytest.raises(WalletError) as caught:
        wallet.load_account(path, "bad")
    assert "4c" * 8 not in str(caught.value)
