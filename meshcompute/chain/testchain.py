"""An in-memory chain (eth-tester on py-evm) with the same interface as :class:`LocalChain`.

    chain = eth_tester_web3()
    w3, alice = chain.w3(), chain.accounts[0]

Its accounts come from the same mnemonic and path as anvil's, so addresses match. Two things
make eth-tester behave like a JSON-RPC node for the code above it:

* requests are serialised with a lock (eth-tester is not thread-safe, and senders use threads);
* failures come back as JSON-RPC errors instead of Python exceptions: a revert carries its raw
  revert data in ``error.data`` (as anvil and geth do) and a refused transaction carries the
  validation message, so callers see the same web3 exceptions on both backends.
"""

from __future__ import annotations

import ast
import re
import threading
from typing import Any, cast

from eth_abi.abi import encode as abi_encode
from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]
from eth_tester.exceptions import TransactionFailed  # type: ignore[import-untyped]
from eth_tester.exceptions import ValidationError as TesterValidationError
from eth_utils.exceptions import ValidationError as EvmValidationError
from web3 import EthereumTesterProvider, Web3
from web3.types import RPCEndpoint, RPCResponse

from meshcompute.chain.devchain import DEV_ACCOUNT_COUNT, HD_PATH_PREFIX, DevChain
from meshcompute.settings import DEV_MNEMONIC

REVERT_CODE = 3  # what geth and anvil use for "execution reverted" with data
INVALID_INPUT_CODE = -32000
METHOD_NOT_FOUND_CODE = -32601
ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")
_BYTES_LITERAL = re.compile(r"b(['\"]).*\1", re.DOTALL)


class NodeLikeTesterProvider(EthereumTesterProvider):
    """EthereumTesterProvider that is thread-safe and reports errors the way a node does."""

    def __init__(self, ethereum_tester: EthereumTester) -> None:
        super().__init__(ethereum_tester)
        self.lock = threading.Lock()
        """Held for every request; hold it to touch the EthereumTester directly."""

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        with self.lock:
            request_id = self._current_request_id
            self._current_request_id += 1
            namespace, _, endpoint = method.partition("_")
            delegator = (self.api_endpoints or {}).get(namespace, {}).get(endpoint)
            if delegator is None:
                return _error(request_id, METHOD_NOT_FOUND_CODE, f"Unknown RPC Endpoint: {method}")
            try:
                result = delegator(self.ethereum_tester, params)
            except NotImplementedError:
                return _error(request_id, METHOD_NOT_FOUND_CODE, f"Not implemented: {method}")
            except TransactionFailed as exc:
                return _revert_error(request_id, exc)
            except (EvmValidationError, TesterValidationError) as exc:
                return _error(request_id, INVALID_INPUT_CODE, str(exc))
            return cast(RPCResponse, {"id": request_id, "jsonrpc": "2.0", "result": result})


class TesterChain(DevChain):
    """A py-evm chain in this process: fast to create, nothing to stop."""

    def __init__(self, mnemonic: str = DEV_MNEMONIC) -> None:
        self.mnemonic = mnemonic
        backend = PyEVMBackend.from_mnemonic(
            mnemonic, num_accounts=DEV_ACCOUNT_COUNT, hd_path=HD_PATH_PREFIX
        )
        self.tester = EthereumTester(backend)
        self._provider = NodeLikeTesterProvider(self.tester)
        self._w3 = Web3(self._provider)
        self.chain_id = self._w3.eth.chain_id

    def __repr__(self) -> str:
        return f"<TesterChain chain_id={self.chain_id}>"

    def w3(self) -> Web3:
        return self._w3

    def mine(self, blocks: int = 1) -> None:
        self._rpc("evm_mine", [blocks])

    def increase_time(self, seconds: int) -> None:
        pending = self._w3.eth.get_block("pending")
        self._rpc("testing_timeTravel", [pending["timestamp"] + seconds])

    def snapshot(self) -> int:
        return int(self._rpc("evm_snapshot", []))

    def revert(self, snapshot_id: int) -> None:
        self._rpc("evm_revert", [snapshot_id])

    def set_automine(self, enabled: bool) -> None:
        with self._provider.lock:
            if enabled:
                self.tester.enable_auto_mine_transactions()
            else:
                self.tester.disable_auto_mine_transactions()


def eth_tester_web3(mnemonic: str = DEV_MNEMONIC) -> TesterChain:
    """A fresh in-memory chain: ``.w3()``, funded ``.accounts`` and the DevChain helpers."""
    return TesterChain(mnemonic)


def _error(request_id: Any, code: int, message: str, data: str | None = None) -> RPCResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return cast(RPCResponse, {"id": request_id, "jsonrpc": "2.0", "error": error})


def _revert_error(request_id: Any, exc: TransactionFailed) -> RPCResponse:
    """Rebuild the node-style revert error from what eth-tester raised.

    eth-tester reports a revert in three shapes: gas estimation wraps the EVM error, whose
    argument is the raw revert data; ``eth_call`` gives the decoded reason of an
    ``Error(string)``, or ``str()`` of the raw data (``"b'\\xde\\xad'"``) for anything else.
    """
    reason = exc.args[0] if exc.args else b""
    if isinstance(reason, Exception):
        reason = reason.args[0] if reason.args else b""
    if isinstance(reason, bytes | bytearray):
        return _error(request_id, REVERT_CODE, "execution reverted", "0x" + bytes(reason).hex())
    text = str(reason)
    raw = _parse_bytes_literal(text)
    if raw is not None:
        return _error(request_id, REVERT_CODE, "execution reverted", "0x" + raw.hex())
    return _error(
        request_id,
        REVERT_CODE,
        f"execution reverted: {text}",
        "0x" + _encode_error_string(text).hex(),
    )


def _parse_bytes_literal(text: str) -> bytes | None:
    if not _BYTES_LITERAL.fullmatch(text):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, bytes) else None


def _encode_error_string(reason: str) -> bytes:
    """ABI-encode ``Error(string)``, the data a ``require(cond, reason)`` revert carries."""
    return ERROR_STRING_SELECTOR + abi_encode(["string"], [reason])
