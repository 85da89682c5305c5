"""Processes that die with the process that started them, however it dies (even SIGKILL).

The dev stack, ``mesh demo``, ``mesh chain up`` and the tests start anvil, Valkey, the market,
workers and verifiers as separate processes, most in sessions of their own (so a Ctrl-C in a
terminal reaches only the parent, which stops them in order). A parent that is killed outright
runs no cleanup code, so each started process is *tethered*: :func:`tether` hands its pid to a
small reaper process (one per parent process, started on first use). The reaper holds the read
end of a pipe whose write end only the parent holds; when the parent dies, for any reason, the
kernel closes that end, the reaper reads end-of-file, and it stops every process (or process
group) still registered: SIGTERM, a short grace, then SIGKILL.

A process the parent stopped itself is simply found gone: the reaper checks each pid's start
time before signalling, so a reused pid is never hit.

    process = subprocess.Popen(argv, start_new_session=True)
    tether(process.pid, group=True)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

_REAPER = r"""
import os, signal, sys, time

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None

def send(pid, group, born, sig):
    try:
        if group:
            if born is None or start_time(pid) in (None, born):
                os.killpg(pid, sig)
                return True
        elif start_time(pid) == born:
            os.kill(pid, sig)
            return True
    except (ProcessLookupError, PermissionError):
        pass
    return False

signal.signal(signal.SIGINT, signal.SIG_IGN)
tethered = {}
for line in sys.stdin.buffer:
    parts = line.split()
    if len(parts) == 4 and parts[0] == b"add":
        tethered[int(parts[1])] = (parts[2] == b"1", parts[3] if parts[3] != b"-" else None)
    elif len(parts) == 2 and parts[0] == b"drop":
        tethered.pop(int(parts[1]), None)
def running(pid, group, born):
    return send(pid, group, born, 0) if group else start_time(pid) == born

alive = {pid: entry for pid, entry in tethered.items() if send(pid, *entry, signal.SIGTERM)}
deadline = time.monotonic() + 3.0
while alive and time.monotonic() < deadline:
    time.sleep(0.05)
    alive = {pid: entry for pid, entry in alive.items() if running(pid, *entry)}
for pid, entry in alive.items():
    send(pid, *entry, signal.SIGKILL)
"""

_lock = threading.Lock()
_reaper: subprocess.Popen[bytes] | None = None
_reaper_owner = 0


def _start_time(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _send(line: str) -> None:
    global _reaper, _reaper_owner
    with _lock:
        if _reaper is None or _reaper_owner != os.getpid() or _reaper.poll() is not None:
            _reaper = subprocess.Popen(
                [sys.executable, "-I", "-c", _REAPER], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                start_new_session=True,
            )
            _reaper_owner = os.getpid()
        assert _reaper.stdin is not None
        _reaper.stdin.write(line.encode() + b"\n")
        _reaper.stdin.flush()


def tether(pid: int, *, group: bool = False) -> None:
    """Stop ``pid`` (its whole process group with ``group``: the pid must lead it, as after
    ``start_new_session=True``) when this process dies, however it dies."""
    born = _start_time(pid)
    _send(f"add {pid} {1 if group else 0} {born.decode() if born else '-'}")

