"""A provider's GPU, as the market uses it (``python -m meshcompute.mesh.bench cuda``).

Needs a CUDA device; run it where one is (it is not part of ``make bench``). It measures:

- what the worker advertises (:func:`meshcompute.worker.hardware.detect_hardware`) and whether
  its jobs can be sandboxed here, with the driver folders a sandboxed CUDA job is given;
- for each model family, one job run by the worker's own runner on ``cuda`` and on ``cpu``
  (the verifier's device) in fresh job processes: wall and compute time, and the verifier's
  comparison of the two under the default tolerance with the rounding floors, as an audit
  applies it (a CUDA worker audited by a CPU verifier must pass);
- the verification bench with the GPU as one more honest variant, and the grief set with a
  CUDA worker audited by the real Auditor (:mod:`meshcompute.mesh.bench.verify`).
"""

from __future__ import annotations

import time
from typing import Any

from meshcompute.core.spec import DEFAULT_TOLERANCE
from meshcompute.errors import ConfigError

#: Batch rows per family: large enough that the GPU's compute shows past process start.
BATCH = {"mlp": 4096, "convnet": 512, "transformer": 1024}


def run_cuda_bench(*, threads: int = 4, verify: bool = True) -> dict[str, Any]:
    """Run the GPU checks; raises :class:`ConfigError` where torch sees no CUDA device."""
    import torch

    from meshcompute.execution.programs import export_program, save_tensors
    from meshcompute.execution.sandbox import JobRunner, cuda_driver_dirs, sandbox_available
    from meshcompute.mesh.models import FAMILIES, build_model, example_inputs
    from meshcompute.verifier.outputs import compare_outputs
    from meshcompute.worker.hardware import detect_hardware

    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device here (torch.cuda.is_available() is False); run "
                          "`mesh bench cuda` on a machine with an NVIDIA GPU and a CUDA torch")
    started = time.perf_counter()
    hardware = detect_hardware()
    sandboxed = sandbox_available()
    jobs: dict[str, Any] = {}
    for family in FAMILIES:
        program = export_program(build_model(family), example_inputs(family, 4))
        inputs = save_tensors(example_inputs(family, BATCH[family], seed=1))
        outputs: dict[str, bytes] = {}
        row: dict[str, Any] = {"batch": BATCH[family]}
        for device in ("cuda", "cpu"):
            with JobRunner(device=device, threads=threads, warm=False,
                           allow_unsandboxed=True) as runner:
                outcome = runner.run(program, inputs, time_limit_s=300, memory_limit_mb=8192,
                                     max_output_bytes=1 << 30)
            if not outcome.ok or outcome.output is None:
                row[f"{device}_failed"] = outcome.reason
                continue
            outputs[device] = outcome.output
            row[f"{device}_wall_s"] = round(outcome.wall_s, 3)
            row[f"{device}_compute_s"] = round(outcome.compute_s, 4)
        if len(outputs) == 2:
            audit = compare_outputs(outputs["cpu"], outputs["cuda"], dict(DEFAULT_TOLERANCE))
            row.update(audit_passes=audit.agree, max_abs_diff=audit.max_abs,
                       max_rel_diff=audit.max_rel, audit_reason=audit.reason[:200],
                       same_bytes=outputs["cpu"] == outputs["cuda"])
        jobs[family] = row
    report: dict[str, Any] = {
        "gpu": hardware.gpus[0].name if hardware.gpus else None,
        "gpu_memory_mb": hardware.gpus[0].memory_mb if hardware.gpus else None,
        "advertised_device": hardware.device,
        "torch": hardware.torch,
        "cuda_runtime": torch.version.cuda,
        "sandboxed": sandboxed,
        "cuda_driver_dirs_bound": list(cuda_driver_dirs()),
        "job_threads": threads,
        "families_run_on_cuda": sum(1 for r in jobs.values() if "cuda_wall_s" in r),
        "cuda_audits_passed": sum(1 for r in jobs.values() if r.get("audit_passes")),
        "jobs": jobs,
    }
    if verify:
        from meshcompute.mesh.bench.verify import run_verify_bench

        bench = run_verify_bench(include_cuda=True)
        cuda_rows = [r for r in bench.get("grief_rows", []) if r["worker"] == "cuda"]
        report.update(
            verify_honest_cases=bench["honest_cases"],
            verify_false_positives=bench["false_positives"],
            verify_cheats_detected=f"{bench['cheats_detected']} of {bench['cheat_cases']}",
            verify_worst_honest_vs_cuda={k: v for k, v in bench["worst_honest_by_variant"].items()
                                         if "cuda" in k},
            verify_honest_headroom_factor=bench["honest_headroom_factor"],
            grief_cuda_cases=len(cuda_rows),
            grief_cuda_outcomes={k: sum(1 for r in cuda_rows if r["outcome"] == k)
                                 for k in ("pass", "void", "fail", "error")},
            grief_honest_workers_slashed=bench.get("honest_workers_slashed"),
            grief_cuda_rows=[{k: r[k] for k in ("case", "outcome", "reason")}
                             for r in cuda_rows],
        )
    report["runtime_s"] = round(time.perf_counter() - started, 2)
    return report
