"""The README is tested: its one-machine path and "Post a job" run literally, as a newcomer types
them, and the job must end verified and paid, with `mesh earnings` showing it.

The blocks are the ones marked ``<!-- readme-test: STAGE -->`` (:mod:`tests.e2e.readme_blocks`):
``one-machine`` (Deploy: chain, market, verifiers, worker), ``post-a-job`` (make the program and
inputs, submit, follow) and ``paid`` (the worker's earnings). Each command runs as its own
``bash -c`` process, in order, in one fresh folder, as in one shell: what a command exports
reaches the next ones (as ``export`` does in the newcomer's shell), nothing else carries over.
The environment is only what a newcomer has: ``PATH`` with ``.venv/bin`` first (the venv
activated), a fresh ``HOME`` (so ``~/.mesh`` is empty) and the locale, with one exception: the
market's port (``MESH_MARKET_PORT`` / ``MESH_MARKET_URL``) is a free one instead of 8000, so the
test never meets a market already running here. A line ending in ``&`` starts in the background,
in a session of its own tethered to this process (:mod:`meshcompute.tether`), so nothing
outlives the test even when it is killed; the test waits (polling, never a blind sleep) until
that service is up before the next line, as a person watching its log would. Every wait and every
command has a deadline; a failure names the command and shows the end of every service's log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from meshcompute.tether import tether
from tests.e2e.readme_blocks import Command, readme_commands

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
STAGES = ("one-machine", "post-a-job", "paid")
STEP_TIMEOUT_S = 120.0
"""Deadline of each command and of each service's start."""
LONG_STEPS = {re.compile(r"\bmesh job submit\b"): 300.0}
"""Commands that wait for a whole job (run, audit, challenge window, settlement)."""
STOP_GRACE_S = 15.0
TAIL_LINES = 25


# ------------------------------------------------------------------------------ the shell
@dataclass
class Background:
    command: Command
    process: subprocess.Popen[bytes]
    output: Path


@dataclass
class Shell:
    """One newcomer's shell, one process per command."""

    cwd: Path
    env: dict[str, str]
    logs: Path
    background: list[Background] = field(default_factory=list)
    outputs: list[tuple[Command, int, str, str]] = field(default_factory=list)

    # -- running
    def run(self, command: Command) -> None:
        if command.background:
            self.start(command)
            return
        state = self.logs / "env.state"
        state.unlink(missing_ok=True)
        if command.python:
            script, stdin = "python -", command.text
        else:
            # as in one shell: what the command exports (and where it cd's) reaches the next
            script = f'{command.text}\n__rc=$?\nenv -0 > "{state}"\nexit $__rc'
            stdin = ""
        step = len(self.outputs)
        out_path, err_path = self.logs / f"{step:02d}.out", self.logs / f"{step:02d}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = self._spawn(script, stdout=out, stderr=err, stdin=subprocess.PIPE)
            assert process.stdin is not None
            process.stdin.write(stdin.encode())
            process.stdin.close()
            deadline = time.monotonic() + _timeout(command)
            try:
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        self.fail(command, f"still running after {_timeout(command):.0f} s",
                                  out_path, err_path)
                    self.check_services(command, out_path, err_path)
                    time.sleep(0.2)
            finally:
                if process.poll() is None:  # timed out, or a service died meanwhile
                    _stop_group(process)
        rc = process.returncode
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        self.outputs.append((command, rc, stdout, stderr))
        if rc != 0:
            self.fail(command, f"exit status {rc}", out_path, err_path)
        if state.exists():
            self._take_env(state.read_bytes())

    def start(self, command: Command) -> None:
        probe = readiness_probe(command, self)
        output = self.logs / f"bg-{len(self.background):02d}.log"
        with output.open("wb") as log:
            process = self._spawn(command.text, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        self.background.append(Background(command, process, output))
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            self.check_services(command)
            problem = probe()
            if problem is None:
                return
            if time.monotonic() > deadline:
                self.fail(command, f"not up after {STEP_TIMEOUT_S:.0f} s: {problem}")
            time.sleep(0.3)

    def _spawn(self, script: str, **streams: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # type: ignore[call-overload]
            ["bash", "-c", script], cwd=self.cwd, env=self.env, start_new_session=True,
            **streams,
        )
        tether(process.pid, group=True)  # nothing outlives the test, even on SIGKILL
        return process

    def _take_env(self, dump: bytes) -> None:
        env = dict(
            item.decode().split("=", 1) for item in dump.split(b"\0") if b"=" in item
        )
        self.cwd = Path(env.get("PWD", self.cwd))
        for name in ("_", "SHLVL", "PWD", "OLDPWD"):
            env.pop(name, None)
        self.env = env

    # -- watching
    def check_services(self, during: Command, *outputs: Path) -> None:
        for service in self.background:
            if service.process.poll() is not None:
                self.fail(during, f"the background command `{service.command.text}` "
                                  f"exited with status {service.process.returncode}", *outputs)

    def fail(self, command: Command, why: str, *outputs: Path) -> None:
        tails = [(path, {".out": "its stdout", ".err": "its stderr"}.get(path.suffix, path.name))
                 for path in outputs]
        tails += [(s.output, f"background `{s.command.text}`") for s in self.background]
        tails += [(log, log.name) for log in sorted(self.cwd.glob("*.log"))]  # the README's logs
        parts = [f"{command}\n  {why}"] + [_tail(path, title) for path, title in tails]
        pytest.fail("\n".join(part for part in parts if part), pytrace=False)

    def stop(self) -> None:
        """SIGTERM every background command's process group, newest first; SIGKILL what is
        left after the grace (there is no `mesh chain down`: the chain stops on SIGTERM)."""
        for service in reversed(self.background):
            _signal_group(service.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for service in reversed(self.background):
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(service.process, signal.SIGKILL)  # the group's stragglers too
            service.process.wait()

    # -- what the README's commands printed
    def output_of(self, pattern: str) -> tuple[Command, str]:
        found = [(c, out) for c, _, out, _ in self.outputs if re.search(pattern, c.text)]
        assert found, f"the README ran no command matching {pattern!r}"
        return found[-1]


def _timeout(command: Command) -> float:
    return max([STEP_TIMEOUT_S] + [t for p, t in LONG_STEPS.items() if p.search(command.text)])


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _tail(path: Path, title: str) -> str:
    """The last lines of a log, headed by its title; empty when there is nothing to show."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return ""
    if not lines:
        return ""
    return f"--- {title} (last {len(lines)} lines) ---\n" + "\n".join(x[:400] for x in lines)


# ------------------------------------------------------------------------------ readiness
def _data_dir(env: dict[str, str]) -> Path:
    folder = env.get("MESH_DATA_DIR", "~/.mesh")
    return Path(env["HOME"] + folder[1:] if folder.startswith("~") else folder)


def _market_url(env: dict[str, str]) -> str:
    return env.get("MESH_MARKET_URL", "http://127.0.0.1:8000").rstrip("/")


def _get_json(url: str) -> dict | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _chain_probe(shell: Shell) -> Callable[[], str | None]:
    record = _data_dir(shell.env) / "chain.json"

    def probe() -> str | None:
        try:
            url = json.loads(record.read_text())["rpc_url"]
            httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
                                  "params": []}, timeout=2).raise_for_status()
        except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
            return f"no chain answering from {record} ({exc})"
        return None

    return probe


def _market_probe(shell: Shell) -> Callable[[], str | None]:
    url = _market_url(shell.env) + "/info"
    return lambda: None if _get_json(url) else f"no answer from {url}"


def _tasks_probe(shell: Shell) -> Callable[[], str | None]:
    url = _market_url(shell.env) + "/health"
    before = (_get_json(url) or {}).get("indexed_block", -1)

    def probe() -> str | None:
        indexed = (_get_json(url) or {}).get("indexed_block", -1)
        return None if indexed > before else f"the market's index is still at block {before}"

    return probe


def _verifier_probe(shell: Shell) -> Callable[[], str | None]:
    journals = _data_dir(shell.env) / "verifier"  # one journal per verifier, after its 1st poll
    before = len(list(journals.glob("*.json")))
    return lambda: (None if len(list(journals.glob("*.json"))) > before
                    else f"no new verifier journal in {journals}")


def _worker_probe(shell: Shell) -> Callable[[], str | None]:
    health = _data_dir(shell.env) / "worker-health.json"
    before = health.stat().st_mtime if health.exists() else 0.0
    return lambda: (None if health.exists() and health.stat().st_mtime > before
                    else f"no heartbeat in {health}")


PROBES: dict[str, Callable[[Shell], Callable[[], str | None]]] = {
    r"\bmesh chain up\b": _chain_probe,
    r"\bmesh market serve\b": _market_probe,
    r"\bmesh market tasks\b": _tasks_probe,
    r"\bmesh verifier start\b": _verifier_probe,
    r"\bmesh worker start\b": _worker_probe,
}


def readiness_probe(command: Command, shell: Shell) -> Callable[[], str | None]:
    """How to tell that a background command is up: a function returning None once it is,
    else what is still missing. Taken before the command starts (some compare with before)."""
    for pattern, make in PROBES.items():
        if re.search(pattern, command.text):
            return make(shell)
    raise AssertionError(f"{command}: the test does not know when this background command is "
                         "up; add a probe to PROBES in tests/e2e/test_readme.py")


# ------------------------------------------------------------------------------ the test
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _newcomer_env(home: Path) -> dict[str, str]:
    venv_bin = REPO / ".venv" / "bin"
    if not (venv_bin / "mesh").exists():
        venv_bin = Path(sys.executable).parent
    port = _free_port()
    env = {"HOME": str(home), "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           # the one difference from a newcomer's shell: a free port for the market
           "MESH_MARKET_PORT": str(port), "MESH_MARKET_URL": f"http://127.0.0.1:{port}"}
    for name in ("LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def test_readme_one_machine_path_ends_with_a_verified_paid_job(
    tmp_path: Path, anvil_binary: str
) -> None:
    from meshcompute.execution.sandbox import sandbox_available

    if not sandbox_available():
        pytest.skip("bubblewrap does not work here; the README's worker refuses to start")
    commands = readme_commands(README, STAGES)
    home, work, logs = tmp_path / "home", tmp_path / "work", tmp_path / "logs"
    for folder in (home, work, logs):
        folder.mkdir()
    shell = Shell(cwd=work, env=_newcomer_env(home), logs=logs)
    try:
        for command in commands:
            shell.run(command)

        # the job is paid: every shard finalized on chain, and verified by the verifier
        readme_status, _ = shell.output_of(r"\bmesh job status\b")
        name = re.search(r"\bmesh job status\s+(\S+)", readme_status.text)
        assert name is not None, readme_status
        status_cmd = Command("check", f"mesh job status {name[1]} --json")
        shell.run(status_cmd)
        shards = json.loads(shell.outputs[-1][2])["shards"]
        assert shards, "the submission has no shards"
        assert {s["state"] for s in shards} == {"finalized"}, shards
        # the chain audits a new worker at the deterrence rate, 100 % at the default collateral
        # (twice the reward): the verifier recomputed every shard before it was paid
        assert {s["verification"] for s in shards} == {"audited"}, shards

        # `mesh earnings --json`, as the README runs it for the worker, lists every shard paid
        earnings_cmd, stdout = shell.output_of(r"\bmesh earnings\b.*--json")
        report = json.loads(stdout)
        paid = {row["job_id"] for row in report["rows"] if row["status"] == "final"}
        job_ids = {s["job_id"] for s in shards}
        assert job_ids <= paid, f"{earnings_cmd}: jobs {sorted(job_ids - paid)} not paid"
    finally:
        shell.stop()
