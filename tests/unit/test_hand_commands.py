"""`mesh chain up`'s "run each role by hand" text: every role, both verifiers, and only the
dev mnemonic's well-known public keys."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from meshcompute.chain.devchain import dev_accounts
from meshcompute.mesh.cli.chain import HAND_STAKE, hand_commands
from meshcompute.settings import DEV_MNEMONIC

RPC = "http://127.0.0.1:8545"
VERIFIER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # anvil account 2
SECOND_VERIFIER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"  # anvil account 3


def _text(tmp_path: Path) -> str:
    return "\n".join(hand_commands(RPC, tmp_path / "my mesh", tmp_path / "my mesh" / "deployments"))


def test_names_every_role_and_both_verifiers(tmp_path: Path) -> None:
    text = _text(tmp_path)
    for command in ("mesh market serve", "mesh market tasks", "mesh worker start"):
        assert command in text + "\n", command
    assert (text + "\n").count("mesh verifier start\n") == 2  # two verifiers, equal roles
    assert VERIFIER in text and SECOND_VERIFIER in text
    accounts = dev_accounts(DEV_MNEMONIC)
    assert accounts[2].address == VERIFIER and accounts[3].address == SECOND_VERIFIER
    # each verifier imports its own funded dev key into its own data folder
    for index, folder in ((2, "dev-verifier"), (3, "dev-verifier-2")):
        key = accounts[index].key.to_0x_hex()
        (line,) = [entry for entry in text.splitlines() if key in entry]
        assert "mesh wallet import --key-env MESH_DEV_KEY" in line
        assert shlex.quote(str(tmp_path / "my mesh" / folder)) in line
    assert f"mesh provider stake {HAND_STAKE} --if-unstaked && mesh verifier start" in text
    assert "appeal" in text and "other than the one that gave the verdict" in text
    assert RPC in text


def test_prints_only_public_dev_keys(tmp_path: Path) -> None:
    text = _text(tmp_path)
    public = {account.key.to_0x_hex() for account in dev_accounts(DEV_MNEMONIC)}
    shown = set(re.findall(r"0x[0-9a-fA-F]{64}", text))
    assert shown and shown <= public
    assert dev_accounts(DEV_MNEMONIC)[0].key.to_0x_hex() not in text  # never the admin's
    assert "never use them on a real chain" in text


def test_each_line_is_valid_shell(tmp_path: Path) -> None:
    for line in hand_commands(RPC, tmp_path / "a b", tmp_path / "a b" / "deployments"):
        if line.startswith("    "):
            shlex.split(line)  # quoting survives a path with a space
