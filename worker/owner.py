"""The machine's owner, as a worker that yields to them sees it (``--when idle``, ``--hours``).

:class:`OwnerWatch` reads the signals of :mod:`meshcompute.core.availability` on Linux, as an
ordinary user (no root):

- other load: the CPUs busy in ``/proc/stat`` less those the worker's own process tree (its jobs
  included) used over the same interval, both from ``/proc``;
- input idle time: ``xprintidle`` where it is installed (an X session); otherwise unknown;
- other processes on the GPU: ``nvidia-smi --query-compute-apps`` less the worker's own;
- on battery: ``/sys/class/power_supply`` (a battery discharging and no mains online).

:class:`Freezer` stops the worker's job processes (``SIGSTOP`` to each sandbox and job
process below the worker; their memory stays, nothing is lost) and lets them go on
(``SIGCONT``). Processes are named by pid and start time, so a pid reused meanwhile is never
signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from meshcompute.core.availability import (
    OTHER_LOAD_CPUS,
    Availability,
    OwnerSignals,
    Schedule,
    decide,
)

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: The shortest interval a load sample is measured over: the kernel counts CPU time in
#: ticks (10 ms), so a shorter one reads a busy machine as idle half the time.
_MIN_SAMPLE_S = 0.25


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, start time, CPU ticks) of ``pid``, None once it is gone. The ticks are its
    own (utime, stime) and those of its children it has reaped (cutime, cstime), so a job
    process that ended stays counted as the worker's, never as another program's load."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    return int(fields[1]), int(fields[19]), sum(int(f) for f in fields[11:15])


def run_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, tuple[int, int]]:
    """Every process below ``root``: pid -> (start time, cpu ticks)."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            info[int(entry.name)] = (stat[1], stat[2])
    found: dict[int, tuple[int, int]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in info and pid not in found:
            found[pid] = info[pid]
            todo += children.get(pid, [])
    return found


def _busy_ticks() -> int | None:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return user + nice + system + irq + softirq + steal


def _input_idle_s() -> float | None:
    tool = shutil.which("xprintidle")
    if tool is None or not os.environ.get("DISPLAY"):
        return None
    try:
        out = subprocess.run([tool], capture_output=True, text=True, timeout=2, check=True)
        return int(out.stdout.strip()) / 1000.0
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


def _gpu_pids() -> set[int] | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return {int(line) for line in out.stdout.split() if line.strip().isdigit()}


def _on_battery(root: Path = Path("/sys/class/power_supply")) -> bool | None:
    try:
        supplies = list(root.iterdir())
    except OSError:
        return None
    mains = discharging = False
    for supply in supplies:
        kind = _read(supply / "type")
        if kind in ("Mains", "USB", "USB_C") and _read(supply / "online") == "1":
            mains = True
        if kind == "Battery" and _read(supply / "status") == "Discharging":
            discharging = True
    if not mains and not discharging:
        return None if not supplies else False
    return discharging and not mains


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _minute_of_day(now: time.struct_time) -> int:
    return now.tm_hour * 60 + now.tm_min


@dataclass
class OwnerWatch:
    """The owner's signals, sampled at most every ``every_s``, and what they decide."""

    when_idle: bool
    schedule: Schedule | None
    pause_file: Path | None = None
    """While this file exists the owner has asked the worker to pause."""
    other_load_cpus: float = OTHER_LOAD_CPUS
    pid: int = field(default_factory=os.getpid)
    every_s: float = 0.5
    clock: Callable[[], float] = time.monotonic
    local_minute: Callable[[], int] = field(default=lambda: _minute_of_day(time.localtime()))
    _last: tuple[float, int, int] | None = None
    _load: float | None = None
    _answer: Availability | None = None
    _answered_at: float = -1e9

    def signals(self) -> OwnerSignals:
        now = self.clock()
        busy = _busy_ticks()
        ours = _stat(self.pid)
        below = descendants(self.pid)  # one walk of /proc per sample
        own = (ours[2] if ours else 0) + sum(t for _, t in below.values())
        if busy is not None and self._last is not None and now - self._last[0] >= _MIN_SAMPLE_S:
            elapsed = now - self._last[0]
            other = (busy - self._last[1]) - max(0, own - self._last[2])
            load = max(0.0, other / _TICK / elapsed)
            self._load = load if self._load is None else 0.5 * self._load + 0.5 * load
        if busy is not None and (self._last is None or now - self._last[0] >= _MIN_SAMPLE_S):
            self._last = (now, busy, own)
        gpu = _gpu_pids()
        mine = set(below) | {self.pid}
        return OwnerSignals(other_load=self._load, input_idle_s=_input_idle_s(),
                            gpu_other_processes=None if gpu is None else len(gpu - mine),
                            on_battery=_on_battery())

    def availability(self) -> Availability:
        now = self.clock()
        if self._answer is None or now - self._answered_at >= self.every_s:
            signals = self.signals() if self.when_idle else OwnerSignals()
            if self.pause_file is not None and self.pause_file.exists():
                signals = replace(signals, paused_by_owner=True)
            self._answer = decide(signals, when_idle=self.when_idle, schedule=self.schedule,
                                  minute_of_day=self.local_minute(),
                                  other_load_cpus=self.other_load_cpus)
            self._answered_at = now
        return self._answer


def is_job_process(pid: int) -> bool:
    """A sandbox (``bwrap``) or a job process (``python -m meshcompute.execution...``): what
    the worker starts to run jobs, and nothing else it may have below it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"bwrap" or any(
        a.startswith(b"meshcompute.execution.") for a in argv)


@dataclass
class Freezer:
    """Stops and resumes the job processes below ``pid`` (the worker's)."""

    pid: int = field(default_factory=os.getpid)
    frozen: dict[int, int] = field(default_factory=dict)
    """pid -> start time of the processes this freezer stopped."""

    @property
    def active(self) -> bool:
        return bool(self.frozen)

    def freeze(self) -> int:
        """Stop every job process below ``pid`` (again, for any started since); returns how
        many are stopped."""
        sent = []
        for pid, (born, _) in descendants(self.pid).items():
            if pid not in self.frozen and is_job_process(pid) \
                    and send_signal(pid, born, signal.SIGSTOP):
                self.frozen[pid] = born
                sent.append(pid)
        give_up = time.monotonic() + 1.0  # the signal is delivered asynchronously
        while sent and time.monotonic() < give_up:
            sent = [pid for pid in sent if run_state(pid) not in ("T", "t", "Z", "X", None)]
            if sent:
                time.sleep(0.01)
        return len(self.frozen)

    def thaw(self) -> int:
        count = 0
        for pid, born in self.frozen.items():
            count += send_signal(pid, born, signal.SIGCONT)
        self.frozen.clear()
        return count


def send_signal(pid: int, born: int, sig: int) -> bool:
    stat = _stat(pid)
    if stat is None or stat[1] != born:
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
