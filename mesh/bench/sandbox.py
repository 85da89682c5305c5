"""Sandbox overhead: what running a job through ``run_job`` costs over bare local torch.

Figures (seconds, best of ``repeats``):

- ``startup_bare_s``: a plain process that imports torch and the job loader and exits;
- ``startup_sandboxed_s``: the same inside the bubblewrap sandbox (``build_command``);
- ``bare_s``: the forward pass of the model in this process (same threads);
- ``cold_job_s``: ``run_job`` wall time (validate, start sandbox, import, load, compute, output);
- ``warm_job_s``: ``JobRunner(warm=True)`` wall time once its next process has started;
- ``compute_in_job_s``: the forward pass as measured inside the job process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.sandbox import JobRunner, build_command, run_job, sandbox_available
from meshcompute.mesh.models import build_model, example_inputs

_IMPORTS = "import torch, meshcompute.execution.loader, meshcompute.execution.programs"


def _timed_process(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def run_sandbox_bench(
    family: str = "mlp", rows: int = 32_768, threads: int = 2, repeats: int = 3
) -> dict[str, Any]:
    model = build_model(family)
    program = export_program(model, example_inputs(family, 4))
    inputs = example_inputs(family, rows, seed=1)
    input_bytes = save_tensors(inputs)
    limits = {"time_limit_s": 600.0, "memory_limit_mb": 8192, "max_output_bytes": 1 << 30}
    sandboxed = sandbox_available()

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bare = []
        with torch.no_grad():
            model(*inputs)
            for _ in range(repeats):
                started = time.perf_counter()
                model(*inputs)
                bare.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)

    root = Path(__file__).resolve().parents[2]
    plain = [sys.executable, "-c", _IMPORTS]
    bare_starts, box_starts = [], []
    with tempfile.TemporaryDirectory() as box:
        boxed = (build_command(Path(box), [sys.executable, "-c", _IMPORTS], threads=threads)
                 if sandboxed else None)
        for _ in range(repeats):  # interleaved, so machine load hits both alike
            bare_starts.append(_timed_process(plain))
            if boxed is not None:
                box_starts.append(_timed_process(boxed))
    startup_bare = min(bare_starts)
    startup_box = min(box_starts) if box_starts else None

    allow = not sandboxed
    cold = [run_job(program, input_bytes, threads=threads, allow_unsandboxed=allow, **limits)
            for _ in range(repeats)]
    warm = []
    with JobRunner(threads=threads, warm=True, allow_unsandboxed=allow) as runner:
        for _ in range(repeats):
            time.sleep(max(3.0, 2 * (startup_box or startup_bare)))  # let the next one start
            warm.append(runner.run(program, input_bytes, **limits))
    if not all(o.ok for o in (*cold, *warm)):
        failed = next(o for o in (*cold, *warm) if not o.ok)
        raise RuntimeError(f"benchmark job failed: {failed.reason}")
    bare_s = min(bare)
    cold_s = min(o.wall_s for o in cold)
    warm_s = min(o.wall_s for o in warm)
    return {
        "family": family,
        "rows": rows,
        "threads": threads,
        "sandboxed": sandboxed,
        "repo": str(root),
        "startup_bare_s": round(startup_bare, 3),
        "startup_sandboxed_s": None if startup_box is None else round(startup_box, 3),
        "bwrap_overhead_s": None if startup_box is None else round(startup_box - startup_bare, 3),
        "bare_s": round(bare_s, 3),
        "compute_in_job_s": round(min(o.compute_s for o in warm), 3),
        "cold_job_s": round(cold_s, 3),
        "warm_job_s": round(warm_s, 3),
        "cold_ratio": round(cold_s / bare_s, 3),
        "warm_ratio": round(warm_s / bare_s, 3),
        "warm_within_1_2x_plus_1s": warm_s <= 1.2 * bare_s + 1.0,
    }
