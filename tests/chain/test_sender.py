"""TxSender on both backends: nonces under concurrency, restarts, rejections, reverts, timeouts."""

from __future__ import annotations

import logging
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from eth_abi import encode
from eth_account.signers.local import LocalAccount
from web3 import Web3

from meshcompute.chain.devchain import DevChain
from meshcompute.chain.local import LocalChain
from meshcompute.chain.sender import TxSender
from meshcompute.errors import (
    ChainError,
    ContractRevert,
    TransactionRejected,
    TransactionTimeout,
)

POKE_ABI = [
    {
        "type": "function",
        "name": "poke",
        "inputs": [{"name": "jobId", "type": "uint256"}],
        "outputs": [],
        "stateMutability": "nonpayable",
    }
]
NOT_ASSIGNED_WORKER = bytes.fromhex("deadbeef")


def nonce_of(w3: Web3, tx_hash: Any) -> int:
    return int(w3.eth.get_transaction(tx_hash)["nonce"])


def pending_nonce(w3: Web3, account: LocalAccount) -> int:
    return int(w3.eth.get_transaction_count(account.address, "pending"))


def test_send_transfer_returns_successful_receipt(sender, w3, bob):
    before = w3.eth.get_balance(bob.address)

    receipt = sender.send({"to": bob.address, "value": 12345})

    assert receipt["status"] == 1
    assert w3.eth.get_balance(bob.address) == before + 12345


def test_send_concurrent_transfers_use_consecutive_nonces(sender, w3, alice, bob, caplog):
    caplog.set_level(logging.INFO, logger="meshcompute.chain.sender")
    start = pending_nonce(w3, alice)

    def transfer(index: int) -> Any:
        return sender.send({"to": bob.address, "value": index + 1})

    with ThreadPoolExecutor(max_workers=50) as pool:
        receipts = list(pool.map(transfer, range(50)))

    assert all(receipt["status"] == 1 for receipt in receipts)
    nonces = sorted(nonce_of(w3, receipt["transactionHash"]) for receipt in receipts)
    assert nonces == list(range(start, start + 50))
    assert pending_nonce(w3, alice) == start + 50
    assert "nonce conflict" not in caplog.text


def test_send_new_sender_after_restart_continues_without_gaps(w3, alice, bob):
    first = TxSender(w3, alice)
    hashes = [first.send({"to": bob.address, "value": 1})["transactionHash"] for _ in range(3)]
    del first  # the "process" ends; nothing is carried over

    restarted = TxSender(w3, alice.key)
    hashes += [restarted.send({"to": bob.address, "value": 1})["transactionHash"] for _ in range(2)]

    nonces = [nonce_of(w3, tx_hash) for tx_hash in hashes]
    assert nonces == list(range(nonces[0], nonces[0] + 5))


@pytest.mark.anvil
def test_send_new_sender_counts_pending_transactions(anvil_chain: LocalChain):
    """Anvil only: eth-tester's pending nonce ignores unmined transactions."""
    w3, (alice, bob) = anvil_chain.w3(), anvil_chain.accounts[:2]
    first = TxSender(w3, alice)
    anvil_chain.set_automine(False)
    pending = first.send_async({"to": bob.address, "value": 1})

    restarted = TxSender(w3, alice)
    second = restarted.send_async({"to": bob.address, "value": 1})
    anvil_chain.mine()

    assert first.wait_for_receipt(pending, timeout=5)["status"] == 1
    assert restarted.wait_for_receipt(second, timeout=5)["status"] == 1
    assert nonce_of(w3, second) == nonce_of(w3, pending) + 1


def test_send_other_senders_nonce_use_is_recovered(w3, alice, bob):
    """Another process spends a nonce behind our back: one resync-and-retry fixes it."""
    ours = TxSender(w3, alice)
    ours.send({"to": bob.address, "value": 1})
    TxSender(w3, alice).send({"to": bob.address, "value": 1})

    receipt = ours.send({"to": bob.address, "value": 1})

    assert receipt["status"] == 1
    assert nonce_of(w3, receipt["transactionHash"]) == pending_nonce(w3, alice) - 1


@pytest.mark.parametrize("gas", [None, 21000], ids=["rejected-at-estimate", "rejected-at-send"])
def test_send_after_rejection_uses_the_released_nonce(sender, w3, alice, bob, gas):
    start = pending_nonce(w3, alice)
    too_much = {"to": bob.address, "value": w3.eth.get_balance(alice.address) * 2}
    if gas is not None:
        too_much["gas"] = gas  # skip estimation, so the node refuses the signed transaction

    with pytest.raises(TransactionRejected) as rejected:
        sender.send(too_much)
    receipt = sender.send({"to": bob.address, "value": 1})

    assert "fund" in rejected.value.node_message.lower() or "balance" in rejected.value.node_message
    assert isinstance(rejected.value, ChainError)
    assert nonce_of(w3, receipt["transactionHash"]) == start
    assert pending_nonce(w3, alice) == start + 1


def test_send_fee_below_base_fee_is_rejected_with_node_message(sender, bob):
    with pytest.raises(TransactionRejected, match="(?i)base fee"):
        sender.send({"to": bob.address, "value": 1, "gas": 21000, "maxFeePerGas": 1,
                     "maxPriorityFeePerGas": 1})  # fmt: skip
    assert sender.send({"to": bob.address, "value": 1})["status"] == 1


def test_send_revert_in_estimation_keeps_revert_data(sender, w3, alice, deploy_reverter):
    reverter = deploy_reverter(NOT_ASSIGNED_WORKER + encode(["uint256"], [3]))
    start = pending_nonce(w3, alice)

    with pytest.raises(ContractRevert) as reverted:
        sender.send({"to": reverter, "data": "0x01"})

    assert reverted.value.data == "0x" + NOT_ASSIGNED_WORKER.hex() + (3).to_bytes(32, "big").hex()
    assert reverted.value.error_name == "UnknownError"
    assert reverted.value.tx_hash is None
    assert pending_nonce(w3, alice) == start  # nothing was sent


def test_send_mined_revert_raises_with_tx_hash_and_data(sender, w3, deploy_reverter):
    reverter = deploy_reverter(NOT_ASSIGNED_WORKER)

    with pytest.raises(ContractRevert) as reverted:
        sender.send({"to": reverter, "gas": 100_000})

    assert reverted.value.tx_hash is not None
    assert w3.eth.get_transaction_receipt(reverted.value.tx_hash)["status"] == 0
    assert reverted.value.data == "0xdeadbeef"


def test_send_error_decoder_names_custom_error(w3, alice, deploy_reverter):
    caller = alice.address
    reverter = deploy_reverter(NOT_ASSIGNED_WORKER + encode(["uint256", "address"], [3, caller]))

    def decode(data: bytes) -> tuple[str, dict[str, Any]] | None:
        if data[:4] != NOT_ASSIGNED_WORKER:
            return None
        from eth_abi import decode as abi_decode

        job_id, who = abi_decode(["uint256", "address"], data[4:])
        return "NotAssignedWorker", {"jobId": job_id, "caller": Web3.to_checksum_address(who)}

    sender = TxSender(w3, alice, error_decoder=decode, contract_names={reverter: "JobMarket"})
    market = w3.eth.contract(address=reverter, abi=POKE_ABI)

    with pytest.raises(ContractRevert) as reverted:
        sender.send(market.functions.poke(3))

    assert reverted.value.error_name == "NotAssignedWorker"
    assert reverted.value.args_dict == {"jobId": 3, "caller": caller}
    assert reverted.value.contract == "JobMarket"
    assert str(reverted.value).startswith(
        f"JobMarket reverted with NotAssignedWorker(jobId=3, caller={caller})"
    )


def test_send_require_string_is_decoded(sender, deploy_reverter):
    reverter = deploy_reverter(bytes.fromhex("08c379a0") + encode(["string"], ["not yours"]))

    with pytest.raises(ContractRevert) as reverted:
        sender.send({"to": reverter})

    assert reverted.value.error_name == "Error"
    assert reverted.value.args_dict == {"reason": "not yours"}


def test_send_revert_class_hook_picks_exception_type(w3, alice, deploy_reverter):
    class NotPermitted(ContractRevert, PermissionError):
        pass

    reverter = deploy_reverter(NOT_ASSIGNED_WORKER)
    sender = TxSender(
        w3,
        alice,
        error_decoder=lambda data: ("NotAssignedWorker", {}),
        revert_class=lambda name: NotPermitted,
    )

    with pytest.raises(PermissionError):
        sender.send({"to": reverter})


def test_send_contract_function_and_constructor(sender, w3, init_code_for):
    empty_contract = w3.eth.contract(abi=POKE_ABI, bytecode=init_code_for(b"\x00"))
    deployed = sender.send(empty_contract.constructor())
    address = deployed["contractAddress"]
    poke = w3.eth.contract(address=address, abi=POKE_ABI).functions.poke(7)

    receipt = sender.send(poke)

    tx = w3.eth.get_transaction(receipt["transactionHash"])
    assert receipt["status"] == 1
    assert tx["to"] == address
    assert bytes(tx["input"]) == bytes.fromhex(poke._encode_transaction_data()[2:])


def test_send_wait_false_returns_hash(sender, bob):
    tx_hash = sender.send({"to": bob.address, "value": 1}, wait=False)

    assert sender.wait_for_receipt(tx_hash)["transactionHash"] == tx_hash


def test_send_min_gas_raises_the_gas_limit_up_to_the_block_gas_limit(sender, w3, bob):
    transfer = {"to": bob.address, "value": 1}

    def gas_of(receipt: Any) -> int:
        return int(w3.eth.get_transaction(receipt["transactionHash"])["gas"])

    kept = sender.send(transfer, min_gas=21000)
    raised = sender.send(transfer, min_gas=50_000)
    given = sender.send(transfer, tx_params={"gas": 30_000}, min_gas=40_000)
    capped = sender.send(transfer, min_gas=2**63)

    assert gas_of(kept) == int(21000 * sender.gas_margin)  # the estimate, above the floor
    assert gas_of(raised) == 50_000
    assert gas_of(given) == 40_000
    assert gas_of(capped) == w3.eth.get_block(capped["blockNumber"] - 1)["gasLimit"]


def test_send_min_gas_reads_the_latest_block_once(sender, w3, bob, monkeypatch):
    """The block read for its gas limit gives the fees too: a gas floor costs no extra call."""
    reads: list[Any] = []
    get_block = w3.eth.get_block

    def counted(block_id: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(block_id)
        return get_block(block_id, *args, **kwargs)

    monkeypatch.setattr(w3.eth, "get_block", counted)
    tx_hash = sender.send_async({"to": bob.address, "value": 1}, min_gas=50_000)

    assert reads == ["latest"]
    assert w3.eth.get_transaction(tx_hash)["gas"] == 50_000


def test_wait_for_receipt_timeout_names_the_hash(dev_chain: DevChain, sender, bob):
    dev_chain.set_automine(False)
    tx_hash = sender.send_async({"to": bob.address, "value": 1})

    with pytest.raises(TransactionTimeout) as timed_out:
        sender.wait_for_receipt(tx_hash, timeout=0.2)

    assert tx_hash.to_0x_hex() in str(timed_out.value)
    assert timed_out.value.tx_hash == tx_hash.to_0x_hex()
    assert isinstance(timed_out.value, TimeoutError)
    dev_chain.mine()
    assert sender.wait_for_receipt(tx_hash, timeout=5)["status"] == 1


def test_sender_repr_shows_only_address(sender, alice):
    shown = repr(sender) + str(sender.__dict__.get("nonces"))
    assert alice.address in repr(sender)
    assert alice.key.hex() not in shown
    assert alice.key.hex()[2:] not in shown


def test_chain_errors_survive_pickling():
    errors: list[Exception] = [
        TransactionTimeout("0xabc", 1.5),
        TransactionRejected("nonce too low", sender="0x1"),
        ContractRevert("NotAssignedWorker", {"jobId": 3}, contract="JobMarket", data="0x01"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


def test_send_resubmitting_an_accepted_transaction_does_not_duplicate_it(sender, w3, alice, bob):
    """A lost response plus web3's retry: the node already has our exact transaction."""
    tx = {"to": bob.address, "value": 7, "gas": 21000, **_fixed_fees(w3)}
    nonce = sender.resync()
    already_sent = alice.sign_transaction({**tx, "nonce": nonce, "chainId": w3.eth.chain_id})
    w3.eth.send_raw_transaction(already_sent.raw_transaction)

    tx_hash = sender.send_async(tx)

    assert tx_hash == already_sent.hash
    assert pending_nonce(w3, alice) == nonce + 1
    assert sender.send({"to": bob.address, "value": 1})["status"] == 1


def _fixed_fees(w3: Web3) -> dict[str, int]:
    base_fee = w3.eth.get_block("latest")["baseFeePerGas"]
    return {"maxFeePerGas": 3 * base_fee + 10**9, "maxPriorityFeePerGas": 10**9}
