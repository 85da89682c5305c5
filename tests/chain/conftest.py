"""The chain-layer suite runs every test on both backends: eth-tester (in process) and anvil.

``dev_chain`` is a fresh eth-tester chain, or the session's anvil rolled back to a snapshot
after the test, so each test starts from the same funded accounts either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from meshcompute.chain.devchain import DevChain
from meshcompute.chain.local import LocalChain
from meshcompute.chain.sender import TxSender
from meshcompute.chain.testchain import eth_tester_web3

BACKENDS = [
    pytest.param("eth_tester", id="eth_tester"),
    pytest.param("anvil", id="anvil", marks=pytest.mark.anvil),
]


@pytest.fixture(params=BACKENDS)
def dev_chain(request: pytest.FixtureRequest) -> Iterator[DevChain]:
    if request.param == "eth_tester":
        with eth_tester_web3() as chain:
            yield chain
        return
    yield from rolled_back(request.getfixturevalue("anvil"))


@pytest.fixture
def anvil_chain(anvil: LocalChain) -> Iterator[LocalChain]:
    """The session's anvil, for anvil-only tests, rolled back afterwards."""
    yield from rolled_back(anvil)


def rolled_back(anvil: LocalChain) -> Iterator[LocalChain]:
    snapshot = anvil.snapshot()
    try:
        yield anvil
    finally:
        anvil.set_automine(True)
        anvil.revert(snapshot)


@pytest.fixture
def w3(dev_chain: DevChain) -> Web3:
    return dev_chain.w3()


@pytest.fixture
def alice(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.accounts[0]


@pytest.fixture
def bob(dev_chain: DevChain) -> LocalAccount:
    return dev_chain.accounts[1]


@pytest.fixture
def sender(w3: Web3, alice: LocalAccount) -> TxSender:
    return TxSender(w3, alice, receipt_timeout_s=10)


@pytest.fixture
def init_code_for() -> Callable[[bytes], bytes]:
    """Init code that deploys the given runtime code (for a web3 contract factory)."""
    return deployment_code


@pytest.fixture
def deploy_code(sender: TxSender) -> Callable[[bytes], str]:
    """Deploy a contract whose runtime code is the given bytes; returns its address."""

    def deploy(runtime: bytes) -> str:
        receipt = sender.send({"data": deployment_code(runtime)})
        return str(receipt["contractAddress"])

    return deploy


@pytest.fixture
def deploy_reverter(deploy_code: Callable[[bytes], str]) -> Callable[[bytes], str]:
    """Deploy a contract that reverts every call with the given revert data."""

    def deploy(revert_data: bytes) -> str:
        return deploy_code(reverting_code(revert_data))

    return deploy


def deployment_code(runtime: bytes) -> bytes:
    """Init code that returns ``runtime``: CODECOPY it to memory 0 and RETURN it."""
    prefix_length = 13
    init = (
        b"\x61" + len(runtime).to_bytes(2, "big")  # PUSH2 size
        + b"\x80"  # DUP1
        + b"\x61" + prefix_length.to_bytes(2, "big")  # PUSH2 offset of runtime in the code
        + b"\x60\x00\x39"  # PUSH1 0, CODECOPY(dest=0, offset, size)
        + b"\x60\x00\xf3"  # PUSH1 0, RETURN(0, size)
    )  # fmt: skip
    assert len(init) == prefix_length
    return init + runtime


def reverting_code(revert_data: bytes) -> bytes:
    """Runtime code that reverts with ``revert_data`` whatever it is called with."""
    prefix_length = 15
    size = len(revert_data).to_bytes(2, "big")
    code = (
        b"\x61" + size  # PUSH2 size
        + b"\x61" + prefix_length.to_bytes(2, "big")  # PUSH2 offset of the data in the code
        + b"\x60\x00\x39"  # PUSH1 0, CODECOPY(dest=0, offset, size)
        + b"\x61" + size + b"\x60\x00\xfd"  # PUSH2 size, PUSH1 0, REVERT(0, size)
    )  # fmt: skip
    assert len(code) == prefix_length
    return code + revert_data
