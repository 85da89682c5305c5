"""``mesh chain``: run a local chain or deploy the contracts to any EVM chain."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from meshcompute.errors import MeshError

app = typer.Typer(no_args_is_help=True, help="Run or deploy to a chain.")
chain_app = app

console = Console(stderr=True, soft_wrap=True)


@chain_app.command("up")
def chain_up() -> None:
    """Start a local anvil, deploy the contracts, fund the dev wallets; runs until Ctrl-C.

    While it runs, ``<data_dir>/chain.json`` tells other mesh commands where the chain is
    (so they need no MESH_RPC_URL); it is removed on exit. A keystore at MESH_WALLET_PATH is
    funded with MESH and ETH for gas.
    """
    from meshcompute.chain.connect import LocalChainRecord, remove_chain_record, write_chain_record
    from meshcompute.chain.contracts import MeshActor, mesh_sender
    from meshcompute.chain.deploy import deploy_contracts, save_deployment
    from meshcompute.chain.local import LocalChain
    from meshcompute.settings import get_settings
    from meshcompute.units import TOKEN

    settings = get_settings()
    # Mixed mining, as the dev stack runs it: a block per transaction and one every second
    # even when idle. The audit draw needs the block after a commit, and the challenge
    # window ends by block time: under automine alone no job would ever be paid.
    with LocalChain(block_time_s=1, extra_args=("--mixed-mining",)) as chain:
        w3 = chain.w3()
        admin = chain.accounts[0]
        sender = mesh_sender(w3, admin)
        # A dev chain keeps the production windows but a 30 s dispute window: a passed
        # audit is paid when it closes, and a newcomer's first job should not wait 10 min.
        deployment = deploy_contracts(
            sender,
            _dev_chain_params(),
            assigners=(chain.accounts[1].address,),
            verifiers=(chain.accounts[2].address, chain.accounts[3].address),
        )
        path = save_deployment(deployment, settings.deployments_dir)
        actor = MeshActor(w3, deployment, admin, sender)
        for account in chain.accounts[1:]:
            actor.mint(account.address, DEV_MESH * TOKEN)
        console.print(f"anvil at [bold]{chain.rpc_url}[/] (chain id {deployment.chain_id})")
        for name, address in deployment.addresses.items():
            console.print(f"  {name:<13} {address}")
        console.print(f"deployment record: {path}")
        roles = {0: "admin", 1: "assigner (market)", 2: "verifier",
                 3: "verifier", 5: "worker"}
        console.print(f"dev accounts (dev mnemonic; 1-9 hold {DEV_MESH:,} MESH each):")
        for index, account in enumerate(chain.accounts):
            console.print(f"  {index}  {account.address}  {roles.get(index, '')}".rstrip())
        _fund_dev_wallet(settings.wallet_path, actor, sender)
        for line in hand_commands(chain.rpc_url, settings.data_dir, settings.deployments_dir):
            console.print(line, markup=False, highlight=False)
        pid = os.getpid()
        record_path = write_chain_record(
            settings.data_dir,
            LocalChainRecord(chain.rpc_url, deployment.chain_id, str(path), pid),
        )
        console.print(f"chain record: {record_path} (other mesh commands find the chain here)")
        console.print("Ctrl-C stops the chain")
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            remove_chain_record(settings.data_dir, pid=pid)


DEV_MESH = 100_000


def _dev_chain_params() -> Any:
    from meshcompute.chain.deploy import DeployParams

    return DeployParams(appeal_window_s=30)
"""MESH minted to each dev account and to the dev wallet by `mesh chain up`."""
DEV_WALLET_ETH = 100
"""ETH sent to the dev wallet for gas."""


HAND_STAKE = 1000
"""MESH each provider printed by :func:`hand_commands` stakes (the dev accounts hold 100,000)."""

_HAND_ROLES = (
    # (dev account, title, data folder, final command)
    (5, "worker (account 5, {address}; accounts 6-9 are free for more workers)", "dev-worker",
     "mesh worker start"),
    (2, "verifier (account 2, {address}): audits and judges what the draw assigns it",
     "dev-verifier", "mesh verifier start"),
    (3, ("second verifier (account 3, {address}): an appeal must be judged by a verifier "
        "other than the one that gave the verdict, so run both"),
     "dev-verifier-2", "mesh verifier start"),
)


def hand_commands(rpc_url: str, data_dir: Path, deployments_dir: Path) -> list[str]:
    """The shell commands that run each role by hand on the dev chain `mesh chain up` started:
    market, worker and two verifiers, each with the account it funded.

    The keys shown are derived here from the dev mnemonic (anvil's well-known public test
    accounts), so no other key can ever be printed.
    """
    import shlex

    from meshcompute.chain.devchain import dev_accounts
    from meshcompute.settings import DEV_MNEMONIC

    accounts = dev_accounts(DEV_MNEMONIC)
    data = Path(data_dir).expanduser()
    common = (f"MESH_RPC_URL={rpc_url} "
              f"MESH_DEPLOYMENTS_DIR={shlex.quote(str(Path(deployments_dir).expanduser()))}")
    lines = [
        ("run each role by hand on this chain, each block in its own shell (these are anvil's "
        "public dev keys: never use them on a real chain):"),
        (f"  market (account 1, {accounts[1].address}, signs tickets; `mesh market tasks` in a "
        "second shell with the same export):"),
        (f"    export MESH_DATA_DIR={shlex.quote(str(data))} {common} "
        f"MESH_ASSIGNER_KEY={accounts[1].key.to_0x_hex()}"),
        "    mesh market serve",
        "    mesh market tasks",
    ]
    for index, title, folder, start in _HAND_ROLES:
        home = shlex.quote(str(data / folder))
        lines += [
            "  " + title.format(address=accounts[index].address) + ":",
            (f"    export MESH_DATA_DIR={home} MESH_WALLET_PATH={home}/wallet.json {common} "
            "MESH_WALLET_PASSWORD=dev-only-password"),
            (f"    test -f {home}/wallet.json || MESH_DEV_KEY={accounts[index].key.to_0x_hex()} "
            "mesh wallet import --key-env MESH_DEV_KEY"),
            f"    mesh provider stake {HAND_STAKE} --if-unstaked && {start}",
        ]
    return lines


def _fund_dev_wallet(wallet_path: Path, actor: Any, sender: Any) -> None:
    """Mint MESH to the keystore's address and send it ETH for gas (no password needed)."""
    from meshcompute.errors import WalletError
    from meshcompute.units import TOKEN
    from meshcompute.wallet import keystore_address

    if not wallet_path.exists():
        console.print(
            f"no wallet at {wallet_path}: create one with `mesh wallet new` and restart to fund it"
        )
        return
    try:
        address = keystore_address(wallet_path)
    except WalletError as exc:
        console.print(f"[yellow]wallet not funded:[/] {exc}")
        return
    actor.mint(address, DEV_MESH * TOKEN)
    sender.send({"to": address, "value": DEV_WALLET_ETH * TOKEN})
    console.print(
        f"dev wallet {address} ({wallet_path}) funded: {DEV_MESH:,} MESH, {DEV_WALLET_ETH} ETH"
    )


@chain_app.command("deploy")
def chain_deploy(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC URL of the target chain.")],
    key_env: Annotated[
        str, typer.Option(help="Environment variable holding the deployer's private key.")
    ] = "MESH_DEPLOYER_KEY",
    assigner: Annotated[list[str], typer.Option(help="Address allowed to sign tickets.")] = [],  # noqa: B006
    verifier: Annotated[list[str], typer.Option(help="A verifier to seat in the registry, its deposit paid by the deployer (anyone can also join with `mesh verifier join`).")] = [],  # noqa: B006
    faucet: Annotated[bool, typer.Option(help="Enable the faucet (testnets only).")] = False,
    if_missing: Annotated[bool, typer.Option(
        help="Do nothing when a deployment record for this chain exists and its contracts "
             "have code (for container start-up).")] = False,
) -> None:
    """Deploy the contracts to any EVM chain with a funded key; writes the deployment record.

    Outside the dev chain (31337) the deployer and every role must be keys you control (the
    public development accounts are refused), with one --assigner and two --verifier."""
    from dataclasses import replace

    from eth_account import Account
    from web3 import Web3

    from meshcompute.chain.contracts import mesh_sender
    from meshcompute.chain.deploy import (
        DeployParams,
        check_roles,
        deploy_contracts,
        save_deployment,
    )
    from meshcompute.settings import get_settings

    key = os.environ.get(key_env)
    if not key:
        raise MeshError(f"set {key_env} to the deployer's private key (it is never printed)")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    if if_missing and _deployed(w3, get_settings().deployments_dir):
        console.print("deployment record present and its contracts have code: nothing to do")
        return
    deployer = Account.from_key(key)
    check_roles(int(w3.eth.chain_id), deployer.address, assigner, verifier)
    sender = mesh_sender(w3, deployer)
    params = replace(DeployParams(), enable_faucet=faucet)
    deployment = deploy_contracts(
        sender, params, assigners=tuple(assigner), verifiers=tuple(verifier)
    )
    path = save_deployment(deployment, get_settings().deployments_dir)
    print(json.dumps(deployment.to_json(), indent=2))
    console.print(f"deployment record: {path}")


def _deployed(w3: object, deployments_dir: Path) -> bool:
    """Whether this chain already has our deployment (record present and code at each address)."""
    from meshcompute.chain.deploy import load_deployment
    from meshcompute.errors import DeploymentNotFound

    try:
        deployment = load_deployment(deployments_dir, int(w3.eth.chain_id))  # type: ignore[attr-defined]
    except DeploymentNotFound:
        return False
    return all(
        len(w3.eth.get_code(address)) > 0  # type: ignore[attr-defined]
        for address in deployment.addresses.values()
    )
