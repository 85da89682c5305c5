"""Sign and send transactions from one key, with managed nonces and typed failures.

    sender = TxSender(w3, account, error_decoder=decode_mesh_error)
    receipt = sender.send(market.functions.commitResult(job_id, result_hash))
    tx_hash = sender.send_async({"to": bob, "value": 10**18})
    receipt = sender.wait_for_receipt(tx_hash, timeout=10)

Use one TxSender per (chain, key) in a process and share it between threads: its
:class:`~meshcompute.chain.nonces.NonceManager` hands out nonces in order and submits under a
lock, so concurrent sends neither collide nor leave gaps. A new TxSender (after a restart)
starts from the node's pending transaction count.

Failures: the node refusing a transaction raises :class:`TransactionRejected` (after one
resync-and-retry when the refusal is a nonce conflict); a revert during gas estimation or in
a mined transaction raises :class:`ContractRevert` carrying the raw revert data; no receipt
in time raises :class:`TransactionTimeout`; an unreachable node raises
:class:`ChainUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, cast, overload

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxParams, TxReceipt

from meshcompute.chain.fees import has_fees, suggest_fees
from meshcompute.chain.nonces import NonceManager, is_nonce_conflict
from meshcompute.chain.reverts import (
    ErrorDecoder,
    RevertClass,
    contract_revert,
    revert_data_bytes,
)
from meshcompute.errors import ChainUnavailable, TransactionRejected, TransactionTimeout
from meshcompute.settings import get_settings

log = logging.getLogger(__name__)

Transaction = Mapping[str, Any] | ContractFunction | ContractConstructor
"""A transaction dict (``to``, ``value``, ``data``, ...) or a bound contract call/deploy."""

DEFAULT_GAS_MARGIN = 1.2
_NODE_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


class _NonceConflict(Exception):
    """Internal: the node disagrees with our nonce; resync and try again."""


class TxSender:
    """Signs locally with one key and sends raw transactions to ``w3``'s node."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount | str | bytes,
        *,
        error_decoder: ErrorDecoder | None = None,
        revert_class: RevertClass | None = None,
        contract_names: Mapping[str, str] | None = None,
        gas_margin: float = DEFAULT_GAS_MARGIN,
        receipt_timeout_s: float | None = None,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.w3 = w3
        self._account = account if isinstance(account, LocalAccount) else Account.from_key(account)
        self.error_decoder = error_decoder
        self.revert_class = revert_class
        self.contract_names: dict[str, str] = {
            Web3.to_checksum_address(address): name
            for address, name in (contract_names or {}).items()
        }
        self.gas_margin = gas_margin
        self.receipt_timeout_s = (
            receipt_timeout_s
            if receipt_timeout_s is not None
            else get_settings().tx_receipt_timeout_s
        )
        self.poll_interval_s = poll_interval_s
        self.nonces = NonceManager(self.address, self._pending_count)
        self._chain_id: int | None = None

    def __repr__(self) -> str:
        return f"<TxSender {self.address}>"

    @property
    def address(self) -> str:
        return str(self._account.address)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            with _node_reachable():
                self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def name_contract(self, address: str, name: str) -> None:
        """Use ``name`` for ``address`` in revert messages ("JobMarket reverted with ...")."""
        self.contract_names[Web3.to_checksum_address(address)] = name

    def resync(self) -> int:
        """Re-read the nonce from the node (after a chain revert or an outside send)."""
        with _node_reachable():
            return self.nonces.resync()

    @overload
    def send(
        self,
        tx: Transaction,
        *,
        wait: Literal[True] = ...,
        timeout: float | None = ...,
        tx_params: Mapping[str, Any] | None = ...,
        min_gas: int | None = ...,
    ) -> TxReceipt: ...

    @overload
    def send(
        self,
        tx: Transaction,
        *,
        wait: Literal[False],
        timeout: float | None = ...,
        tx_params: Mapping[str, Any] | None = ...,
        min_gas: int | None = ...,
    ) -> HexBytes: ...

    def send(
        self,
        tx: Transaction,
        *,
        wait: bool = True,
        timeout: float | None = None,
        tx_params: Mapping[str, Any] | None = None,
        min_gas: int | None = None,
    ) -> TxReceipt | HexBytes:
        """Send ``tx`` and, with ``wait``, return its successful receipt.

        ``tx_params`` adds fields to a contract call (``value``, ``gas``, fees). ``min_gas``
        raises the gas limit (estimated, or given in ``tx_params``) to at least that much,
        never above the latest block's gas limit: for a transaction that may need more gas
        in the block it lands in than in the latest block, where the estimate ran.
        """
        tx_hash = self.send_async(tx, tx_params=tx_params, min_gas=min_gas)
        if not wait:
            return tx_hash
        return self.wait_for_receipt(tx_hash, timeout)

    def send_async(
        self,
        tx: Transaction,
        *,
        tx_params: Mapping[str, Any] | None = None,
        min_gas: int | None = None,
    ) -> HexBytes:
        """Sign and submit ``tx`` (``tx_params`` and ``min_gas`` as in :meth:`send`); returns
        its hash once the node has accepted it."""
        prepared = self._prepare(tx, tx_params, min_gas)
        with _node_reachable():
            try:
                return self._submit(prepared)
            except _NonceConflict as conflict:
                log.info("nonce conflict for %s (%s); resyncing", self.address, conflict)
            try:
                return self._submit(prepared)
            except _NonceConflict as conflict:
                raise TransactionRejected(str(conflict), sender=self.address) from None

    def wait_for_receipt(self, tx_hash: bytes | str, timeout: float | None = None) -> TxReceipt:
        """The receipt of a mined transaction; raises ContractRevert if it reverted."""
        limit = self.receipt_timeout_s if timeout is None else timeout
        try:
            with _node_reachable():
                receipt = self.w3.eth.wait_for_transaction_receipt(
                    HexBytes(tx_hash), timeout=limit, poll_latency=self.poll_interval_s
                )
        except TimeExhausted:
            raise TransactionTimeout(HexBytes(tx_hash).to_0x_hex(), limit) from None
        if receipt["status"] == 0:
            raise self._revert_of_mined(receipt)
        return receipt

    def _prepare(
        self, tx: Transaction, tx_params: Mapping[str, Any] | None, min_gas: int | None
    ) -> dict[str, Any]:
        """The full transaction minus its nonce: estimates gas and fees unless given, and
        raises the gas limit to ``min_gas`` (capped at the latest block's gas limit; the
        block read once serves the fees too).

        A ``from`` or ``nonce`` in ``tx`` is ignored: the key and the NonceManager decide
        those. Raises ContractRevert when the gas estimate reverts, TransactionRejected when
        the node refuses the estimate for another reason (e.g. insufficient funds).
        """
        fields = {**_transaction_fields(tx), **(tx_params or {})}
        for ignored in ("from", "nonce"):
            fields.pop(ignored, None)
        if fields.get("to") is None:
            fields.pop("to", None)  # a deployment
        fields.setdefault("value", 0)
        fields["chainId"] = self.chain_id
        with _node_reachable():
            if "gas" not in fields:
                fields["gas"] = self._estimate_gas(fields)
            latest = None
            if min_gas is not None:
                latest = self.w3.eth.get_block("latest")
                fields["gas"] = min(int(latest["gasLimit"]), max(int(fields["gas"]), min_gas))
            if not has_fees(fields):
                fields.update(suggest_fees(self.w3, latest))
        return fields

    def _estimate_gas(self, fields: Mapping[str, Any]) -> int:
        request = {key: fields[key] for key in ("to", "data", "value") if key in fields}
        request["from"] = self.address
        try:
            estimate = self.w3.eth.estimate_gas(cast(TxParams, request))
        except ContractLogicError as exc:
            raise contract_revert(
                revert_data_bytes(exc.data),
                decoder=self.error_decoder,
                revert_class=self.revert_class,
                contract=self._contract_name(fields.get("to")),
                detail="during gas estimation",
            ) from None
        except Web3RPCError as exc:
            raise TransactionRejected(_node_message(exc), sender=self.address) from None
        return int(estimate * self.gas_margin)

    def _submit(self, prepared: Mapping[str, Any]) -> HexBytes:
        with self.nonces.reserve() as nonce:
            signed = self._account.sign_transaction({**prepared, "nonce": nonce})
            tx_hash = HexBytes(signed.hash)
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Web3RPCError as exc:
                message = _node_message(exc)
                if not is_nonce_conflict(message):
                    raise TransactionRejected(message, sender=self.address) from None
                # A lost response plus web3's retry looks like a conflict with ourselves.
                if not self._node_knows(tx_hash):
                    raise _NonceConflict(message) from None
            except _NODE_UNREACHABLE as exc:
                raise ChainUnavailable(
                    f"node unreachable while sending {tx_hash.to_0x_hex()} (nonce {nonce}); "
                    f"it may or may not have been accepted: {exc}"
                ) from exc
            log.debug("sent %s from %s nonce %d", tx_hash.to_0x_hex(), self.address, nonce)
            return tx_hash

    def _node_knows(self, tx_hash: HexBytes) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return True

    def _pending_count(self, address: str) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(address), "pending"))

    def _contract_name(self, address: Any) -> str | None:
        if not address:
            return None
        checksummed = Web3.to_checksum_address(address)
        return self.contract_names.get(checksummed, checksummed)

    def _revert_of_mined(self, receipt: TxReceipt) -> Exception:
        """Replay a failed transaction as a call on its parent state to recover the revert
        data (exact when it was first in its block, as with automine)."""
        tx = self.w3.eth.get_transaction(receipt["transactionHash"])
        call: dict[str, Any] = {
            "from": tx["from"],
            "data": tx["input"],
            "value": tx["value"],
            "gas": tx["gas"],
        }
        if tx.get("to"):
            call["to"] = tx["to"]
        data: bytes | None = None
        detail = None
        try:
            self.w3.eth.call(cast(TxParams, call), block_identifier=receipt["blockNumber"] - 1)
            detail = f"replay did not revert; gas used {receipt['gasUsed']} of {tx['gas']}"
        except ContractLogicError as exc:
            data = revert_data_bytes(exc.data)
        except Web3RPCError as exc:
            detail = f"replay failed: {_node_message(exc)}"
        return contract_revert(
            data,
            decoder=self.error_decoder,
            revert_class=self.revert_class,
            contract=self._contract_name(tx.get("to")),
            tx_hash=HexBytes(receipt["transactionHash"]).to_0x_hex(),
            detail=detail,
        )


def _transaction_fields(tx: Transaction) -> dict[str, Any]:
    if isinstance(tx, ContractFunction):
        if not tx.address:
            raise ValueError(f"{tx!r} is not bound to a contract address")
        return {"to": tx.address, "data": tx._encode_transaction_data()}
    if isinstance(tx, ContractConstructor):
        return {"data": tx.data_in_transaction}
    return dict(tx)


def _node_message(exc: Web3RPCError) -> str:
    """The node's own wording, not web3's repr of the whole error object."""
    response = exc.rpc_response or {}
    error = response.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(exc.message)


@contextmanager
def _node_reachable() -> Iterator[None]:
    """Turn connection failures into ChainUnavailable."""
    try:
        yield
    except _NODE_UNREACHABLE as exc:
        raise ChainUnavailable(f"chain node unreachable: {exc}") from exc
