"""Helpers shared by the chain-side commands (wallet, provider, earnings, withdraw).

Amounts on the command line are MESH with up to 18 decimals ("12.5"); they are handled as
integer wei everywhere else. Every check that can fail before a transaction is sent does, so
the user gets one line that says what to do instead of a decoded revert.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

from meshcompute.errors import BadInput, WalletError
from meshcompute.settings import Settings, get_settings
from meshcompute.units import DEV_CHAIN_ID, format_mesh

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from meshcompute.chain.connect import ChainConnection

out = Console(soft_wrap=True)
"""Results (stdout)."""
err = Console(stderr=True, soft_wrap=True)
"""Progress and notes (stderr)."""

FAUCET_HINT = "get test credits with `mesh wallet faucet`"


def mesh(wei: int) -> str:
    """``12.5 MESH``."""
    return f"{format_mesh(wei)} MESH"


def eth(wei: int) -> str:
    return f"{format_mesh(wei)} ETH"


def money(wei: int) -> dict[str, str]:
    """An amount for JSON output: exact wei as a string and the MESH decimal."""
    return {"wei": str(wei), "mesh": format_mesh(wei)}


def when(timestamp: int) -> str:
    """A chain timestamp as UTC ISO time."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_since(text: str) -> int:
    """``2025-06-01``, ``2025-06-01T12:00`` (UTC unless an offset is given) -> unix seconds."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            f"--since must be a date such as 2025-06-01 or 2025-06-01T12:00, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def settings() -> Settings:
    return get_settings()


def my_address(cfg: Settings, address: str | None = None, *, can_pass: str = "") -> str:
    """``address`` (checked) or the wallet's address, read from the keystore without a
    password. ``can_pass`` names the option that could have given the address instead."""
    from web3 import Web3

    from meshcompute.wallet import keystore_address

    if address:
        if not Web3.is_address(address):
            raise BadInput(f"not an Ethereum address: {address!r}")
        return str(Web3.to_checksum_address(address))
    try:
        return keystore_address(cfg.wallet_path)
    except WalletError as exc:
        if not can_pass:
            raise
        raise WalletError(f"{exc}, or pass {can_pass}") from None


def unlock_wallet(cfg: Settings) -> LocalAccount:
    """The wallet's account; prompts for the password only on a terminal."""
    from meshcompute.wallet import unlock

    return unlock(cfg, prompt=sys.stdin.isatty())


def connect_chain(cfg: Settings) -> ChainConnection:
    from meshcompute.chain.connect import connect

    return connect(cfg)


def require_gas(conn: ChainConnection, address: str) -> None:
    """Refuse to send from an account with no ETH for gas, with what to do about it."""
    if conn.w3.eth.get_balance(address) > 0:  # type: ignore[arg-type]
        return
    if conn.chain_id == DEV_CHAIN_ID:
        hint = (
            "restart `mesh chain up` with the wallet in place (it funds the wallet at "
            "MESH_WALLET_PATH), or send it ETH from a dev account"
        )
    else:
        hint = "send it some of the chain's native currency (a testnet faucet) for gas"
    raise BadInput(f"{address} has no ETH to pay gas on chain id {conn.chain_id}: {hint}")


def require_balance(conn: ChainConnection, address: str, needed: int, purpose: str) -> None:
    """Refuse when ``address`` holds fewer than ``needed`` MESH, naming the shortfall."""
    have = conn.contracts.balance_of(address)
    if have < needed:
        raise BadInput(
            f"you have {mesh(have)}, {purpose} needs {mesh(needed - have)} more; {FAUCET_HINT}"
        )
