"""The market's keys: a key of the public dev mnemonic is refused outside the dev chain, and
errors about a key never show it."""

from __future__ import annotations

import pytest
from eth_account import Account

from meshcompute.chain.devchain import dev_accounts
from meshcompute.errors import ConfigError
from meshcompute.market.runtime import assigner_account, settler_account
from meshcompute.settings import DEV_MNEMONIC, load_settings
from meshcompute.units import DEV_CHAIN_ID

SEPOLIA = 11155111
DEV_ASSIGNER = dev_accounts(DEV_MNEMONIC)[1]
OWN_KEY = "0x" + "3c" * 32


def _settings(**keys):
    return load_settings(**keys)


@pytest.mark.parametrize("index", [0, 1, 9])
def test_dev_assigner_key_is_refused_off_the_dev_chain(index: int) -> None:
    key = dev_accounts(DEV_MNEMONIC)[index].key.to_0x_hex()
    with pytest.raises(ConfigError, match="MESH_ASSIGNER_KEY is a key of the public development") \
            as caught:
        assigner_account(_settings(assigner_key=key), SEPOLIA)
    assert key.removeprefix("0x") not in str(caught.value)


def test_dev_keys_are_fine_on_the_dev_chain() -> None:
    settings = _settings(assigner_key=DEV_ASSIGNER.key.to_0x_hex())
    assert assigner_account(settings, DEV_CHAIN_ID).address == DEV_ASSIGNER.address
    assert assigner_account(_settings(), DEV_CHAIN_ID).address == DEV_ASSIGNER.address


def test_own_keys_are_fine_anywhere() -> None:
    settings = _settings(assigner_key=OWN_KEY, settler_key=OWN_KEY)
    assigner = assigner_account(settings, SEPOLIA)
    assert assigner.address == Account.from_key(OWN_KEY).address
    assert settler_account(settings, SEPOLIA, assigner).address == assigner.address


def test_dev_settler_key_is_refused_off_the_dev_chain() -> None:
    settings = _settings(assigner_key=OWN_KEY, settler_key=DEV_ASSIGNER.key.to_0x_hex())
    assigner = assigner_account(settings, SEPOLIA)
    with pytest.raises(ConfigError, match="MESH_SETTLER_KEY is a key of the public development"):
        settler_account(settings, SEPOLIA, assigner)


def test_malformed_settler_key_is_a_config_error_without_the_key() -> None:
    bad = "0x" + "ab" * 31
    settings = _settings(settler_key=bad)
    with pytest.raises(ConfigError, match="MESH_SETTLER_KEY is not a private key") as caught:
        settler_account(settings, DEV_CHAIN_ID, DEV_ASSIGNER)
    assert "ab" * 31 not in str(caught.value)
