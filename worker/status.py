"""What a person (or a log collector) sees while a worker runs.

The node reports everything it does as events: small dicts with an ``event`` name, a ``ts``
(unix seconds) and the fields of that event (``job_id``, ``phase``, ``reason``...). Two sinks
consume them:

- :class:`LiveStatus`: a rich table redrawn in place on a terminal (current jobs with their
  phase and elapsed time, totals, earnings read from the chain, the last problem);
- :class:`JsonLogSink`: one JSON object per line (``--json-logs``) in the schema every service
  logs in (:mod:`meshcompute.logs`), for machines.

Events never carry key material; both sinks also drop any field whose name suggests a secret.
The node writes a small health record on every heartbeat
(:func:`meshcompute.health.write_health`) that ``mesh worker health`` reads (:func:`check_health`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from meshcompute.logs import json_line, redact
from meshcompute.units import TOKEN

Event = dict[str, Any]
EventSink = Callable[[Event], None]

#: Phases of a job on this worker, in order.
PHASES = ("leased", "downloading", "running", "probing", "uploading", "committing")
"""``probing`` only with ``--probe-stability``, the first time a program is seen."""

#: Events that are problems, logged at their own level; every other event is ``info``.
_PROBLEMS = ("warning", "error")


class JsonLogSink:
    """One JSON object per event, one per line, flushed (``--json-logs``)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        fields = dict(event)
        name = str(fields.pop("event", ""))
        ts = fields.pop("ts", None)
        line = json_line("worker", name, fields, ts=ts,
                         level=name if name in _PROBLEMS else "info")
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


@dataclass
class JobRow:
    job_id: int
    phase: str
    device: str
    started: float
    phase_since: float


@dataclass
class StatusBoard:
    """The worker's state as the events describe it (thread-safe)."""

    address: str = ""
    market: str = ""
    state: str = "starting"
    jobs: dict[int, JobRow] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    lost: int = 0
    handed_back: int = 0
    """Jobs handed back unpaid, without penalty, as unstable under their tolerance."""
    probing: bool | None = None
    """Whether the stability probe is on (None: not said yet)."""
    appealed: int = 0
    slashed: int = 0
    earned_wei: int | None = None
    withdrawable_wei: int | None = None
    last_problem: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply(self, event: Event) -> None:
        name = event.get("event")
        now = time.monotonic()
        job_id = event.get("job_id")
        with self._lock:
            if name == "started":
                self.address = str(event.get("address", ""))
                self.market = str(event.get("market", ""))
                self.state = "starting"
            elif name == "registered":
                self.state = "running"
            elif name == "stopping":
                self.state = "stopping"
            elif name == "stopped":
                self.state = "stopped"
            elif name == "phase" and isinstance(job_id, int):
                row = self.jobs.get(job_id)
                phase = str(event.get("phase"))
                if row is None:
                    device = str(event.get("device", "cpu"))
                    self.jobs[job_id] = JobRow(job_id, phase, device, now, now)
                else:
                    row.phase, row.phase_since = phase, now
            elif name == "stability_probe_config":
                self.probing = bool(event.get("enabled"))
            elif name == "availability" and self.state not in ("stopping", "stopped"):
                state = str(event.get("state"))
                self.state = "running" if state == "active" else (
                    f"{state.replace('_', ' ')}: {event.get('reason', '')}")
            elif name in ("job_done", "job_failed", "job_released", "commit_reverted",
                          "job_abandoned", "job_handed_back"):
                if isinstance(job_id, int):
                    self.jobs.pop(job_id, None)
                if name == "job_done":
                    self.done += 1
                elif name == "job_failed":
                    self.failed += 1
                    self.last_problem = f"job {job_id} failed: {event.get('reason', '')}"
                elif name == "job_handed_back":
                    self.handed_back += 1
                    self.last_problem = f"job {job_id} handed back: {event.get('reason', '')}"
                elif name == "commit_reverted":
                    self.lost += 1
                    self.last_problem = f"job {job_id} commit reverted: {event.get('error', '')}"
            elif name == "appealed":
                self.appealed += 1
            elif name == "slashed":
                self.slashed += 1
            elif name == "earnings":
                self.earned_wei = int(event.get("earned_wei", 0))
                self.withdrawable_wei = int(event.get("withdrawable_wei", 0))
            elif name in ("error", "warning"):
                self.last_problem = str(event.get("message", ""))

    def render(self) -> Group:
        with self._lock:
            now = time.monotonic()
            head = Text.assemble(
                ("mesh worker ", "bold"),
                (self.address, "cyan"),
                f"  market {self.market}  ",
                (self.state, "green" if self.state == "running" else "yellow"),
                "" if self.probing is None else
                f"  stability probe {'on' if self.probing else 'off'}",
            )
            table = Table(expand=False, header_style="bold")
            for column in ("job", "device", "phase", "in phase", "elapsed"):
                table.add_column(column, justify="right" if column != "phase" else "left")
            for row in sorted(self.jobs.values(), key=lambda r: r.job_id):
                table.add_row(
                    str(row.job_id),
                    row.device,
                    row.phase,
                    f"{now - row.phase_since:.1f} s",
                    f"{now - row.started:.1f} s",
                )
            if not self.jobs:
                table.add_row("-", "", "waiting for work", "", "")
            earned = _mesh(self.earned_wei)
            withdrawable = _mesh(self.withdrawable_wei)
            totals = Text(
                f"done {self.done}  failed {self.failed}  handed back {self.handed_back}  "
                f"lost {self.lost}  "
                f"appealed {self.appealed}  slashed {self.slashed}  "
                f"earned {earned} MESH (withdrawable {withdrawable})"
            )
            parts: list[Any] = [head, table, totals]
            if self.last_problem:
                parts.append(Text(f"last problem: {self.last_problem}", style="red"))
            return Group(*parts)


def _mesh(wei: int | None) -> str:
    if wei is None:
        return "?"
    return f"{wei / TOKEN:,.4f}"


class LiveStatus:
    """A rich live view of a :class:`StatusBoard`; use as a context manager and as the sink."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4) -> None:
        self.board = StatusBoard()
        self._console = console or Console()
        self._live = Live(
            get_renderable=self.board.render,
            console=self._console,
            refresh_per_second=refresh_per_second,
            transient=False,
        )

    def __call__(self, event: Event) -> None:
        self.board.apply(redact(event))

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)


# ---------------------------------------------------------------------- health file
def check_health(path: Path, *, now: float | None = None) -> tuple[bool, str]:
    """Whether the worker behind ``path`` heartbeated recently; with a one-line reason."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        last = float(info["last_heartbeat"])
        lease_s = float(info.get("lease_s", 60))
    except FileNotFoundError:
        return False, f"no health record at {path}: is `mesh worker start` running?"
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"health record {path} is malformed ({exc!r})"
    age = (time.time() if now is None else now) - last
    if info.get("state") == "stopped":
        return False, "the worker has stopped"
    limit = max(3 * lease_s, 30.0)
    if age > limit:
        return False, f"last heartbeat {age:.0f} s ago (more than {limit:.0f} s)"
    return True, f"ok: last heartbeat {age:.0f} s ago, {info.get('running', 0)} job(s) running"
