"""How one worker node behaves: ``MESH_WORKER_*`` settings, overridden by CLI flags."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from meshcompute.core.availability import OTHER_LOAD_CPUS, Schedule
from meshcompute.errors import BadInput, ConfigError
from meshcompute.settings import Settings
from meshcompute.units import parse_mesh


def parse_price(mesh: str | float | Decimal) -> int:
    """A MESH amount (decimal, e.g. ``"0.5"``) in wei; ConfigError when it is not one."""
    try:
        return parse_mesh(mesh, what="worker price (MESH_WORKER_PRICE, --price)",
                          allow_zero=True)
    except BadInput as exc:
        raise ConfigError(str(exc)) from None


#: In the worker's data folder: while it exists the worker pauses (``mesh worker pause``).
PAUSE_FILE = "worker.pause"


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker node behaves (``MESH_WORKER_*`` settings, overridden by CLI flags)."""

    market_url: str
    slots: int = 1
    threads: int = 1
    price_wei: int = 0
    operator: str | None = None
    scratch_dir: Path | None = None
    allow_unsandboxed: bool = False
    json_logs: bool = False
    poll_interval_s: float = 1.0
    grace_s: float = 30.0
    audit_poll_s: float = 5.0
    """Seconds between reads of the chain for this node's committed jobs (audits, payments)."""
    earnings_poll_s: float = 10.0
    health_path: Path | None = None
    """Where the heartbeat thread writes the health record ``mesh worker health`` reads."""
    probe_stability: bool = False
    """Probe each new program (per program, input layout and tolerance) before committing, as
    an audit would, and hand back unpaid, without penalty, a job unstable under its tolerance
    (:mod:`meshcompute.worker.probe`; about two extra runs per new program)."""
    when_idle: bool = False
    """Work only while the owner is not using the machine (``--when idle``:
    :mod:`meshcompute.core.availability`); running jobs are frozen while they are."""
    hours: Schedule | None = None
    """Work only within these daily hours (``--hours 23:00-07:00``, local time)."""
    hand_back_margin_s: float = 10.0
    """A frozen job is handed back when its lease has less than this left."""
    pause_file: Path | None = None
    """While this file exists the worker works as if its owner were using the machine
    (``mesh worker pause`` creates it, ``mesh worker resume`` removes it)."""
    idle_load_cpus: float = OTHER_LOAD_CPUS
    """``--when idle``: load from other processes, in CPUs, above which the owner is using
    the machine (``--idle-load``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 64:
            raise ConfigError(f"worker slots must be in 1..64, got {self.slots}")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"worker threads must be in 1..256, got {self.threads}")
        if self.price_wei < 0:
            raise ConfigError("worker price must be >= 0")
        if self.poll_interval_s <= 0:
            raise ConfigError("worker poll interval must be positive")
        if not 0 < self.idle_load_cpus <= 4096:
            raise ConfigError(f"--idle-load must be a positive number of CPUs, got "
                              f"{self.idle_load_cpus}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WorkerConfig:
        """The settings' worker block; ``overrides`` that are None are ignored."""
        values: dict[str, Any] = {
            "market_url": settings.market_url,
            "slots": settings.worker_slots,
            "threads": settings.worker_threads,
            "price_wei": parse_price(settings.worker_price),
            "operator": settings.worker_operator,
            "scratch_dir": (
                settings.worker_scratch_dir.expanduser() if settings.worker_scratch_dir else None
            ),
            "allow_unsandboxed": settings.worker_allow_unsandboxed,
            "json_logs": settings.worker_json_logs,
            "poll_interval_s": settings.worker_poll_interval_s,
            "grace_s": settings.worker_grace_s,
            "health_path": settings.data_dir / "worker-health.json",
            "probe_stability": settings.worker_probe_stability,
            "pause_file": settings.data_dir / PAUSE_FILE,
            "idle_load_cpus": settings.worker_idle_load_cpus,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
