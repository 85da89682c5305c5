"""The training job process: ``python -m meshcompute.execution.train_job JOB_DIR``, run inside
the sandbox like the inference job process (:mod:`meshcompute.execution.execute`).

``JOB_DIR`` holds ``train.json`` (``plan``, ``start``, ``end``, ``micro_batches``, ``record``,
``device``, ``memory_limit_mb``, ``max_output_bytes``, ``program_sha256``), ``program.pt2``, ``data.safetensors`` (tensors
``args.0``, ``args.1``, ...: the shard, one row per sample) and, unless the run starts from the
program's own parameters, ``state.safetensors``. The process writes ``checkpoint.<i>.safetensors``
for each segment end it reaches, ``last.safetensors`` (the state after the last step run),
``losses.json``, with ``record`` ``steps.json`` (the sha256 of the state after each step) and
for ``"states"`` ``step.<i>.safetensors`` (the state after step ``start + i``), and, last, ``result.json`` (``{"ok", "reason", "diverged_at", "compute_s"}``).
Each checkpoint is written as soon as it is reached, followed by ``progress.json`` (how many
are written, the losses and step hashes up to the last), so a run stopped half way keeps them.
A file ``stop`` created in ``JOB_DIR`` (with ``record``) ends the run after the step under way:
``stopped.safetensors`` is the state there and ``progress.json`` names every step done
(``stopped_at``), so a job handed back loses no step at all.
No ``result.json`` means it was killed (time or memory) or crashed. With ``links`` (a list of
steps) it runs each of them alone instead, step ``links[i]`` from ``link.<i>.safetensors`` (the
program's own parameters when absent), and writes ``after.<i>.safetensors``.

Order of events, as for inference: torch import -> ``train.json`` -> device set-up (``cpu`` or
``cuda``: TF32 off, the memory limit as the process's share of the GPU) -> limits (RLIMIT_DATA
over the post-import size, RLIMIT_FSIZE, no core) -> pickle disabled -> program validated and
loaded -> state and data checked -> steps (on the device; checkpoints written from CPU copies).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: Created in the job folder by the worker: stop after the current step, keeping its state.
STOP_FILE = "stop"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m meshcompute.execution.train_job JOB_DIR", file=sys.stderr)
        return 2
    job = Path(argv[0])
    result = run(job)
    (job / "result.json").write_text(json.dumps(result))
    return 0


def run(job: Path) -> dict[str, Any]:
    import torch

    from meshcompute.core.training import validate_plan
    from meshcompute.errors import BadInput
    from meshcompute.execution.execute import MEMORY_HINTS, _Bound, _set_up
    from meshcompute.execution.loader import load_program
    from meshcompute.execution.programs import load_tensors
    from meshcompute.execution.training import run_steps

    torch.set_num_interop_threads(1)
    order = json.loads((job / "train.json").read_text())
    result: dict[str, Any] = {"ok": False, "reason": None, "diverged_at": None, "compute_s": 0.0}
    # the inference job's device set-up: TF32 off on CUDA (float32 steps must be float32),
    # the job's memory limit as the process's share of the GPU; an unknown device refused
    problem = _set_up(order, _Bound())
    if problem is not None:
        result["reason"] = problem
        return result
    try:
        program = (job / "program.pt2").read_bytes()
        if hashlib.sha256(program).hexdigest() != order["program_sha256"]:
            result["reason"] = "program file does not match its announced hash"
            return result
        plan = validate_plan(order["plan"])
        loaded = load_program(program)
        data = load_tensors((job / "data.safetensors").read_bytes(), "args")
        started = time.perf_counter()
        if order.get("links") is not None:
            return _links(job, order, loaded, data, plan, result, started)
        state_file = job / "state.safetensors"
        state = state_file.read_bytes() if state_file.exists() else None
        output = _Output(job, int(order["max_output_bytes"]))
        progress = _Progress(job, output)
        run = run_steps(loaded, data, plan, state, start=int(order["start"]),
                        end=int(order["end"]), micro_batches=int(order.get("micro_batches", 1)),
                        record=order.get("record"), device=str(order["device"]),
                        on_checkpoint=progress, should_stop=(job / STOP_FILE).exists)
        result["compute_s"] = time.perf_counter() - started
        if run.stopped_at is not None:
            progress.stopped(run)
            result["reason"] = f"stopped on request after step {run.stopped_at - 1}"
            return result
    except BadInput as exc:
        result["reason"] = f"training refused: {exc}"
        return result
    except MemoryError:
        result["reason"] = f"job exceeded its memory limit of {order['memory_limit_mb']} MB"
        return result
    except Exception as exc:  # noqa: BLE001 - any failure of a stranger's program is reported
        text = str(exc)
        if any(hint in text for hint in MEMORY_HINTS):
            result["reason"] = f"job exceeded its memory limit of {order['memory_limit_mb']} MB"
        else:
            result["reason"] = f"program failed while training: {type(exc).__name__}: " \
                               f"{text[:500]}"
        return result
    (job / "losses.json").write_text(json.dumps(run.losses))
    problem = progress.problem or output.write("checkpoint", "checkpoints",
                                               run.checkpoints[progress.written:],
                                               first=progress.written)
    if problem is not None:
        result["reason"] = problem
        return result
    if run.last_state:
        (job / "last.safetensors").write_bytes(run.last_state)
    if order.get("record"):
        (job / "steps.json").write_text(json.dumps(run.step_hashes))
    problem = output.write("step", "step states", run.step_states)
    if problem is not None:
        result["reason"] = problem
        return result
    result["diverged_at"] = run.diverged_at
    result["ok"] = True
    return result


class _Output:
    """The job's files under its output limit, counted over everything it writes."""

    def __init__(self, job: Path, limit: int) -> None:
        self.job, self.limit, self.written = job, limit, 0

    def write(self, name: str, what: str, blobs: list[bytes], first: int = 0) -> str | None:
        """``<name>.<i>.safetensors`` for each blob; the reason when over the limit."""
        for index, blob in enumerate(blobs, start=first):
            self.written += len(blob)
            if self.written > self.limit:
                return f"{what} exceed the job's output limit of {self.limit} bytes"
            (self.job / f"{name}.{index}.safetensors").write_bytes(blob)
        return None


class _Progress:
    """Writes each checkpoint as the run reaches it, then ``progress.json`` (``checkpoints``:
    how many are written, with the ``losses`` and ``step_hashes`` of the steps up to the last),
    replaced atomically: a run stopped half way (frozen for its owner, then handed back) keeps
    its finished segments, which a later job continues from."""

    def __init__(self, job: Path, output: _Output) -> None:
        self.job, self.output, self.written, self.problem = job, output, 0, None

    def __call__(self, run: Any) -> None:
        if self.problem is not None:
            return
        self.problem = self.output.write("checkpoint", "checkpoints",
                                         run.checkpoints[self.written:], first=self.written)
        if self.problem is not None:
            return
        self.written = len(run.checkpoints)
        temporary = self.job / "progress.json.tmp"
        temporary.write_text(json.dumps({"checkpoints": self.written, "losses": run.losses,
                                         "step_hashes": run.step_hashes}))
        os.replace(temporary, self.job / "progress.json")

    def stopped(self, run: Any) -> None:
        """The run stopped on request: ``stopped.safetensors`` (the state after its last
        step), then ``progress.json`` with every step done and ``stopped_at``."""
        if self.problem is None:
            self(run)  # the checkpoints reached and not yet written
        if self.problem is not None:
            return
        (self.job / "stopped.safetensors").write_bytes(run.last_state)
        temporary = self.job / "progress.json.tmp"
        temporary.write_text(json.dumps({"checkpoints": self.written, "losses": run.losses,
                                         "step_hashes": run.step_hashes,
                                         "stopped_at": run.stopped_at}))
        os.replace(temporary, self.job / "progress.json")


def _links(job: Path, order: dict[str, Any], loaded: Any, data: Any, plan: Any,
           result: dict[str, Any], started: float) -> dict[str, Any]:
    """One step from each of several states: ``link.<i>.safetensors`` (absent: the program's
    own parameters) runs step ``links[i]`` alone and gives ``after.<i>.safetensors``, up to
    the first whose loss is not finite (``diverged_at``: its step). An appeal's recomputation
    of a segment step by step, in one process."""
    from meshcompute.execution.training import run_steps

    output = _Output(job, int(order["max_output_bytes"]))
    for index, step in enumerate(order["links"]):
        source = job / f"link.{index}.safetensors"
        state = source.read_bytes() if source.exists() else None
        run = run_steps(loaded, data, plan, state, start=int(step), end=int(step) + 1,
                        micro_batches=int(order.get("micro_batches", 1)))
        if run.diverged_at is not None:
            result["diverged_at"] = int(step)  # the links before it are written
            break
        problem = output.write("after", "states", [run.last_state], first=index)
        if problem is not None:
            result["reason"] = problem
            return result
    result["compute_s"] = time.perf_counter() - started
    (job / "losses.json").write_text("[]")
    result["ok"] = True
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
