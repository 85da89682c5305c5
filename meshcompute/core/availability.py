"""When a worker that yields to its owner may work (``mesh worker start --when idle``,
``--hours 23:00-07:00``): pure decisions over what the machine reports.

:func:`decide` takes the owner's signals (:class:`OwnerSignals`: load from other processes,
seconds since the last keyboard or mouse input where the system reports it, other processes on
the GPU, running on battery) and the schedule, and answers :class:`Availability`:

- ``outside_hours``: a schedule is set and the local time is not in it;
- ``paused_for_owner``: the owner is using the machine (any one signal is enough), or asked
  the worker to pause (``mesh worker pause``, in any mode);
- ``active``: work may run.

A signal the system does not report (None) says nothing either way. The node freezes its
running jobs when the answer stops being ``active`` and thaws them when it comes back; the
thresholds are deliberately eager to yield, since an owner who is disturbed stops providing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshcompute.errors import BadInput

ACTIVE = "active"
PAUSED = "paused_for_owner"
OUTSIDE = "outside_hours"

#: Load from other processes (in CPUs busy) above which the owner is using the machine.
OTHER_LOAD_CPUS = 0.5
#: Input more recent than this means someone is at the keyboard.
INPUT_IDLE_S = 120.0

_HOURS = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)-([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Schedule:
    """Daily hours in local time, ``start`` to ``end`` in minutes after midnight; a window
    that ends before it starts runs over midnight (23:00-07:00)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Schedule:
        match = _HOURS.match(text.strip())
        if match is None:
            raise BadInput(f"--hours must look like 23:00-07:00, got {text!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise BadInput(f"--hours {text!r} is empty: give a start and an end that differ")
        return cls(h1 * 60 + m1, h2 * 60 + m2)

    def contains(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def __str__(self) -> str:
        return (f"{self.start // 60:02d}:{self.start % 60:02d}-"
                f"{self.end // 60:02d}:{self.end % 60:02d}")


@dataclass(frozen=True)
class OwnerSignals:
    other_load: float | None = None
    """CPUs kept busy by processes other than the worker and its jobs (a moving average)."""
    input_idle_s: float | None = None
    """Seconds since the last keyboard or mouse input."""
    gpu_other_processes: int | None = None
    """Processes on the GPU that are not the worker's."""
    on_battery: bool | None = None
    paused_by_owner: bool | None = None
    """The owner asked the worker to pause (``mesh worker pause``), whatever the mode."""


@dataclass(frozen=True)
class Availability:
    state: str
    reason: str

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


def decide(signals: OwnerSignals, *, when_idle: bool, schedule: Schedule | None,
           minute_of_day: int, other_load_cpus: float = OTHER_LOAD_CPUS) -> Availability:
    """Whether the worker may work now (see the module's docstring); ``other_load_cpus``
    is the load from other processes above which the owner is using the machine."""
    if signals.paused_by_owner:
        return Availability(PAUSED, "paused by its owner (mesh worker resume)")
    if schedule is not None and not schedule.contains(minute_of_day):
        return Availability(OUTSIDE, f"outside the hours {schedule}")
    if when_idle:
        if signals.on_battery:
            return Availability(PAUSED, "running on battery")
        if signals.input_idle_s is not None and signals.input_idle_s < INPUT_IDLE_S:
            return Availability(PAUSED, f"input {signals.input_idle_s:.0f} s ago")
        if signals.gpu_other_processes:
            return Availability(PAUSED, f"{signals.gpu_other_processes} other process(es) on "
                                        "the GPU")
        if signals.other_load is not None and signals.other_load > other_load_cpus:
            return Availability(PAUSED, f"other programs keep {signals.other_load:.1f} CPUs "
                                        "busy")
    return Availability(ACTIVE, "idle" if when_idle else "working")
