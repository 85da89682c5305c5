"""Run steps of a training job in the sandbox: :func:`run_training_job` -> :class:`TrainingOutcome`.

The worker runs a whole job with it; the verifier recomputes one audited segment with it, from
the worker's checkpoint before the segment. Like :func:`meshcompute.execution.sandbox.run_job`
this process never imports torch nor loads the program: it checks the archive
(:func:`meshcompute.execution.archive.validate_program`) and the plan, writes the files into a
fresh scratch folder and runs ``python -m meshcompute.execution.train_job`` under the same
bubblewrap command (no network, read-only system, only the scratch folder writable), with the
job's wall-time limit over the whole process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshcompute.core.spec import sha256_hex
from meshcompute.core.training import validate_plan
from meshcompute.errors import BadInput, SandboxUnavailable
from meshcompute.execution.archive import validate_program
from meshcompute.execution.sandbox import SANDBOX_DIR, _job_env, build_command, sandbox_available
from meshcompute.execution.train_job import STOP_FILE


@dataclass
class TrainingOutcome:
    """How a training run ended. ``ok`` with the checkpoints reached (safetensors bytes), the
    loss of every step run and ``last_state``; ``diverged_at`` is the step whose loss was not
    finite, when one was (still ``ok``: the run itself worked; the job's outcome is that the
    training diverged). Not ``ok``: ``reason`` says why (refused, limits, crash)."""

    ok: bool
    reason: str | None = None
    checkpoints: list[bytes] = field(default_factory=list)
    """The checkpoints reached; not ``ok`` (the process was killed: a job handed back half
    way), those it wrote before, with ``losses`` and ``step_hashes`` up to the last of them."""
    losses: list[float] = field(default_factory=list)
    last_state: bytes = b""
    diverged_at: int | None = None
    wall_s: float = 0.0
    compute_s: float = 0.0
    step_hashes: list[str] = field(default_factory=list)
    """With ``record``: the sha256 of the state after each step run."""
    step_states: list[bytes] = field(default_factory=list)
    """With ``record="states"``: the state after each step run."""
    link_states: list[bytes] = field(default_factory=list)
    """With ``links``: the state after each link's one step."""
    stopped_at: int | None = None
    """Stopped on request (``stop``) after step ``stopped_at - 1``: not ``ok``, with every
    step's loss and hash up to there and ``last_state`` the state there."""


def run_training_job(program: bytes, data: bytes, plan: dict, state: bytes | None = None, *,
                     start: int | None = None, end: int | None = None, threads: int = 1,
                     micro_batches: int = 1, record: str | None = None,
                     links: Sequence[tuple[bytes | None, int]] | None = None,
                     cpu_capability: str | None = None,
                     onednn_max_isa: str | None = None,
                     time_limit_s: float, memory_limit_mb: int, max_output_bytes: int,
                     device: str = "cpu", scratch_root: Path | None = None,
                     allow_unsandboxed: bool = False,
                     stop: threading.Event | None = None,
                     on_start: Callable[[int], None] | None = None) -> TrainingOutcome:
    """Run steps ``[start, end)`` of ``plan`` (JSON) over ``program`` and the data shard
    ``data`` (safetensors ``args.0``, ...) from ``state`` (None: the program's own parameters)
    in a fresh sandboxed process; ``micro_batches`` > 1 accumulates each step's gradient over
    that many parts of its batch; ``record`` keeps each step's state hash (``"hashes"``) or
    state (``"states"``), as :func:`meshcompute.execution.training.run_steps` does; ``links``
    (``(state, step)`` pairs) runs each step alone from its state instead (``link_states``:
    an appeal's step-by-step recomputation, :data:`meshcompute.execution.training.LinkRun`); ``cpu_capability`` and ``onednn_max_isa`` pin the CPU
    kernels as :class:`meshcompute.execution.sandbox.JobRunner` does (the verifier's second
    numeric setup uses all three). Raises :class:`BadInput` for a plan or program refused before
    anything runs, :class:`SandboxUnavailable` when the job cannot be isolated and
    ``allow_unsandboxed`` is False. ``stop``, once set, ends the run after the step under way
    (with ``record``), keeping every step done (``stopped_at``); ``on_start`` is told the job's
    process group once it runs."""
    started = time.perf_counter()
    checked = validate_plan(plan)
    validate_program(program)
    if threads < 1:
        raise BadInput("threads must be at least 1")
    sandboxed = sandbox_available()
    if not sandboxed and not allow_unsandboxed:
        raise SandboxUnavailable("bubblewrap (bwrap) is missing or not functional, so the "
                                 "training job cannot be isolated; install 'bubblewrap'")
    folder = Path(tempfile.mkdtemp(prefix="mesh-train-", dir=scratch_root))
    try:
        box = folder / "box"
        box.mkdir()
        (box / "program.pt2").write_bytes(program)
        (box / "data.safetensors").write_bytes(data)
        if state is not None:
            (box / "state.safetensors").write_bytes(state)
        for index, (before, _) in enumerate(links or ()):
            if before is not None:
                (box / f"link.{index}.safetensors").write_bytes(before)
        (box / "train.json").write_text(json.dumps({
            "plan": checked.to_json(), "micro_batches": micro_batches, "record": record,
            "links": None if links is None else [int(step) for _, step in links],
            "start": checked.start_step if start is None else start,
            "end": checked.last if end is None else end, "device": device,
            "memory_limit_mb": memory_limit_mb, "max_output_bytes": max_output_bytes,
            "program_sha256": sha256_hex(program),
        }))
        argv = [sys.executable, "-m", "meshcompute.execution.train_job"]
        if sandboxed:
            command = build_command(box, [*argv, SANDBOX_DIR], device=device, threads=threads,
                                    cpu_capability=cpu_capability,
                                    onednn_max_isa=onednn_max_isa)
            env, cwd = None, None
        else:
            command = [*argv, str(box)]
            env = _job_env(threads, str(box), cpu_capability, onednn_max_isa, device)
            cwd = box
        with (folder / "stderr.log").open("wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True, env=env, cwd=cwd)
            try:
                if on_start is not None:
                    on_start(process.pid)
                finished = _wait(process, time_limit_s, stop, box / STOP_FILE)
            except BaseException:  # never leave the job running behind an error of ours
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            if not finished:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return _finished_part(box, TrainingOutcome(
                    False, f"job exceeded its time limit of {time_limit_s:g} s",
                    wall_s=time.perf_counter() - started))
        return _collect(box, folder, memory_limit_mb, started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _collect(box: Path, folder: Path, memory_limit_mb: int, started: float) -> TrainingOutcome:
    wall = time.perf_counter() - started
    result_file = box / "result.json"
    if not result_file.exists():
        tail = (folder / "stderr.log").read_bytes()[-300:].decode(errors="replace").strip()
        return _finished_part(box, TrainingOutcome(
            False, f"training process ended without a result (killed, crashed, or over its "
                   f"memory limit of {memory_limit_mb} MB) {tail}", wall_s=wall))
    result = json.loads(result_file.read_text())
    if not result.get("ok"):
        return _finished_part(box, TrainingOutcome(
            False, str(result.get("reason") or "training failed"), wall_s=wall))
    checkpoints = _numbered(box, "checkpoint")
    last = box / "last.safetensors"
    steps = box / "steps.json"
    hashes = [str(h) for h in json.loads(steps.read_text())] if steps.exists() else []
    states = _numbered(box, "step")
    return TrainingOutcome(
        True, None, checkpoints, [float(x) for x in json.loads((box / "losses.json").read_text())],
        last.read_bytes() if last.exists() else b"", result.get("diverged_at"), wall,
        float(result.get("compute_s") or 0.0), hashes, states, _numbered(box, "after"))


def _finished_part(box: Path, outcome: TrainingOutcome) -> TrainingOutcome:
    """``outcome`` (a run that did not finish) with the checkpoints its process wrote before
    it ended, as its ``progress.json`` counts them (none when it has none or is unreadable)."""
    try:
        progress = json.loads((box / "progress.json").read_text())
        count = int(progress["checkpoints"])
        checkpoints = [(box / f"checkpoint.{i}.safetensors").read_bytes() for i in range(count)]
        losses = [float(x) for x in progress["losses"]]
        hashes = [str(h) for h in progress["step_hashes"]]
        stopped = progress.get("stopped_at")
        last = (box / "stopped.safetensors").read_bytes() if stopped is not None else b""
    except (OSError, ValueError, KeyError, TypeError):
        return outcome
    outcome.checkpoints, outcome.losses, outcome.step_hashes = checkpoints, losses, hashes
    if stopped is not None:
        outcome.stopped_at, outcome.last_state = int(stopped), last
    return outcome


def _wait(process: subprocess.Popen[bytes], time_limit_s: float, stop: threading.Event | None,
          stop_file: Path) -> bool:
    """Wait for the job process; False when its time limit ran out. ``stop`` set: the
    process is asked to stop after its current step (``stop_file``)."""
    if stop is None:
        try:
            process.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + time_limit_s
    asked = False
    while True:
        try:
            process.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                return False
            if stop.is_set() and not asked:
                stop_file.touch()
                asked = True


def _numbered(box: Path, name: str) -> list[bytes]:
    found: list[bytes] = []
    while (box / f"{name}.{len(found)}.safetensors").exists():
        found.append((box / f"{name}.{len(found)}.safetensors").read_bytes())
    return found
