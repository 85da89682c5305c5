"""A throwaway anvil node on a loopback port, for development, demos and tests.

    with LocalChain() as chain:
        w3 = chain.w3()
        alice = chain.accounts[0]

The node runs in its own process group, so stopping it also stops the native binary behind
npm's ``node_modules/.bin/anvil`` wrapper; an ``atexit`` hook stops nodes a caller forgot.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Self

from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from meshcompute.chain.connect import node_web3
from meshcompute.chain.devchain import DEV_ACCOUNT_COUNT, DevChain
from meshcompute.errors import ChainUnavailable
from meshcompute.settings import DEV_MNEMONIC, get_settings
from meshcompute.tether import tether
from meshcompute.units import DEV_CHAIN_ID

LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 3
_POLL_INTERVAL_S = 0.02


class LocalChain(DevChain):
    """An anvil process with the dev mnemonic's funded accounts.

    ``block_time_s=None`` mines one block per transaction (automine); a number mines on that
    interval instead. Nothing runs until :meth:`start` (or ``with``).
    """

    def __init__(
        self,
        *,
        anvil_path: str | None = None,
        mnemonic: str = DEV_MNEMONIC,
        chain_id: int = DEV_CHAIN_ID,
        block_time_s: float | None = None,
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.anvil_path = anvil_path or get_settings().anvil_path
        self.mnemonic = mnemonic
        self.chain_id = chain_id
        self.block_time_s = block_time_s
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = extra_args
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._w3: Web3 | None = None

    def __repr__(self) -> str:
        state = f"running at {self.rpc_url}" if self.is_running() else "stopped"
        return f"<LocalChain chain_id={self.chain_id} {state}>"

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise ChainUnavailable("LocalChain is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start anvil and wait until it answers ``eth_chainId``; no-op when running."""
        if self.is_running():
            return self
        failure = ""
        for _ in range(_PORT_ATTEMPTS):
            self._launch(_free_loopback_port())
            failure = self._wait_until_ready()
            if not failure:
                atexit.register(self.stop)
                return self
            lost_port_race = "address already in use" in failure.lower()
            self.stop()
            if not lost_port_race:
                break
        raise ChainUnavailable(failure)

    def __enter__(self) -> Self:
        return self.start()

    def stop(self) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL after ``stop_timeout_s``). Idempotent."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            _stop_process_group(process, self.stop_timeout_s)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._w3 = None
        self.port = None

    def w3(self) -> Web3:
        if self._w3 is None:
            self._w3 = node_web3(self.rpc_url)
        return self._w3

    def mine(self, blocks: int = 1) -> None:
        self._rpc("anvil_mine", [blocks])

    def increase_time(self, seconds: int) -> None:
        self._rpc("evm_increaseTime", [seconds])
        self._rpc("evm_mine", [])

    def snapshot(self) -> int:
        return int(self._rpc("evm_snapshot", []), 16)

    def revert(self, snapshot_id: int) -> None:
        if not self._rpc("evm_revert", [hex(snapshot_id)]):
            raise ChainUnavailable(f"anvil has no snapshot {snapshot_id}")

    def set_automine(self, enabled: bool) -> None:
        self._rpc("evm_setAutomine", [enabled])

    def _command(self, port: int) -> list[str]:
        command = [
            resolve_anvil_binary(self.anvil_path),
            "--host", LOOPBACK,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--mnemonic", self.mnemonic,
            "--accounts", str(DEV_ACCOUNT_COUNT),
            "--silent",
        ]  # fmt: skip
        if self.block_time_s is not None:
            command += ["--block-time", f"{self.block_time_s:g}"]
        return command + list(self.extra_args)

    def _launch(self, port: int) -> None:
        self._stderr = tempfile.TemporaryFile(prefix="anvil-stderr-")  # noqa: SIM115 - closed in stop()
        try:
            self._process = subprocess.Popen(
                self._command(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            raise ChainUnavailable(f"cannot run anvil at {self.anvil_path!r}: {exc}") from exc
        tether(self._process.pid, group=True)
        self.port = port

    def _wait_until_ready(self) -> str:
        """Poll until the node answers; returns "" when ready, else why it is not."""
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return (
                    f"anvil exited with code {self._process.returncode} during startup"
                    f"{self._captured_stderr()}"
                )
            if _answers_chain_id(self.port, self.chain_id):
                return ""
            time.sleep(_POLL_INTERVAL_S)
        return (
            f"anvil did not answer on {self.rpc_url} within {self.startup_timeout_s:g} s"
            f"{self._captured_stderr()}"
        )

    def _captured_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f"; stderr:\n{text}" if text else "; no stderr output"


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _answers_chain_id(port: int, expected: int) -> bool:
    """One cheap ``eth_chainId`` round trip, with no retries (web3's would slow polling)."""
    provider = HTTPProvider(
        f"http://{LOOPBACK}:{port}",
        request_kwargs={"timeout": 1},
        exception_retry_configuration=None,
    )
    try:
        response = provider.make_request(RPCEndpoint("eth_chainId"), [])
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return False
    result = response.get("result")
    return isinstance(result, str) and int(result, 16) == expected


def resolve_anvil_binary(path: str) -> str:
    """The native anvil behind npm's ``node_modules/.bin/anvil`` wrapper, else ``path``.

    Running the binary directly skips a node start (~100 ms) and leaves one process to stop.
    """
    wrapper = Path(shutil.which(path) or path).resolve()
    if wrapper.suffix not in {".mjs", ".js"}:
        return path
    for candidate in sorted(wrapper.parent.parent.glob("anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return path


def _stop_process_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group, escalate to SIGKILL, reap the leader, and wait for the
    rest of the group (a wrapper's child) to go as well."""
    group = process.pid
    _signal_group(group, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(group, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + timeout_s
    while _signal_group(group, 0) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True
