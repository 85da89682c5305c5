"""GPU check: one worker job on CUDA through run_job, compared with the same job on CPU.

Unattended: ``.venv/bin/python scripts/gpu_check.py [--family transformer] [--batch 4096]``.
Prints one JSON object (timings, max abs/rel difference, the verdict under
``meshcompute.core.spec.DEFAULT_TOLERANCE``) and exits 0 when the outputs agree, 1 when they do
not, and 0 with ``{"skipped": ...}`` when no CUDA device is present. float32 with TF32 off (the
job process sets ``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32`` to False).
Uses the bubblewrap sandbox when available, else runs unsandboxed (a trusted, built-in model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from meshcompute.core.spec import DEFAULT_TOLERANCE
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import run_job, sandbox_available
from meshcompute.mesh.models import FAMILIES, build_model, example_inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="transformer", choices=FAMILIES)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device available (torch.cuda.is_available() is "
                                     "False)", "torch": torch.__version__}))
        return 0
    program = export_program(build_model(args.family), example_inputs(args.family, 4))
    inputs = save_tensors(example_inputs(args.family, args.batch, seed=1))
    limits = {"time_limit_s": 300.0, "memory_limit_mb": 8192, "max_output_bytes": 1 << 30,
              "threads": args.threads, "allow_unsandboxed": True}
    outcomes = {}
    for device in ("cuda", "cpu"):
        started = time.perf_counter()
        outcome = run_job(program, inputs, device=device, **limits)  # type: ignore[arg-type]
        outcomes[device] = outcome
        if not outcome.ok:
            print(json.dumps({"ok": False, "device": device, "reason": outcome.reason,
                              "seconds": time.perf_counter() - started}))
            return 1
    gpu = load_tensors(outcomes["cuda"].output or b"", "out")
    cpu = load_tensors(outcomes["cpu"].output or b"", "out")
    rtol, atol = float(DEFAULT_TOLERANCE["rtol"]), float(DEFAULT_TOLERANCE["atol"])
    max_abs = max(float((g - c).abs().max()) for g, c in zip(gpu, cpu, strict=True))
    max_rel = max(float(((g - c).abs() / c.abs().clamp_min(1e-12)).max())
                  for g, c in zip(gpu, cpu, strict=True))
    agree = all(torch.allclose(g, c, rtol=rtol, atol=atol) for g, c in zip(gpu, cpu, strict=True))
    print(json.dumps({
        "ok": agree, "family": args.family, "batch": args.batch, "dtype": "float32",
        "tf32": False, "tolerance": DEFAULT_TOLERANCE, "max_abs_diff": max_abs,
        "max_rel_diff": max_rel, "sandboxed": sandbox_available(),
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cuda_wall_s": outcomes["cuda"].wall_s, "cuda_compute_s": outcomes["cuda"].compute_s,
        "cpu_wall_s": outcomes["cpu"].wall_s, "cpu_compute_s": outcomes["cpu"].compute_s,
        "cpu_threads": args.threads,
    }))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
