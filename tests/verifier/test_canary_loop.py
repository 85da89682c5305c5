"""meshcompute.verifier.canary.run_canaries, the loop of ``mesh canary start``, around a
stand-in runner (the runner itself runs on a real chain in test_service_chain.py and as a
real process in test_service_cli.py): how many canaries, how many open at once, a failure to
plant tried again, the journal kept across a restart."""

from __future__ import annotations

import random
import threading

import pytest

from meshcompute.errors import BadInput, ServiceUnavailable
from meshcompute.verifier.canary import CanaryPlan, load_planted, run_canaries, save_planted


class FakeRunner:
    """Plants job ids 1, 2, ...; the first ``failures`` plants fail; a canary ends (slashed)
    the second time it is watched; records the most canaries open at once."""

    def __init__(self, failures: int = 0) -> None:
        self.planted: dict[int, str] = {}
        self.failures = failures
        self.seen: dict[int, int] = {}
        self.most_open = 0
        self.next_id = 1

    def plant(self, program, inputs, **kw) -> int:
        assert (program, inputs) == (b"program", b"inputs")
        assert kw["reward"] == 10 and kw["audit_fee"] == 2 and kw["collateral"] == 40
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailable("market down")
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.planted[job_id] = "planted"
        self.most_open = max(self.most_open, sum(
            1 for s in self.planted.values() if s in ("planted", "disputed")))
        return job_id

    def watch_once(self) -> dict[int, str]:
        changed = {}
        for job_id, status in self.planted.items():
            if status != "planted":
                continue
            self.seen[job_id] = self.seen.get(job_id, 0) + 1
            if self.seen[job_id] >= 2:
                changed[job_id] = "slashed"
        self.planted.update(changed)
        return changed


def _plan(**kw) -> CanaryPlan:
    return CanaryPlan(**{"every_s": 0.001, "reward": 10, "audit_fee": 2, "collateral": 40,
                         "max_open": 1, "total": 3} | kw)


def _run(runner, plan, journal, events=None) -> dict[int, str]:
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)  # a hung loop fails the test, it does not hang it
    timer.start()
    try:
        return run_canaries(runner, [lambda: (b"program", b"inputs")], plan, journal=journal,
                            stop=stop, poll_s=0.001, rng=random.Random(7),
                            emit=lambda event, **f: (events if events is not None else []
                                                     ).append((event, f)))
    finally:
        timer.cancel()
        assert not stop.is_set(), "run_canaries did not end by itself"


def test_plants_its_total_one_open_at_a_time_and_ends_when_they_have(tmp_path):
    runner, events = FakeRunner(), []
    final = _run(runner, _plan(), tmp_path / "canaries.json", events)
    assert final == {1: "slashed", 2: "slashed", 3: "slashed"}
    assert runner.most_open == 1
    assert load_planted(tmp_path / "canaries.json") == final
    assert [(e, f["status"]) for e, f in events if e == "canary"] == [
        ("canary", "planted"), ("canary", "slashed")] * 3


def test_a_failed_plant_is_reported_and_tried_again(tmp_path):
    runner, events = FakeRunner(failures=2), []
    final = _run(runner, _plan(total=1), tmp_path / "canaries.json", events)
    assert final == {1: "slashed"}
    warnings = [f["message"] for e, f in events if e == "warning"]
    assert warnings == ["planting a canary failed: market down"] * 2


def test_after_a_restart_it_watches_the_canaries_of_its_journal(tmp_path):
    journal = tmp_path / "canaries.json"
    save_planted(journal, {41: "planted", 40: "slashed"})
    runner = FakeRunner()
    final = _run(runner, _plan(total=0), journal)
    assert final == {40: "slashed", 41: "slashed"}  # watched to its end, none planted
    assert runner.next_id == 1


@pytest.mark.parametrize("bad", [{"every_s": 0}, {"max_open": 0}, {"reward": 0},
                                 {"audit_fee": 0}, {"total": -1}])
def test_a_plan_without_money_or_time_is_refused(bad):
    with pytest.raises(BadInput):
        _plan(**bad)
