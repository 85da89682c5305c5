"""Decode the contracts' custom errors into the meshcompute error tree.

Every custom error of every shipped contract (ours and the OpenZeppelin ones they inherit) is
known by its 4-byte selector. :func:`decode_custom_error` is the ``ErrorDecoder`` the
transaction sender takes; :func:`revert_class` gives the exception class for an error name, so
``except PermissionError`` or ``except errors.InsufficientFunds`` both work.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak, to_checksum_address

from meshcompute.chain.artifacts import available_artifacts, load_artifact
from meshcompute.errors import (
    ContractRevert,
    InsufficientFunds,
    InvalidRequest,
    NotFoundOnChain,
    NotPermitted,
    Paused,
    StaleJobRecord,
    TooEarly,
    TooLate,
    WrongJobState,
)

#: Which branch of the error tree each custom error belongs to.
ERROR_FAMILIES: dict[str, type[ContractRevert]] = {
    # who may act
    "AccessControlUnauthorizedAccount": NotPermitted,
    "NotJobClient": NotPermitted,
    "NotAssignedWorker": NotPermitted,
    "TicketWorkerMismatch": NotPermitted,
    "JobReservedFor": NotPermitted,
    "InvalidTicketSigner": NotPermitted,
    "CallerNotJobMarket": NotPermitted,
    "NotThroughMarket": NotPermitted,
    "VerifierConflict": NotPermitted,
    "NotAssignedVerifier": NotPermitted,
    "NotMember": NotPermitted,
    "ReentrancyGuardReentrantCall": NotPermitted,
    # money and stake
    "InsufficientFreeStake": InsufficientFunds,
    "InsufficientLockedStake": InsufficientFunds,
    "ERC20InsufficientBalance": InsufficientFunds,
    "ERC20InsufficientAllowance": InsufficientFunds,
    "NothingToWithdraw": InsufficientFunds,
    "DepositTooSmall": InsufficientFunds,
    "DepositReserved": InsufficientFunds,
    # bad arguments
    "ZeroReward": InvalidRequest,
    "ZeroAmount": InvalidRequest,
    "ZeroAddress": InvalidRequest,
    "DeadlineInPast": InvalidRequest,
    "InvalidBps": InvalidRequest,
    "EmptyBatch": InvalidRequest,
    "LengthMismatch": InvalidRequest,
    "EmptyResult": InvalidRequest,
    "EmptyEvidence": InvalidRequest,
    "AmountTooLarge": InvalidRequest,
    "TokenMismatch": InvalidRequest,
    "UnbondingTooShort": InvalidRequest,
    "ERC2612ExpiredSignature": TooLate,
    "ERC2612InvalidSigner": NotPermitted,
    # which job, in which state
    "UnknownJob": NotFoundOnChain,
    "JobRecordMismatch": StaleJobRecord,
    "JobClosed": WrongJobState,
    "InvalidJobState": WrongJobState,
    "JobLeased": WrongJobState,
    "NotDrawnForAudit": WrongJobState,
    "JobMarketAlreadySet": WrongJobState,
    "AlreadyMember": WrongJobState,
    "AlreadyLeaving": WrongJobState,
    "RegistryFull": WrongJobState,
    # timing
    "DeadlineNotReached": TooEarly,
    "NotYetSettleable": TooEarly,
    "AuditDrawPending": TooEarly,
    "StillUnbonding": TooEarly,
    "StillBound": TooEarly,
    "OverturnsPending": TooEarly,
    "FaucetCooldown": TooEarly,
    "TicketExpired": TooLate,
    "JobDeadlinePassed": TooLate,
    "WindowClosed": TooLate,
    # switches
    "EnforcedPause": Paused,
    "FaucetDisabled": NotPermitted,
}

_classes: dict[str, type[ContractRevert]] = {}


def revert_class(error_name: str) -> type[ContractRevert]:
    """The exception class for ``error_name``: a subclass named after the error, under its
    family (for example ``UnknownJob`` under ``NotFoundOnChain``, a ``LookupError``)."""
    cls = _classes.get(error_name)
    if cls is None:
        base = ERROR_FAMILIES.get(error_name, ContractRevert)
        cls = type(error_name, (base,), {"__module__": __name__, "__doc__": f"{error_name} revert."})
        _classes[error_name] = cls
    return cls


@cache
def _selectors() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    names = [n for n in available_artifacts()]
    for name in names:
        for item in load_artifact(name)["abi"]:
            if item.get("type") != "error":
                continue
            types = [abi_type(i) for i in item["inputs"]]
            signature = f"{item['name']}({','.join(types)})"
            table[keccak(text=signature)[:4]] = (
                item["name"],
                [i["name"] or f"arg{k}" for k, i in enumerate(item["inputs"])],
                types,
            )
    return table


def abi_type(item: dict[str, Any]) -> str:
    """The canonical ABI type of an ABI input item (tuples spelled out), for signatures."""
    if item["type"].startswith("tuple"):
        inner = ",".join(abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return item["type"]


def decode_custom_error(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """(error name, arguments) for revert ``data`` of a known custom error, else None."""
    entry = _selectors().get(bytes(data[:4]))
    if entry is None:
        return None
    name, arg_names, types = entry
    try:
        values = abi_decode(types, bytes(data[4:]))
    except DecodingError:
        return None
    args = {}
    for arg_name, typ, value in zip(arg_names, types, values, strict=True):
        args[arg_name] = to_checksum_address(value) if typ == "address" else value
    return name, args


def error_selector(error_name: str) -> bytes:
    """The 4-byte selector of a known custom error (for tests and tooling)."""
    for selector, (name, _, _) in _selectors().items():
        if name == error_name:
            return selector
    raise KeyError(error_name)
