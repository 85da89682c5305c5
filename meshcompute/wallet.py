"""The node's account, kept in an encrypted V3 keystore (eth-account's ``Account.encrypt``).

    address = create_wallet(settings.wallet_path, resolve_password(prompt=True, confirm=True))
    account = unlock()                   # settings.wallet_path, password from env/file/prompt

The keystore file is written with mode 0600 and never overwritten. The password comes from
``MESH_WALLET_PASSWORD``, else the file named by ``MESH_WALLET_PASSWORD_FILE``, else an
interactive prompt when one is allowed. A private key is never printed or logged: errors name
the keystore path and the address, nothing else.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex

from meshcompute.errors import WalletError
from meshcompute.settings import Settings, get_settings, load_settings

PASSWORD_ENV = "MESH_WALLET_PASSWORD"
PASSWORD_FILE_ENV = "MESH_WALLET_PASSWORD_FILE"
KEYSTORE_MODE = 0o600


def create_wallet(path: Path, password: str, *, scrypt_n: int | None = None) -> str:
    """Create a new random account in a keystore at ``path``; returns its address.

    Refuses to overwrite an existing file. ``scrypt_n`` defaults to the ``wallet_scrypt_n``
    setting (2**18).
    """
    account: LocalAccount = Account.create()
    _write_keystore(Path(path), account, password, scrypt_n)
    return str(account.address)


def import_wallet(
    path: Path, private_key: str | bytes, password: str, *, scrypt_n: int | None = None
) -> str:
    """Store an existing private key (hex, with or without 0x) in a keystore at ``path``."""
    account = _account_from_key(private_key)
    _write_keystore(Path(path), account, password, scrypt_n)
    return str(account.address)


def load_account(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore at ``path``; a wrong password raises WalletError naming the path."""
    path = Path(path).expanduser()
    keystore = read_keystore(path)
    try:
        key = Account.decrypt(keystore, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WalletError(
                f"wrong password for {path} (set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}, "
                "or type it at the prompt)"
            ) from None
        raise WalletError(f"keystore {path} cannot be decrypted: {exc}") from None
    account: LocalAccount = Account.from_key(key)
    declared = str(keystore.get("address") or "").lower().removeprefix("0x")
    if declared and account.address.lower().removeprefix("0x") != declared:
        raise WalletError(f"keystore {path} decrypts to another address than it declares")
    return account


def read_keystore(path: Path) -> dict[str, Any]:
    """The keystore JSON at ``path`` (no secret is decrypted)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WalletError(
            f"no wallet at {path}: create one with `mesh wallet new` or `mesh wallet import` "
            "(or set MESH_WALLET_PATH)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WalletError(f"wallet {path} is not a readable keystore: {exc}") from None
    if not isinstance(data, dict) or "crypto" not in data and "Crypto" not in data:
        raise WalletError(f"wallet {path} is not a V3 keystore (no crypto section)")
    return data


def keystore_address(path: Path) -> str:
    """The address a keystore declares, checksummed, without decrypting it."""
    from web3 import Web3

    path = Path(path).expanduser()
    address = read_keystore(path).get("address")
    if not address:
        raise WalletError(f"keystore {path} declares no address; unlock it to learn it")
    return str(Web3.to_checksum_address("0x" + str(address).lower().removeprefix("0x")))


def resolve_password(
    *, prompt: bool, confirm: bool = False, settings: Settings | None = None
) -> str:
    """The wallet password: ``MESH_WALLET_PASSWORD``, else ``MESH_WALLET_PASSWORD_FILE``, else
    a prompt (``getpass``; typed twice when ``confirm``) when ``prompt`` is allowed.

    Settings are re-read from the environment unless given, so a changed variable counts.
    """
    settings = settings or load_settings()
    if settings.wallet_password is not None:
        password = settings.wallet_password.get_secret_value()
        return _non_empty(password, PASSWORD_ENV)
    if settings.wallet_password_file is not None:
        file = Path(settings.wallet_password_file).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise WalletError(
                f"cannot read the password file {file} named by {PASSWORD_FILE_ENV}: "
                f"{exc.strerror or exc}"
            ) from None
        return _non_empty(text.rstrip("\r\n"), f"{PASSWORD_FILE_ENV} ({file})")
    if not prompt:
        raise WalletError(
            f"no wallet password: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV} (a file holding it)"
        )
    try:
        password = getpass.getpass("wallet password: ")
        if confirm and getpass.getpass("repeat password: ") != password:
            raise WalletError("the two passwords differ; nothing was written")
    except (EOFError, KeyboardInterrupt):
        raise WalletError(
            f"no password typed: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV} for unattended use"
        ) from None
    return _non_empty(password, "the prompt")


def unlock(settings: Settings | None = None, *, prompt: bool = True) -> LocalAccount:
    """The account in ``settings.wallet_path``, with the password from env, file or prompt."""
    settings = settings or get_settings()
    path = settings.wallet_path
    read_keystore(path)  # a missing wallet is reported before asking for a password
    return load_account(path, resolve_password(prompt=prompt, settings=_fresh(settings)))


def _fresh(settings: Settings) -> Settings:
    """Password fields re-read from the environment when the given settings carry none."""
    if settings.wallet_password is not None or settings.wallet_password_file is not None:
        return settings
    return load_settings()


def _non_empty(password: str, source: str) -> str:
    if not password:
        raise WalletError(f"the wallet password from {source} is empty")
    return password


def _account_from_key(private_key: str | bytes) -> LocalAccount:
    if isinstance(private_key, str):
        text = private_key.strip()
        if not text.startswith("0x"):
            text = "0x" + text
        if len(text) != 66 or not is_hex(text):
            raise WalletError("the private key must be 32 bytes as 64 hex digits")
        private_key = text
    try:
        account: LocalAccount = Account.from_key(private_key)
    except (ValueError, TypeError):
        raise WalletError("the private key is not a valid secp256k1 key") from None
    return account


def _write_keystore(path: Path, account: LocalAccount, password: str, scrypt_n: int | None) -> None:
    path = path.expanduser()
    if not password:
        raise WalletError("refusing to encrypt a wallet with an empty password")
    n = scrypt_n if scrypt_n is not None else get_settings().wallet_scrypt_n
    if n < 2 or n & (n - 1):
        raise WalletError(f"scrypt work factor must be a power of two, got {n}")
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=n)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEYSTORE_MODE)
    except FileExistsError:
        raise WalletError(
            f"a wallet already exists at {path}; refusing to overwrite it "
            "(move it away or choose another --path)"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(keystore, out)
        out.write("\n")
    os.chmod(path, KEYSTORE_MODE)
