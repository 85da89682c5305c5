"""The interface every development chain offers: anvil (:mod:`.local`) or eth-tester
(:mod:`.testchain`). Tests written against :class:`DevChain` run on either.

Both derive their accounts from the same mnemonic and path, so ``accounts[0]`` has the same
address everywhere (0xf39F...2266 for :data:`~meshcompute.settings.DEV_MNEMONIC`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from types import TracebackType
from typing import Any, Self

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import RPCEndpoint

from meshcompute.errors import ChainError

DEV_ACCOUNT_COUNT = 10
HD_PATH_PREFIX = "m/44'/60'/0'/0"
"""BIP-44 Ethereum path; account ``i`` is ``{HD_PATH_PREFIX}/{i}`` (anvil's default)."""


@lru_cache(maxsize=8)
def dev_accounts(mnemonic: str, count: int = DEV_ACCOUNT_COUNT) -> tuple[LocalAccount, ...]:
    """The first ``count`` accounts of ``mnemonic`` (derivation costs ~10 ms each, so cached)."""
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        Account.from_mnemonic(mnemonic, account_path=f"{HD_PATH_PREFIX}/{index}")
        for index in range(count)
    )


def is_dev_account(address: str) -> bool:
    """Whether ``address`` is one of the well-known accounts of the public development
    mnemonic (anvil's defaults): anyone holds their keys."""
    from meshcompute.settings import DEV_MNEMONIC

    return address.lower() in {a.address.lower() for a in dev_accounts(DEV_MNEMONIC)}


class DevChain(ABC):
    """A throwaway chain with funded accounts and test-only controls over blocks and time."""

    chain_id: int
    mnemonic: str

    @abstractmethod
    def w3(self) -> Web3:
        """A synchronous Web3 connected to this chain (one shared instance)."""

    @property
    def accounts(self) -> list[LocalAccount]:
        """The funded accounts, with private keys, in derivation order."""
        return list(dev_accounts(self.mnemonic))

    @abstractmethod
    def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` blocks now (including any pending transactions)."""

    @abstractmethod
    def increase_time(self, seconds: int) -> None:
        """Move chain time forward by ``seconds`` and mine a block that carries the new time."""

    @abstractmethod
    def snapshot(self) -> int:
        """Record the chain state; returns an id for :meth:`revert`."""

    @abstractmethod
    def revert(self, snapshot_id: int) -> None:
        """Return to a snapshot (usable once: anvil forgets a snapshot when reverting to it).

        Senders that transacted after the snapshot hold stale nonces: call their
        ``resync()``.
        """

    @abstractmethod
    def set_automine(self, enabled: bool) -> None:
        """Mine each transaction as it arrives (default), or leave them pending until mine()."""

    def stop(self) -> None:
        """Release whatever the chain holds (a process, a port). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _rpc(self, method: str, params: list[Any]) -> Any:
        """Call a (possibly non-standard) RPC method and return its result."""
        response = self.w3().provider.make_request(RPCEndpoint(method), params)
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error']}")
        return response.get("result")
