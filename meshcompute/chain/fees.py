"""Fee fields for a new transaction, from what the node reports.

EIP-1559 chains: ``maxFeePerGas = 2 * baseFee + priorityFee``, which stays valid through six
consecutive full blocks (the base fee rises at most 12.5% per block), and the node's
suggested priority fee. Chains without a base fee get a legacy ``gasPrice``.
"""

from __future__ import annotations

from typing import Any

from web3 import Web3
from web3.exceptions import MethodUnavailable, Web3RPCError
from web3.types import BlockData

DEFAULT_PRIORITY_FEE_WEI = 10**9  # 1 gwei, when the node has no eth_maxPriorityFeePerGas
FEE_FIELDS = ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")


def suggest_fees(w3: Web3, latest: BlockData | None = None) -> dict[str, int]:
    """``maxFeePerGas``/``maxPriorityFeePerGas`` on an EIP-1559 chain, else ``gasPrice``;
    from ``latest`` when the caller has just read the latest block, else read here."""
    block = w3.eth.get_block("latest") if latest is None else latest
    base_fee = block.get("baseFeePerGas")
    if base_fee is None:
        return {"gasPrice": int(w3.eth.gas_price)}
    priority_fee = _priority_fee(w3)
    return {"maxFeePerGas": 2 * int(base_fee) + priority_fee, "maxPriorityFeePerGas": priority_fee}


def has_fees(tx: dict[str, Any]) -> bool:
    """Whether the caller already chose the fee fields."""
    return any(field in tx for field in FEE_FIELDS)


def _priority_fee(w3: Web3) -> int:
    try:
        return int(w3.eth.max_priority_fee)
    except (MethodUnavailable, Web3RPCError):
        return DEFAULT_PRIORITY_FEE_WEI
