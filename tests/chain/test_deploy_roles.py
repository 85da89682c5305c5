"""Deployments off the dev chain use keys their operator chose: ``check_roles`` (pure),
``actor_for`` (every service's signer), and ``mesh chain deploy`` against a real anvil that
calls itself another chain."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from eth_account import Account
from web3 import Web3

from meshcompute.chain.connect import actor_for
from meshcompute.chain.deploy import check_roles
from meshcompute.chain.devchain import dev_accounts, is_dev_account
from meshcompute.chain.local import LocalChain
from meshcompute.errors import ConfigError
from meshcompute.settings import DEV_MNEMONIC
from meshcompute.units import DEV_CHAIN_ID

DEV = dev_accounts(DEV_MNEMONIC)
OWN = [Account.from_key("0x" + f"{i:02x}" * 32) for i in range(1, 5)]
TESTNET = 11155111


def test_the_dev_chain_keeps_its_development_defaults():
    check_roles(DEV_CHAIN_ID, DEV[0].address, [DEV[1].address], [DEV[2].address])
    assert is_dev_account(DEV[9].address.lower()) and not is_dev_account(OWN[0].address)


@pytest.mark.parametrize(
    ("deployer", "assigners", "verifiers", "reason"),
    [
        (DEV[0].address, [OWN[1].address], [OWN[2].address, OWN[3].address],
         "deployer 0xf39F"),
        (OWN[0].address, [DEV[1].address], [OWN[2].address, OWN[3].address],
         "--assigner 0x7099"),
        (OWN[0].address, [OWN[1].address], [OWN[2].address, DEV[3].address],
         "--verifier 0x90F7"),
        (OWN[0].address, [], [OWN[2].address, OWN[3].address], "name the market's ticket"),
        (OWN[0].address, [OWN[1].address], [OWN[2].address], "name two verifiers"),
        (OWN[0].address, [OWN[1].address], [OWN[2].address, OWN[2].address.lower()],
         "name two verifiers"),
        (OWN[0].address, [OWN[1].address], [OWN[2].address, OWN[3].address, OWN[3].address],
         "named twice"),
        (OWN[0].address, ["0x12"], [OWN[2].address, OWN[3].address], "not an address"),
    ],
)
def test_off_the_dev_chain_every_role_is_the_operators_own(deployer, assigners, verifiers,
                                                           reason):
    with pytest.raises(ConfigError, match=reason):
        check_roles(TESTNET, deployer, assigners, verifiers)


def test_off_the_dev_chain_own_roles_pass():
    check_roles(TESTNET, OWN[0].address, [OWN[1].address], [OWN[2].address, OWN[3].address])


def test_no_service_signs_with_a_development_key_off_the_dev_chain():
    conn = SimpleNamespace(w3=None, deployment=SimpleNamespace(chain_id=TESTNET))
    with pytest.raises(ConfigError, match="public development mnemonic"):
        actor_for(conn, DEV[5])  # type: ignore[arg-type]


@pytest.mark.anvil
def test_mesh_chain_deploy_refuses_development_keys_on_another_chain(anvil_binary, tmp_path):
    with LocalChain(anvil_path=anvil_binary, chain_id=TESTNET) as chain:
        w3 = chain.w3()
        deployer = OWN[0]
        w3.eth.send_transaction({"from": DEV[0].address, "to": deployer.address,
                                 "value": Web3.to_wei(10, "ether")})
        env = {**os.environ, "MESH_DEPLOYMENTS_DIR": str(tmp_path),
               "MESH_DATA_DIR": str(tmp_path / "data")}

        def deploy(key: str, *roles: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "meshcompute.mesh.cli.main", "chain", "deploy",
                 "--rpc-url", chain.rpc_url, *roles],
                env={**env, "MESH_DEPLOYER_KEY": key}, capture_output=True, text=True,
                timeout=120, check=False)

        roles = ["--assigner", OWN[1].address, "--verifier", OWN[2].address,
                 "--verifier", OWN[3].address]
        refused = deploy(DEV[0].key.to_0x_hex(), *roles)
        assert refused.returncode != 0
        assert "public development mnemonic" in refused.stderr + refused.stdout
        dev_roles = deploy(deployer.key.to_0x_hex(), "--assigner", DEV[1].address,
                           "--verifier", DEV[2].address, "--verifier", DEV[3].address)
        assert dev_roles.returncode != 0 and "--assigner 0x7099" in (
            dev_roles.stderr + dev_roles.stdout)
        assert not list(tmp_path.glob("*.json"))  # nothing was deployed
        done = deploy(deployer.key.to_0x_hex(), *roles)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"{TESTNET}.json").is_file()
        assert DEV[0].key.to_0x_hex() not in done.stdout + done.stderr
