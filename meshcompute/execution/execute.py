"""The job process: ``python -m meshcompute.execution.execute [--serve] JOB_DIR``, run inside the sandbox.

``JOB_DIR`` (``/job`` in the sandbox, the only writable place) is where the worker puts each
*batch*: a folder ``JOB_DIR/<name>/`` holding ``batch.json`` (device, threads, memory limit,
output limit, program sha256, job count), ``program.pt2`` and ``inputs.<i>.safetensors`` for
``i`` in ``0..count-1``. The process reads one batch name per line on stdin, runs the batch's
jobs in order and, for each, writes ``output.<i>.safetensors`` (tensors ``out.0``, ``out.1``,
...) and ``result.<i>.json`` (``{"ok", "reason", "load_s", "compute_s"}``) and prints
``job <i>`` on stdout; after the batch it writes ``result.json`` (``{"reusable",
"baseline_mb"}``) and prints ``end``. End of stdin ends the process. A job without its
``result.<i>.json`` was killed (time or memory) or crashed.

Security rule: one process only ever runs jobs of ONE client and ONE program. The worker
(:class:`meshcompute.execution.sandbox.JobRunner`) sends a process only batches of one (client, program,
limits) key; this process also refuses, by exiting, a batch whose program hash differs from the
one it loaded first. The program is validated and loaded once; if its graph mutates buffers
(state that would carry from one job to the next) it is reloaded for every job and the process
reports itself not reusable. Jobs cannot otherwise leave state behind: the allowlisted
operators are pure tensor ops.

With ``--serve`` it imports torch and pre-warms torch.export's loader before reading the first
batch name (warm start: the worker starts job processes while it waits for work).

Order of events, so that nothing from the job's files runs before the limits are in place:
torch import -> first batch.json -> device set-up (TF32 off) -> memory limit (RLIMIT_DATA = the
process's current data size + the job's limit; torch's own baseline is not charged to the
job) and output-file size limit (RLIMIT_FSIZE) -> pickle disabled -> program validated and
loaded (:mod:`meshcompute.execution.loader`) -> per job: inputs checked -> forward under ``torch.no_grad``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMORY_HINTS = ("can't allocate memory", "out of memory", "CUDA out of memory",
                "Cannot allocate memory", "DefaultCPUAllocator")
_BATCH_NAME = re.compile(r"[a-z0-9-]{1,64}")
_LIMIT_KEYS = ("device", "memory_limit_mb", "max_output_bytes")


@dataclass
class _Bound:
    """What this process committed to on its first batch."""

    program_sha256: str | None = None
    limits: tuple[Any, ...] | None = None
    loaded: Any = None
    program_bytes: bytes = b""
    mutates: bool = False
    baseline_mb: float = 0.0
    jobs_run: int = 0


def main(argv: list[str]) -> int:
    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    if len(args) != 1:
        print("usage: python -m meshcompute.execution.execute [--serve] JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    # Warm start: pay for the imports before the job arrives (nothing from the job yet).
    import torch

    import meshcompute.execution.loader
    import meshcompute.execution.programs  # noqa: F401

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    if serve:
        _prewarm()
    bound = _Bound()
    while True:
        line = sys.stdin.readline()
        if not line:
            break  # the worker closed the pipe: no more batches for this process
        name = line.strip()
        if not _BATCH_NAME.fullmatch(name):
            print(f"bad batch name {name[:80]!r}", file=sys.stderr)
            break
        keep = run_batch(job_dir / name, bound)
        print("end", flush=True)
        if not keep:
            break
    # Skip interpreter teardown (seconds with torch loaded): everything is written and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _prewarm() -> None:
    """Export, load and call a tiny built-in program, so the job's own load does not pay for
    torch.export's lazy first-use set-up (about 0.2-0.5 s here). Trusted code only."""
    import torch

    from meshcompute.execution.loader import load_program
    from meshcompute.execution.programs import export_program

    tiny = export_program(torch.nn.Linear(2, 2), (torch.zeros(2, 2),))
    with torch.no_grad():
        load_program(tiny).module(torch.zeros(3, 2))


def run_batch(batch_dir: Path, bound: _Bound) -> bool:
    """Run every job of one batch; returns whether the process may take another batch."""
    batch = json.loads((batch_dir / "batch.json").read_text())
    count = int(batch["count"])
    limits = tuple(batch[k] for k in _LIMIT_KEYS)
    if bound.limits is None:
        problem = _set_up(batch, bound)
        bound.limits = limits
        if problem is not None:
            for index in range(count):
                _job_result(batch_dir, index, {"ok": False, "reason": problem,
                                               "load_s": 0.0, "compute_s": 0.0})
            return False
    elif limits != bound.limits:
        print("batch limits differ from this process's; refusing", file=sys.stderr)
        return False
    sha = str(batch["program_sha256"])
    if bound.program_sha256 is None:
        bound.program_sha256 = sha
    elif sha != bound.program_sha256:
        print("batch program differs from this process's; refusing", file=sys.stderr)
        return False
    reusable = True
    for index in range(count):
        result = _run_one(batch_dir, index, bound, int(batch["max_output_bytes"]),
                          str(batch["device"]), int(batch["memory_limit_mb"]))
        fatal = bool(result.pop("_fatal", False))
        if fatal and bound.jobs_run > 0:
            # not necessarily this job's fault (memory left by earlier jobs): the worker
            # runs it again, first in a fresh process, before calling it failed
            result["retry"] = True
        bound.jobs_run += 1
        _job_result(batch_dir, index, result)
        if fatal:
            reusable = False
            break  # the rest of the batch goes to a fresh process
    reusable = reusable and not bound.mutates and bound.loaded is not None
    (batch_dir / "result.json").write_text(json.dumps({"reusable": reusable,
                                                       "baseline_mb": bound.baseline_mb}))
    return reusable


def _job_result(batch_dir: Path, index: int, result: dict[str, Any]) -> None:
    (batch_dir / f"result.{index}.json").write_text(json.dumps(
        {k: v for k, v in result.items() if not k.startswith("_")}))
    print(f"job {index}", flush=True)


def _set_up(batch: dict[str, Any], bound: _Bound) -> str | None:
    """Device set-up and limits, once per process; a reason when the device is unusable."""
    import torch

    device = batch["device"]
    if device == "cuda":
        if not torch.cuda.is_available():
            return "job asks for a CUDA device but this worker has none available"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, batch["memory_limit_mb"] * 2**20 / total)
        torch.cuda.set_per_process_memory_fraction(fraction)
    elif device != "cpu":
        return f"unknown device {device!r}"
    baseline = _data_bytes()
    bound.baseline_mb = round(baseline / 2**20, 1)
    limit = baseline + int(batch["memory_limit_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    file_limit = int(batch["max_output_bytes"]) + (1 << 20)
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    from meshcompute.execution.loader import forbid_pickle

    forbid_pickle()
    return None


def _mutates_state(program: Any) -> bool:
    """Whether the exported program writes its buffers (state kept between calls)."""
    signature = getattr(program, "graph_signature", None)
    if signature is None:
        return True
    return bool(getattr(signature, "buffers_to_mutate", None))


def _run_one(batch_dir: Path, index: int, bound: _Bound, max_output: int, device: str,
             memory_limit_mb: int) -> dict[str, Any]:
    import torch

    from meshcompute.errors import BadInput
    from meshcompute.execution.loader import check_inputs, load_program
    from meshcompute.execution.programs import OUTPUT_PREFIX, load_tensors, save_tensors

    result: dict[str, Any] = {"ok": False, "reason": None, "load_s": 0.0, "compute_s": 0.0}
    try:
        started = time.perf_counter()
        if bound.loaded is None or bound.mutates:
            if not bound.program_bytes:
                data = (batch_dir / "program.pt2").read_bytes()
                if hashlib.sha256(data).hexdigest() != bound.program_sha256:
                    result["reason"] = "program file does not match its announced hash"
                    result["_fatal"] = True
                    return result
                bound.program_bytes = data
            try:
                bound.loaded = load_program(bound.program_bytes)
            except BadInput as exc:
                result["reason"] = f"program refused: {exc}"
                return result
            bound.mutates = _mutates_state(bound.loaded.program)
        loaded = bound.loaded
        try:
            inputs = load_tensors((batch_dir / f"inputs.{index}.safetensors").read_bytes(),
                                  "args")
        except BadInput as exc:
            result["reason"] = f"inputs refused: {exc}"
            return result
        try:
            check_inputs(loaded.inputs, inputs)  # the client's check before paying: same rule
        except BadInput as exc:
            result["reason"] = str(exc)
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
        (batch_dir / f"output.{index}.safetensors").write_bytes(data)
        result["ok"] = True
        return result
    except MemoryError:
        result["reason"] = f"job exceeded its memory limit of {memory_limit_mb} MB"
        result["_fatal"] = True
        return result
    except Exception as exc:  # noqa: BLE001 - any failure of a stranger's program is reported
        text = str(exc)
        if any(hint in text for hint in MEMORY_HINTS):
            result["reason"] = f"job exceeded its memory limit of {memory_limit_mb} MB"
            result["_fatal"] = True
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
