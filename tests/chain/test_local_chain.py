"""LocalChain runs and stops anvil processes cleanly."""

from __future__ import annotations

import os
import socket
import time

import pytest

from meshcompute.chain.local import LOOPBACK, LocalChain, resolve_anvil_binary
from meshcompute.errors import ChainUnavailable
from meshcompute.settings import get_settings

pytestmark = [pytest.mark.anvil, pytest.mark.usefixtures("anvil_binary")]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def test_start_answers_rpc_with_funded_dev_accounts():
    with LocalChain() as chain:
        w3 = chain.w3()
        assert w3.eth.chain_id == 31337
        assert chain.rpc_url.startswith(f"http://{LOOPBACK}:")
        assert [a.address for a in chain.accounts] == w3.eth.accounts
        assert w3.eth.get_balance(chain.accounts[0].address) > 0


def test_stop_ends_process_and_frees_port():
    chain = LocalChain().start()
    pid, port = chain.pid, chain.port
    assert pid is not None and port is not None
    assert process_exists(pid)

    chain.stop()

    assert not process_exists(pid)
    assert port_is_free(port)
    assert not chain.is_running()
    chain.stop()  # idempotent


def test_two_chains_run_at_once():
    with LocalChain() as first, LocalChain() as second:
        assert first.port != second.port
        first.mine(3)
        assert first.w3().eth.block_number == 3
        assert second.w3().eth.block_number == 0


def test_start_failure_reports_stderr():
    chain = LocalChain(extra_args=("--no-such-flag",), startup_timeout_s=5)

    with pytest.raises(ChainUnavailable, match="no-such-flag") as failed:
        chain.start()

    assert "exited with code" in str(failed.value)
    assert not chain.is_running()


def test_start_missing_binary_is_chain_unavailable(tmp_path):
    with pytest.raises(ChainUnavailable, match="cannot run anvil"):
        LocalChain(anvil_path=str(tmp_path / "no-anvil")).start()


def test_block_time_mines_without_transactions():
    with LocalChain(block_time_s=0.2) as chain:
        start = chain.w3().eth.block_number
        time.sleep(0.7)
        assert chain.w3().eth.block_number >= start + 2


def test_npm_wrapper_resolves_to_native_binary():
    resolved = resolve_anvil_binary(get_settings().anvil_path)
    assert os.access(resolved, os.X_OK)
    assert not resolved.endswith(".mjs")
