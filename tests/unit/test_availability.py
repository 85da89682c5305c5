"""When a worker that yields to its owner may work (meshcompute.core.availability): any one
sign of the owner pauses it, unknown signs say nothing, and a schedule may run over
midnight."""

from __future__ import annotations

import pytest

from meshcompute.core.availability import (
    ACTIVE,
    OUTSIDE,
    PAUSED,
    OwnerSignals,
    Schedule,
    decide,
)
from meshcompute.errors import BadInput

IDLE = OwnerSignals(other_load=0.1, input_idle_s=900, gpu_other_processes=0, on_battery=False)


@pytest.mark.parametrize(("signals", "state", "reason"), [
    (IDLE, ACTIVE, "idle"),
    (OwnerSignals(), ACTIVE, "idle"),  # nothing known: nothing against working
    (OwnerSignals(other_load=1.5), PAUSED, "other programs keep 1.5 CPUs busy"),
    (OwnerSignals(input_idle_s=30), PAUSED, "input 30 s ago"),
    (OwnerSignals(gpu_other_processes=1), PAUSED, "1 other process(es) on the GPU"),
    (OwnerSignals(on_battery=True), PAUSED, "running on battery"),
])
def test_any_sign_of_the_owner_pauses_the_worker(signals: OwnerSignals, state: str,
                                                 reason: str) -> None:
    answer = decide(signals, when_idle=True, schedule=None, minute_of_day=0)
    assert (answer.state, answer.reason) == (state, reason)


def test_without_when_idle_only_the_hours_count() -> None:
    busy = OwnerSignals(other_load=4.0, input_idle_s=0, on_battery=True)
    assert decide(busy, when_idle=False, schedule=None, minute_of_day=0).active
    night = Schedule.parse("23:00-07:00")
    assert str(night) == "23:00-07:00"
    for minute, inside in ((23 * 60, True), (3 * 60, True), (7 * 60, False), (12 * 60, False)):
        answer = decide(IDLE, when_idle=True, schedule=night, minute_of_day=minute)
        assert answer.state == (ACTIVE if inside else OUTSIDE), minute
    assert Schedule.parse("9:30-17:00").contains(10 * 60)
    assert not Schedule.parse("9:30-17:00").contains(17 * 60)


@pytest.mark.parametrize("text", ["23-07", "25:00-07:00", "10:00-10:00", ""])
def test_bad_hours_are_refused_naming_the_form(text: str) -> None:
    with pytest.raises(BadInput, match="--hours"):
        Schedule.parse(text)


def test_the_owners_pause_wins_in_any_mode_and_the_load_threshold_is_the_workers():
    """`mesh worker pause` pauses a worker that does not yield to load, and outside hours
    too; `--idle-load` moves the load above which the owner counts as present."""
    paused = OwnerSignals(paused_by_owner=True)
    for when_idle in (False, True):
        answer = decide(paused, when_idle=when_idle, schedule=None, minute_of_day=0)
        assert answer.state == PAUSED and "mesh worker resume" in answer.reason
    busy = OwnerSignals(other_load=1.2)
    assert decide(busy, when_idle=True, schedule=None, minute_of_day=0).state == PAUSED
    assert decide(busy, when_idle=True, schedule=None, minute_of_day=0,
                  other_load_cpus=1.5).state == ACTIVE
