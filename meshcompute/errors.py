"""The one exception tree for meshcompute.

Every error we raise derives from :class:`MeshError`, and where a builtin fits it derives from
that builtin too (the web3.py pattern), so callers can catch either ``MeshError`` or, say,
``TimeoutError``. Modules add subclasses here (or next to the code that raises them) rather
than growing parallel trees; per-contract custom errors subclass :class:`ContractRevert`.
"""

from __future__ import annotations

from typing import Any


class MeshError(Exception):
    """Root of every meshcompute error."""


class ConfigError(MeshError, ValueError):
    """A setting is missing or invalid; the message names the offending key."""


class ChainError(MeshError, RuntimeError):
    """Something went wrong talking to, or transacting on, a chain."""


class ChainUnavailable(ChainError, ConnectionError):
    """The node cannot be reached, or a local node did not start."""


class TransactionTimeout(ChainError, TimeoutError):
    """A transaction was sent but no receipt appeared in time."""

    def __init__(self, tx_hash: str, timeout_s: float) -> None:
        super().__init__(f"transaction {tx_hash} has no receipt after {timeout_s:g} s")
        self.tx_hash = tx_hash
        self.timeout_s = timeout_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.tx_hash, self.timeout_s), {}))


class TransactionRejected(ChainError):
    """The node refused a transaction before it entered the mempool.

    Typical reasons: fee below the base fee, a nonce conflict, insufficient funds, intrinsic
    gas too low. ``node_message`` is the node's own wording.
    """

    def __init__(self, node_message: str, *, sender: str | None = None) -> None:
        who = f" from {sender}" if sender else ""
        super().__init__(f"node rejected transaction{who}: {node_message}")
        self.node_message = node_message
        self.sender = sender

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.node_message,), {"sender": self.sender}))


class ContractRevert(ChainError):
    """A contract call reverted, during gas estimation or on chain.

    ``error_name`` and ``args_dict`` describe the decoded error (``"Error"`` with
    ``{"reason": ...}`` for ``require`` strings, ``"Panic"`` with ``{"code": ...}``,
    ``"UnknownError"`` with ``{"selector": ...}`` when no decoder knew the data, ``"Revert"``
    when the revert carried no data). ``data`` keeps the raw revert data as ``0x`` hex when
    it is known, so a later layer can decode it; ``tx_hash`` is set when the revert happened
    in a mined transaction.
    """

    def __init__(
        self,
        error_name: str,
        args_dict: dict[str, Any] | None = None,
        *,
        contract: str | None = None,
        data: str | None = None,
        tx_hash: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.error_name = error_name
        self.args_dict: dict[str, Any] = dict(args_dict or {})
        self.contract = contract
        self.data = data
        self.tx_hash = tx_hash
        self.detail = detail
        super().__init__(self._describe())

    def __reduce__(self) -> tuple[Any, ...]:
        keywords = {
            "contract": self.contract,
            "data": self.data,
            "tx_hash": self.tx_hash,
            "detail": self.detail,
        }
        return (_rebuild, (type(self), (self.error_name, self.args_dict), keywords))

    def _describe(self) -> str:
        who = self.contract or "contract"
        if self.error_name == "Revert" and not self.args_dict:
            what = "reverted without reason"
        else:
            args = ", ".join(f"{key}={_show(value)}" for key, value in self.args_dict.items())
            what = f"reverted with {self.error_name}({args})"
        where = f" in transaction {self.tx_hash}" if self.tx_hash else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{who} {what}{where}{extra}"


class DeploymentNotFound(MeshError, LookupError):
    """No deployment record for the requested contract on this chain."""


# --- errors outside the chain: bad input, authentication, services, jobs


class BadInput(MeshError, ValueError):
    """Input from a user or a peer is malformed; the message names what was wrong."""


class AuthError(MeshError, PermissionError):
    """A signed request was refused: bad, expired or replayed signature, or wrong signer."""


class NotFound(MeshError, LookupError):
    """Something asked for by id or hash does not exist (a blob, a job, a worker)."""


class ServiceUnavailable(MeshError, ConnectionError):
    """A service (the market, Redis) could not be reached; the message says which and where."""


class JobFailed(MeshError, RuntimeError):
    """A job could not be run; the reason is readable by the client."""


class SandboxUnavailable(MeshError, RuntimeError):
    """No OS-level isolation is available for running untrusted programs."""


class WalletError(MeshError, ValueError):
    """A keystore could not be created, read or unlocked (for example a wrong password)."""


class Conflict(MeshError, RuntimeError):
    """The request is valid but the current state does not allow it yet (HTTP 409), e.g. a
    group's output asked for before every shard is final."""


# --- families of contract reverts (meshcompute.chain.custom_errors maps each custom error to one)


class NotPermitted(ContractRevert, PermissionError):
    """The caller lacks the role, is not the job's client or worker, or signed wrongly."""


class InsufficientFunds(ContractRevert, ValueError):
    """Not enough balance, allowance, free stake, or nothing to withdraw."""


class InvalidRequest(ContractRevert, ValueError):
    """An argument the contract refuses (zero reward, deadline in the past, bad bps...)."""


class NotFoundOnChain(ContractRevert, LookupError):
    """The job (or other object) does not exist on chain."""


class StaleJobRecord(ContractRevert, ValueError):
    """The job record passed differs from the one the contract stores; re-read it from chain."""


class WrongJobState(ContractRevert):
    """The job is not in a state that allows the action."""


class TooEarly(ContractRevert):
    """A window has not opened yet (deadline, challenge window, unbonding, faucet cooldown)."""


class TooLate(ContractRevert, TimeoutError):
    """A deadline, lease or window has already passed."""


class Paused(ContractRevert):
    """The job market is paused for an emergency; new work is refused."""


def _rebuild(cls: type[Exception], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Exception:
    """Unpickle an error whose constructor takes more than a message (Celery pickles them)."""
    return cls(*args, **kwargs)


def _show(value: Any) -> str:
    """Render an error argument readably: bytes as 0x hex, strings quoted, the rest as is."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, str) and not value.startswith("0x"):
        return repr(value)
    return str(value)
