"""The job process: ``python -m worker.execute [--serve] JOB_DIR``, run inside the sandbox.

``JOB_DIR`` (``/job`` in the sandbox, the only writable place) holds ``job.json`` (device,
threads, memory limit, output limit), ``program.pt2`` and ``inputs.safetensors``. The process
writes ``output.safetensors`` (tensors ``out.0``, ``out.1``, ...) and ``result.json``
(``{"ok", "reason", "load_s", "compute_s", "baseline_mb"}``) and exits 0; a missing
``result.json`` means it was killed (time or memory) or crashed.

With ``--serve`` it imports torch first and then waits for one line on stdin before reading
``job.json``: the worker starts the next job process while the previous job is uploaded, so a
job does not pay for the interpreter and torch import (warm start). One process runs one job.

Order of events, so that nothing from the job's files runs before the limits are in place:
torch import -> job.json -> device set-up (TF32 off) -> memory limit (RLIMIT_DATA = the
process's current data size + the job's limit; torch's own baseline is not charged to the
job) and output-file size limit (RLIMIT_FSIZE) -> pickle disabled -> program validated and
loaded (:mod:`worker.loader`) -> inputs checked -> forward under ``torch.no_grad``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

MEMORY_HINTS = ("can't allocate memory", "out of memory", "CUDA out of memory",
                "Cannot allocate memory", "DefaultCPUAllocator")


def main(argv: list[str]) -> int:
    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    if len(args) != 1:
        print("usage: python -m worker.execute [--serve] JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    # Warm start: pay for the imports before the job arrives (nothing from the job yet).
    import torch

    import meshcompute.programs  # noqa: F401
    import worker.loader  # noqa: F401

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    if serve:
        _prewarm()
        if not sys.stdin.readline():
            return 0  # the worker closed the pipe: no job for this process
    result = run(job_dir)
    (job_dir / "result.json").write_text(json.dumps(result))
    # Skip interpreter teardown (seconds with torch loaded): everything is written and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _prewarm() -> None:
    """Export, load and call a tiny built-in program, so the job's own load does not pay for
    torch.export's lazy first-use set-up (about 0.2-0.5 s here). Trusted code only."""
    import torch

    from meshcompute.programs import export_program
    from worker.loader import load_program

    tiny = export_program(torch.nn.Linear(2, 2), (torch.zeros(2, 2),))
    with torch.no_grad():
        load_program(tiny).module(torch.zeros(3, 2))


def run(job_dir: Path) -> dict[str, Any]:
    import torch

    from meshcompute.errors import BadInput

    result: dict[str, Any] = {"ok": False, "reason": None, "load_s": 0.0, "compute_s": 0.0}
    job = json.loads((job_dir / "job.json").read_text())
    device = job["device"]
    if device == "cuda":
        if not torch.cuda.is_available():
            result["reason"] = "job asks for a CUDA device but this worker has none available"
            return result
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, job["memory_limit_mb"] * 2**20 / total)
        torch.cuda.set_per_process_memory_fraction(fraction)
    elif device != "cpu":
        result["reason"] = f"unknown device {device!r}"
        return result
    baseline = _data_bytes()
    result["baseline_mb"] = round(baseline / 2**20, 1)
    limit = baseline + int(job["memory_limit_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    max_output = int(job["max_output_bytes"])
    file_limit = max_output + (1 << 20)
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    from meshcompute.programs import OUTPUT_PREFIX, load_tensors, save_tensors
    from worker.loader import forbid_pickle, load_program

    forbid_pickle()
    try:
        started = time.perf_counter()
        try:
            loaded = load_program(job_dir / "program.pt2")
        except BadInput as exc:
            result["reason"] = f"program refused: {exc}"
            return result
        try:
            inputs = load_tensors((job_dir / "inputs.safetensors").read_bytes(), "args")
        except BadInput as exc:
            result["reason"] = f"inputs refused: {exc}"
            return result
        if len(inputs) != len(loaded.inputs):
            result["reason"] = (f"program takes {len(loaded.inputs)} inputs, job gives "
                                f"{len(inputs)}")
            return result
        for spec, tensor in zip(loaded.inputs, inputs, strict=True):
            problem = spec.mismatch(tensor)
            if problem:
                result["reason"] = f"input {spec.name}: {problem}"
                return result
        module = loaded.module
        if device == "cuda":
            module = module.to("cuda")
            inputs = [t.to("cuda") for t in inputs]
        result["load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            outputs = module(*inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        result["compute_s"] = time.perf_counter() - started
        leaves = torch.utils._pytree.tree_leaves(outputs)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            result["reason"] = "program outputs must be tensors"
            return result
        size = sum(t.numel() * t.element_size() for t in leaves)
        if size > max_output:
            result["reason"] = (f"output is {size} bytes, over the job's limit of {max_output} "
                                "bytes")
            return result
        data = save_tensors([t.cpu() for t in leaves], OUTPUT_PREFIX)
        if len(data) > max_output:
            result["reason"] = (f"output is {len(data)} bytes, over the job's limit of "
                                f"{max_output} bytes")
            return result
        (job_dir / "output.safetensors").write_bytes(data)
        result["ok"] = True
        return result
    except MemoryError:
        result["reason"] = f"job exceeded its memory limit of {job['memory_limit_mb']} MB"
        return result
    except Exception as exc:  # noqa: BLE001 - any failure of a stranger's program is reported
        text = str(exc)
        if any(hint in text for hint in MEMORY_HINTS):
            result["reason"] = f"job exceeded its memory limit of {job['memory_limit_mb']} MB"
        else:
            result["reason"] = f"program failed while running: {type(exc).__name__}: {text[:500]}"
        return result


def _data_bytes() -> int:
    """This process's data segment size (what RLIMIT_DATA counts), from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
