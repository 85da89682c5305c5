"""``mesh wallet``: create, import and inspect this node's keystore; get test credits.

The password comes from ``MESH_WALLET_PASSWORD``, ``MESH_WALLET_PASSWORD_FILE`` or a prompt.
A private key is never printed; ``import`` reads it from a prompt, a file or an environment
variable, never from the command line (which other users can see in ``ps``).
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from meshcompute.errors import BadInput, WalletError
from meshcompute.mesh.cli import onchain
from meshcompute.units import DEV_CHAIN_ID, TOKEN

app = typer.Typer(no_args_is_help=True, help="Create, import and inspect the wallet.")
wallet_app = app

PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="Keystore file (default: MESH_WALLET_PATH, ~/.mesh/wallet.json)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@wallet_app.command("new")
def wallet_new(path: PathOption = None, as_json: JsonOption = False) -> None:
    """Create a new account in an encrypted keystore (never overwrites one)."""
    from meshcompute.wallet import create_wallet, resolve_password

    cfg = onchain.settings()
    target = (path or cfg.wallet_path).expanduser()
    if target.exists():
        raise WalletError(f"a wallet already exists at {target}; refusing to overwrite it")
    password = resolve_password(prompt=sys.stdin.isatty(), confirm=True)
    address = create_wallet(target, password)
    _report_created(address, target, as_json, "created")


@wallet_app.command("import")
def wallet_import(
    path: PathOption = None,
    key_file: Annotated[
        Path | None, typer.Option(help="File holding the private key (hex), e.g. a secret mount.")
    ] = None,
    key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the private key (hex).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Encrypt an existing private key into a keystore.

    The key is read from a prompt, --key-file or --key-env, never from the command line.
    """
    from meshcompute.wallet import import_wallet, resolve_password

    cfg = onchain.settings()
    target = (path or cfg.wallet_path).expanduser()
    if target.exists():
        raise WalletError(f"a wallet already exists at {target}; refusing to overwrite it")
    key = _read_private_key(key_file, key_env)
    password = resolve_password(prompt=sys.stdin.isatty(), confirm=True)
    address = import_wallet(target, key, password)
    _report_created(address, target, as_json, "imported")


@wallet_app.command("show")
def wallet_show(
    address: Annotated[
        str | None, typer.Argument(help="Any address (default: this wallet's).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Address, ETH and MESH balances, stake and withdrawable credits (no password needed)."""
    cfg = onchain.settings()
    who = onchain.my_address(cfg, address, can_pass="an ADDRESS")
    conn = onchain.connect_chain(cfg)
    contracts = conn.contracts
    eth_balance = int(conn.w3.eth.get_balance(who))  # type: ignore[arg-type]
    balance = contracts.balance_of(who)
    stake = contracts.stake_of(who)
    account = contracts.account_of(who)
    if as_json:
        onchain.emit_json(
            {
                "address": who,
                "chain_id": conn.chain_id,
                "eth": onchain.money(eth_balance),
                "mesh": onchain.money(balance),
                "stake": {
                    "free": onchain.money(stake.free),
                    "locked": onchain.money(stake.locked),
                    "unbonding": onchain.money(stake.unbonding),
                    "release_at": stake.release_at,
                    "slashed": onchain.money(stake.slashed),
                },
                "withdrawable": onchain.money(account.withdrawable),
            }
        )
        return
    out = onchain.out
    out.print(f"address       {who}")
    out.print(f"chain         {conn.rpc_url} (chain id {conn.chain_id})")
    out.print(f"ETH           {onchain.eth(eth_balance)}")
    out.print(f"MESH          {onchain.mesh(balance)}")
    out.print(
        f"stake         {onchain.mesh(stake.free)} free, {onchain.mesh(stake.locked)} locked, "
        f"{onchain.mesh(stake.unbonding)} unbonding"
    )
    out.print(f"withdrawable  {onchain.mesh(account.withdrawable)} (`mesh withdraw`)")


@wallet_app.command("faucet")
def wallet_faucet(as_json: JsonOption = False) -> None:
    """Get test credits from the MeshCredit faucet (dev chains and faucet-enabled testnets)."""
    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    credit = conn.contracts.credit
    who = onchain.my_address(cfg)
    if not credit.functions.faucetEnabled().call():
        raise BadInput(
            f"the faucet is disabled on chain id {conn.chain_id} (it runs on local dev chains "
            "and on deployments made with `mesh chain deploy --faucet`); ask the deployer for "
            "credits"
        )
    next_time = int(credit.functions.nextFaucetTime(who).call())
    now = int(conn.w3.eth.get_block("latest")["timestamp"])
    if next_time > now:
        wait_min = -(-(next_time - now) // 60)
        raise BadInput(
            f"the faucet already paid {who} recently; try again after {onchain.when(next_time)} "
            f"(in about {wait_min} min)"
        )
    if conn.chain_id == DEV_CHAIN_ID and conn.w3.eth.get_balance(who) == 0:  # type: ignore[arg-type]
        # Local dev chain only: give the new wallet gas money, as `mesh chain up` does.
        conn.w3.provider.make_request("anvil_setBalance", [who, hex(10 * TOKEN)])  # type: ignore[arg-type]
    onchain.require_gas(conn, who)
    from meshcompute.chain.connect import actor_for

    actor = actor_for(conn, onchain.unlock_wallet(cfg))
    before = conn.contracts.balance_of(who)
    actor.faucet()
    after = conn.contracts.balance_of(who)
    if as_json:
        onchain.emit_json(
            {
                "address": who,
                "received": onchain.money(after - before),
                "mesh": onchain.money(after),
            }
        )
        return
    onchain.out.print(f"received {onchain.mesh(after - before)}; balance {onchain.mesh(after)}")


def _report_created(address: str, path: Path, as_json: bool, verb: str) -> None:
    if as_json:
        onchain.emit_json({"address": address, "path": str(path)})
        return
    onchain.out.print(f"{verb} wallet {address}")
    onchain.out.print(f"keystore {path} (mode 0600); keep the password: it cannot be recovered")


def _read_private_key(key_file: Path | None, key_env: str | None) -> str:
    if key_file is not None and key_env is not None:
        raise BadInput("give --key-file or --key-env, not both")
    if key_file is not None:
        try:
            return key_file.expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadInput(f"cannot read --key-file {key_file}: {exc.strerror or exc}") from None
    if key_env is not None:
        value = os.environ.get(key_env, "").strip()
        if not value:
            raise BadInput(f"--key-env {key_env}: that environment variable is empty or unset")
        return value
    if not sys.stdin.isatty():
        raise BadInput("no private key given: pass --key-file FILE or --key-env VARIABLE")
    try:
        return getpass.getpass("private key (hex, not shown): ").strip()
    except (EOFError, KeyboardInterrupt):
        raise BadInput("no private key typed") from None
