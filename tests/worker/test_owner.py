"""What a worker that yields to its owner reads from the machine and does to its jobs
(meshcompute.worker.owner), on real processes: a job process is stopped at once and goes on
where it was when thawed, nothing else below the worker is touched, another program's load
is seen, and a laptop on battery is recognised."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from meshcompute.worker.owner import (
    _TICK,
    Freezer,
    OwnerWatch,
    _on_battery,
    _stat,
    descendants,
    run_state,
)

COUNTER = ("import sys, time\n"
           "path = sys.argv[1]\n"
           "n = 0\n"
           "while True:\n"
           "    n += 1\n"
           "    open(path, 'w').write(str(n))\n"
           "    time.sleep(0.02)\n")



def _count(path: Path) -> int:
    for _ in range(50):
        try:
            return int(path.read_text())
        except ValueError:  # caught mid-write
            time.sleep(0.01)
    raise AssertionError("the counter file stays empty")


def test_a_job_process_is_stopped_at_once_and_goes_on_when_thawed(tmp_path: Path) -> None:
    counter, bystander = tmp_path / "job", tmp_path / "other"
    # a parent (the worker's stand-in) with a job process and another child below it
    parent = subprocess.Popen(
        ["sh", "-c", (f"{sys.executable} -c \"$JOB\" {counter} meshcompute.execution.execute & "
                      f"{sys.executable} -c \"$JOB\" {bystander} & wait")],
        env={"JOB": COUNTER, "PATH": "/usr/bin:/bin"})
    try:
        while not (counter.exists() and bystander.exists()):
            time.sleep(0.05)
        freezer = Freezer(pid=parent.pid)
        started = time.monotonic()
        assert freezer.freeze() == 1  # the job process only
        assert time.monotonic() - started < 2.0
        (job,) = freezer.frozen
        assert run_state(job) == "T"
        stopped_at, other_at = _count(counter), _count(bystander)
        time.sleep(0.4)
        assert _count(counter) == stopped_at  # frozen: no progress
        assert _count(bystander) > other_at  # the other child kept running
        assert freezer.thaw() == 1 and not freezer.active
        time.sleep(0.4)
        assert _count(counter) > stopped_at  # it went on from where it was
        assert run_state(job) in "SR"
    finally:
        for pid in descendants(parent.pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.kill()
        parent.wait()


def test_another_programs_load_pauses_a_worker_that_yields(tmp_path: Path) -> None:
    quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        watch = OwnerWatch(when_idle=True, schedule=None, pid=quiet.pid, every_s=0.0)
        watch.signals()
        time.sleep(0.6)
        signals = watch.signals()
        assert signals.other_load is not None and signals.other_load > 0.5
        answer = watch.availability()
        assert answer.state == "paused_for_owner" and "CPUs busy" in answer.reason
    finally:
        for process in (quiet, busy):
            process.kill()
            process.wait()


def test_power_supplies_tell_a_laptop_on_battery(tmp_path: Path) -> None:
    def supply(name: str, **files: str) -> None:
        (tmp_path / name).mkdir()
        for key, value in files.items():
            (tmp_path / name / key).write_text(value + "\n")

    assert _on_battery(tmp_path / "none") is None  # no sysfs: unknown
    supply("BAT0", type="Battery", status="Discharging")
    supply("AC", type="Mains", online="0")
    assert _on_battery(tmp_path) is True
    (tmp_path / "AC" / "online").write_text("1\n")
    assert _on_battery(tmp_path) is False


def test_a_job_process_that_ended_stays_counted_as_the_workers_own_cpu_time(
        tmp_path: Path) -> None:
    # the worker's stand-in runs a busy job process to its end and reaps it: the job's CPU
    # time moves to the parent's reaped-children time, so the worker's tree still owns it
    # (else every job that ends would look like the owner's load and pause the worker)
    busy = "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass"
    done = tmp_path / "done"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         (f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {busy!r}])\n"
          "open(sys.argv[1], 'w').write('done')\ntime.sleep(30)\n"), str(done)])
    try:
        give_up = time.monotonic() + 20
        while not done.exists():
            assert time.monotonic() < give_up, "the busy job never ended"
            time.sleep(0.05)
        assert descendants(parent.pid) == {}
        ticks = _stat(parent.pid)[2]
        assert ticks / _TICK >= 0.4, ticks  # the child's ~0.6 s of CPU is the parent's now
    finally:
        parent.kill()
        parent.wait()


def test_the_pause_file_pauses_the_worker_until_it_is_removed(tmp_path: Path) -> None:
    """`mesh worker pause` / `resume`: the watch reads the file at each answer (every_s)."""
    from meshcompute.core.availability import ACTIVE, PAUSED

    clock = [0.0]
    pause = tmp_path / "worker.pause"
    watch = OwnerWatch(False, None, pause_file=pause, clock=lambda: clock[0])
    assert watch.availability().state == ACTIVE
    pause.touch()
    clock[0] += 1.0
    assert watch.availability().state == PAUSED
    pause.unlink()
    clock[0] += 1.0
    assert watch.availability().state == ACTIVE
