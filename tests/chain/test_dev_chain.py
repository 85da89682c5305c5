"""The DevChain helpers behave the same on eth-tester and anvil."""

from __future__ import annotations

from meshcompute.chain.devchain import DevChain
from meshcompute.chain.sender import TxSender
from meshcompute.settings import DEV_MNEMONIC

FIRST_DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_accounts_are_the_dev_mnemonic_accounts(dev_chain: DevChain):
    accounts = dev_chain.accounts

    assert dev_chain.mnemonic == DEV_MNEMONIC
    assert len(accounts) == 10
    assert accounts[0].address == FIRST_DEV_ADDRESS
    assert all(dev_chain.w3().eth.get_balance(a.address) >= 10**22 for a in accounts)


def test_mine_adds_blocks(dev_chain: DevChain):
    w3 = dev_chain.w3()
    start = w3.eth.block_number

    dev_chain.mine(3)

    assert w3.eth.block_number == start + 3


def test_increase_time_moves_latest_timestamp(dev_chain: DevChain):
    w3 = dev_chain.w3()
    before = w3.eth.get_block("latest")["timestamp"]

    dev_chain.increase_time(3600)

    assert w3.eth.get_block("latest")["timestamp"] >= before + 3600


def test_revert_restores_snapshot_state(dev_chain: DevChain):
    w3 = dev_chain.w3()
    alice, bob = dev_chain.accounts[:2]
    snapshot = dev_chain.snapshot()
    balance, block = w3.eth.get_balance(bob.address), w3.eth.block_number
    sender = TxSender(w3, alice)
    sender.send({"to": bob.address, "value": 10**18})

    dev_chain.revert(snapshot)

    assert w3.eth.get_balance(bob.address) == balance
    assert w3.eth.block_number == block
    assert sender.resync() == w3.eth.get_transaction_count(alice.address)


def test_automine_off_holds_transactions_until_mined(dev_chain: DevChain):
    w3 = dev_chain.w3()
    alice, bob = dev_chain.accounts[:2]
    sender = TxSender(w3, alice)
    block = w3.eth.block_number

    dev_chain.set_automine(False)
    tx_hash = sender.send_async({"to": bob.address, "value": 1})
    assert w3.eth.block_number == block
    dev_chain.mine()
    dev_chain.set_automine(True)

    assert sender.wait_for_receipt(tx_hash, timeout=5)["blockNumber"] == block + 1
