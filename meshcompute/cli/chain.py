"""``mesh chain``: run a local chain or deploy the contracts to any EVM chain."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Annotated

import typer
from rich.console import Console

from meshcompute.errors import MeshError

app = typer.Typer(no_args_is_help=True, help="Run or deploy to a chain.")
chain_app = app

console = Console(stderr=True)


@chain_app.command("up")
def chain_up() -> None:
    """Start a local anvil, deploy the contracts, fund the dev wallets; runs until Ctrl-C."""
    from meshcompute.chain.contracts import MeshActor, mesh_sender
    from meshcompute.chain.deploy import TOKEN, deploy_contracts, save_deployment
    from meshcompute.chain.local import LocalChain
    from meshcompute.settings import get_settings

    settings = get_settings()
    with LocalChain() as chain:
        w3 = chain.w3()
        admin = chain.accounts[0]
        sender = mesh_sender(w3, admin)
        deployment = deploy_contracts(
            sender,
            assigners=(chain.accounts[1].address,),
            verifiers=(chain.accounts[2].address,),
        )
        path = save_deployment(deployment, settings.deployments_dir)
        actor = MeshActor(w3, deployment, admin, sender)
        for account in chain.accounts[1:]:
            actor.mint(account.address, 100_000 * TOKEN)
        console.print(f"anvil at [bold]{chain.rpc_url}[/] (chain id {deployment.chain_id})")
        for name, address in deployment.addresses.items():
            console.print(f"  {name:<13} {address}")
        console.print(f"deployment record: {path}")
        console.print("dev accounts 1-9 hold 100,000 MESH each; Ctrl-C stops the chain")
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


@chain_app.command("deploy")
def chain_deploy(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC URL of the target chain.")],
    key_env: Annotated[
        str, typer.Option(help="Environment variable holding the deployer's private key.")
    ] = "MESH_DEPLOYER_KEY",
    assigner: Annotated[list[str], typer.Option(help="Address allowed to sign tickets.")] = [],  # noqa: B006
    verifier: Annotated[list[str], typer.Option(help="Address allowed to post verdicts.")] = [],  # noqa: B006
    faucet: Annotated[bool, typer.Option(help="Enable the faucet (testnets only).")] = False,
) -> None:
    """Deploy the contracts to any EVM chain with a funded key; writes the deployment record."""
    from dataclasses import replace

    from eth_account import Account
    from web3 import Web3

    from meshcompute.chain.contracts import mesh_sender
    from meshcompute.chain.deploy import DeployParams, deploy_contracts, save_deployment
    from meshcompute.settings import get_settings

    key = os.environ.get(key_env)
    if not key:
        raise MeshError(f"set {key_env} to the deployer's private key (it is never printed)")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    sender = mesh_sender(w3, Account.from_key(key))
    params = replace(DeployParams(), enable_faucet=faucet)
    deployment = deploy_contracts(
        sender, params, assigners=tuple(assigner), verifiers=tuple(verifier)
    )
    path = save_deployment(deployment, get_settings().deployments_dir)
    print(json.dumps(deployment.to_json(), indent=2))
    console.print(f"deployment record: {path}")
