"""Turn revert data into a readable :class:`~meshcompute.errors.ContractRevert`.

Solidity's two built-in errors (``Error(string)`` from ``require``/``revert("...")`` and
``Panic(uint256)`` from failed asserts, overflow, division by zero...) are decoded here.
Custom errors need the contract ABIs, so callers pass an :data:`ErrorDecoder` that knows them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from hexbytes import HexBytes

from meshcompute.errors import ContractRevert

ErrorDecoder = Callable[[bytes], tuple[str, dict[str, Any]] | None]
"""Maps raw revert data (selector + ABI-encoded arguments) to (error name, arguments)."""

RevertClass = Callable[[str], type[ContractRevert]]
"""Maps a decoded error name to the ContractRevert subclass to raise."""

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")
PANIC_SELECTOR = bytes.fromhex("4e487b71")
PANIC_MEANINGS = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "bad storage byte array encoding",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}


def revert_data_bytes(data: Any) -> bytes | None:
    """Normalise revert data as nodes and web3 report it (hex str, bytes, or a dict holding
    ``data``) to bytes; None when there is none."""
    if isinstance(data, dict):
        data = data.get("data") or data.get("originalError", {}).get("data")
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes(HexBytes(data))
        except ValueError:
            return None
    return None


def decode_builtin_error(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """Decode ``Error(string)`` and ``Panic(uint256)``; None for anything else."""
    selector, payload = data[:4], data[4:]
    try:
        if selector == ERROR_STRING_SELECTOR:
            (reason,) = abi_decode(["string"], payload)
            return "Error", {"reason": reason}
        if selector == PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], payload)
            return "Panic", {"code": code, "meaning": PANIC_MEANINGS.get(code, "unknown")}
    except DecodingError:
        return None
    return None


def contract_revert(
    data: bytes | None,
    *,
    decoder: ErrorDecoder | None = None,
    contract: str | None = None,
    tx_hash: str | None = None,
    detail: str | None = None,
    revert_class: RevertClass | None = None,
) -> ContractRevert:
    """Build the exception for a revert with ``data`` (None when the node gave none).

    ``revert_class`` picks the exception class from the decoded error name (per-error
    subclasses of ContractRevert); by default it is ContractRevert itself.
    """
    hex_data = "0x" + data.hex() if data is not None else None
    if not data:
        return ContractRevert(
            "Revert", {}, contract=contract, data=hex_data, tx_hash=tx_hash, detail=detail
        )
    decoded = decode_builtin_error(data)
    if decoded is None and decoder is not None:
        decoded = decoder(data)
    if decoded is None:
        decoded = ("UnknownError", {"selector": "0x" + data[:4].hex()})
    name, args = decoded
    cls = revert_class(name) if revert_class is not None else ContractRevert
    return cls(name, args, contract=contract, data=hex_data, tx_hash=tx_hash, detail=detail)
