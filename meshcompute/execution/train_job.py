"""The training job process: ``python -m meshcompute.execution.train_job JOB_DIR``, run inside
the sandbox like the inference job process (:mod:`meshcompute.execution.execute`).

``JOB_DIR`` holds ``train.json`` (``plan``, ``start``, ``end``, ``micro_batches``, ``record``,
``device``, ``memory_limit_mb``, ``max_output_bytes``, ``program_sha256``), ``program.pt2``, ``data.safetensors`` (tensors
``args.0``, ``args.1``, ...: the shard, one row per sample) and, unless the run starts from the
program's own parameters, ``state.safetensors``. The process writes ``checkpoint.<i>.safetensors``
for each segment end it reaches, ``last.safetensors`` (the state after the last step run),
``losses.json``, with ``record`` ``steps.json`` (the sha256 of the state after each step) and
for ``"states"`` ``step.<i>.safetensors`` (the state after step ``start + i``), and, last, ``result.json`` (``{"ok", "reason", "diverged_at", "compute_s"}``).
No ``result.json`` means it was killed (time or memory) or crashed.

Order of events, as for inference: torch import -> ``train.json`` -> limits (RLIMIT_DATA over
the post-import size, RLIMIT_FSIZE, no core) -> pickle disabled -> program validated and
loaded -> state and data checked -> steps.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any


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
    if order["device"] != "cpu":
        result["reason"] = "training jobs run on the CPU in this version"
        return result
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
        state_file = job / "state.safetensors"
        state = state_file.read_bytes() if state_file.exists() else None
        started = time.perf_counter()
        run = run_steps(loaded, data, plan, state, start=int(order["start"]),
                        end=int(order["end"]), micro_batches=int(order.get("micro_batches", 1)),
                        record=order.get("record"))
        result["compute_s"] = time.perf_counter() - started
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
    written = 0
    for index, checkpoint in enumerate(run.checkpoints):
        written += len(checkpoint)
        if written > int(order["max_output_bytes"]):
            result["reason"] = (f"checkpoints exceed the job's output limit of "
                                f"{order['max_output_bytes']} bytes")
            return result
        (job / f"checkpoint.{index}.safetensors").write_bytes(checkpoint)
    if run.last_state:
        (job / "last.safetensors").write_bytes(run.last_state)
    if order.get("record"):
        (job / "steps.json").write_text(json.dumps(run.step_hashes))
    for index, step_state in enumerate(run.step_states):
        written += len(step_state)
        if written > int(order["max_output_bytes"]):
            result["reason"] = (f"step states exceed the job's output limit of "
                                f"{order['max_output_bytes']} bytes")
            return result
        (job / f"step.{index}.safetensors").write_bytes(step_state)
    result["diverged_at"] = run.diverged_at
    result["ok"] = True
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
