"""NonceManager without a chain: consecutive under threads, re-read after a failure."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from meshcompute.chain.nonces import NonceManager, is_nonce_conflict


class FakeNode:
    def __init__(self, count: int) -> None:
        self.count = count
        self.reads = 0

    def pending_count(self, address: str) -> int:
        self.reads += 1
        return self.count


def test_reserve_hands_out_consecutive_nonces_across_threads():
    node = FakeNode(5)
    nonces = NonceManager("0xabc", node.pending_count)

    def take(_: int) -> int:
        with nonces.reserve() as nonce:
            return nonce

    with ThreadPoolExecutor(max_workers=16) as pool:
        taken = sorted(pool.map(take, range(200)))

    assert taken == list(range(5, 205))
    assert node.reads == 1


def test_failed_reservation_rereads_from_node():
    node = FakeNode(0)
    nonces = NonceManager("0xabc", node.pending_count)
    with nonces.reserve() as nonce:
        assert nonce == 0
    with pytest.raises(RuntimeError), nonces.reserve():
        raise RuntimeError("node refused")
    node.count = 1  # the node's view: only the first transaction got in

    with nonces.reserve() as nonce:
        assert nonce == 1
    assert node.reads == 2


@pytest.mark.parametrize(
    "message",
    [
        "nonce too low",
        "Nonce too high",
        "already known",
        "transaction already imported",
        "replacement transaction underpriced",
        "Invalid transaction nonce: Expected 1, but got 0",
    ],
)
def test_nonce_conflicts_recognised(message):
    assert is_nonce_conflict(message)


def test_other_rejections_are_not_nonce_conflicts():
    assert not is_nonce_conflict("Insufficient funds for gas * price + value")
