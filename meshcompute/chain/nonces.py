"""Nonces for one sending address, handed out consecutively and safely across threads.

The manager is a counter seeded from the node's ``pending`` transaction count. A nonce is
reserved and the transaction submitted while the lock is held, so the node always sees this
address's transactions in nonce order and a rejection never leaves a gap: when the body of
:meth:`NonceManager.reserve` raises, the counter is dropped and re-read from the node on the
next reservation (the node's pending count is then the truth, whether or not the failed
transaction got in).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NONCE_CONFLICT_PHRASES = (
    "nonce too low",
    "nonce too high",
    "invalid transaction nonce",  # py-evm / eth-tester
    "already known",  # geth: the same transaction is already in the pool
    "already imported",  # anvil's wording of the same
    "replacement transaction underpriced",  # another transaction holds this nonce
)


def is_nonce_conflict(node_message: str) -> bool:
    """Whether a node's rejection means our nonce counter disagrees with the chain."""
    lowered = node_message.lower()
    return any(phrase in lowered for phrase in NONCE_CONFLICT_PHRASES)


class NonceManager:
    """Consecutive nonces for one address; ``fetch_pending_count`` reads the node's view."""

    def __init__(self, address: str, fetch_pending_count: Callable[[str], int]) -> None:
        self.address = address
        self._fetch_pending_count = fetch_pending_count
        self._lock = threading.Lock()
        self._next: int | None = None

    def __repr__(self) -> str:
        return f"<NonceManager {self.address} next={self._next}>"

    @contextmanager
    def reserve(self) -> Iterator[int]:
        """Yield the next nonce with the lock held; it counts as used only if the body
        finishes without raising. Submit the transaction inside the ``with`` block."""
        with self._lock:
            if self._next is None:
                self._next = self._fetch_pending_count(self.address)
            nonce = self._next
            try:
                yield nonce
            except BaseException:
                self._next = None  # re-read from the node next time
                raise
            self._next = nonce + 1

    def resync(self) -> int:
        """Re-read the counter from the node now (after a restart, revert or reorg)."""
        with self._lock:
            self._next = self._fetch_pending_count(self.address)
            return self._next

    def peek(self) -> int | None:
        """The nonce the next reservation will use, if known without asking the node."""
        return self._next
