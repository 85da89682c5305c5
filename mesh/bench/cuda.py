"""A provider's GPU, as the market uses it (``python -m meshcompute.mesh.bench cuda``).

Needs a CUDA device; run it where one is (it is not part of ``make bench``). It measures:

- what the worker advertises (:func:`meshcompute.worker.hardware.detect_hardware`) and whether
  its jobs can be sandboxed here, with the driver folders a sandboxed CUDA job is given;
- for each model family, one job run by the worker's own runner on ``cuda`` and on ``cpu``
  (the verifier's device) in fresh job processes: wall and compute time, and the verifier's
  comparison of the two under the default tolerance with the rounding floors, as an audit
  applies it (a CUDA worker audited by a CPU verifier must pass);
- the verification bench with the GPU as one more honest variant, and the grief set with a
  CUDA worker audited by the real Auditor (:mod:`meshcompute.mesh.bench.verify`);
- training (:func:`run_cuda_training`): the two training families of ``mesh bench
  train-verify`` trained once on ``cuda`` by the worker's training runner in a fresh sandboxed
  process (and once in this process, to see whether the GPU gives the same bytes twice), then
  EVERY segment of the GPU's run audited on the CPU as the verifier audits one: recomputed from
  the GPU run's checkpoint before it and judged by
  :func:`meshcompute.execution.training.judge_segment` (the training tolerance, plus our own
  spread, the second run in two micro-batches as :func:`~meshcompute.execution.training.
  check_segment` makes it, when the first comparison fails). A GPU worker whose honest segments
  fail here would be slashed by a CPU verifier: training specs may ask for ``cuda`` only while
  every segment passes with a clear margin.

``inference=False`` or ``training=False`` leaves that part out (the training part alone takes
seconds; the inference part minutes).
"""

from __future__ import annotations

import math
import time
from typing import Any

from meshcompute.core.spec import DEFAULT_TOLERANCE
from meshcompute.errors import ConfigError

#: Batch rows per family: large enough that the GPU's compute shows past process start.
BATCH = {"mlp": 4096, "convnet": 512, "transformer": 1024}


def run_cuda_bench(*, threads: int = 4, verify: bool = True, inference: bool = True,
                   training: bool = True) -> dict[str, Any]:
    """Run the GPU checks; raises :class:`ConfigError` where torch sees no CUDA device."""
    import torch

    from meshcompute.execution.sandbox import cuda_driver_dirs, sandbox_available
    from meshcompute.worker.hardware import detect_hardware

    _require_cuda("cuda")
    started = time.perf_counter()
    hardware = detect_hardware()
    report: dict[str, Any] = {
        "gpu": hardware.gpus[0].name if hardware.gpus else None,
        "gpu_memory_mb": hardware.gpus[0].memory_mb if hardware.gpus else None,
        "advertised_device": hardware.device,
        "torch": hardware.torch,
        "cuda_runtime": torch.version.cuda,
        "sandboxed": sandbox_available(),
        "cuda_driver_dirs_bound": list(cuda_driver_dirs()),
        "job_threads": threads,
    }
    if inference:
        report.update(_inference(threads, verify))
    if training:
        report.update(run_cuda_training(threads=threads))
    report["runtime_s"] = round(time.perf_counter() - started, 2)
    return report


def _require_cuda(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device here (torch.cuda.is_available() is False); run "
                          "`mesh bench cuda` on a machine with an NVIDIA GPU and a CUDA torch")


def _inference(threads: int, verify: bool) -> dict[str, Any]:
    """Each model family's job on ``cuda`` and on ``cpu``, the CPU's audit of the GPU's output;
    with ``verify`` the verification bench and the grief set with a CUDA worker."""
    from meshcompute.execution.programs import export_program, save_tensors
    from meshcompute.execution.sandbox import JobRunner
    from meshcompute.mesh.models import FAMILIES, build_model, example_inputs
    from meshcompute.verifier.outputs import compare_outputs

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
    return report


def run_cuda_training(*, device: str = "cuda", families: tuple[str, ...] | None = None,
                      threads: int = 4) -> dict[str, Any]:
    """The training families of ``mesh bench train-verify`` (all by default) trained on
    ``device`` by the worker's runner, every segment then audited on the CPU as the verifier
    audits one (``device="cpu"`` runs the same measurement without a GPU: the tests').
    ``training_worst_first_used`` is the largest share of the tolerance a GPU checkpoint uses
    against our recomputation; ``training_worst_final_used`` the same under the final rule
    (the tolerance plus our own spread), whatever the first comparison said."""
    import torch

    from meshcompute.mesh.bench.train_verify import FAMILIES

    _require_cuda(device)
    saved = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    # the verifier's reference: one thread, whole batches; float32 steps on the GPU (no TF32)
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        rows = {family: _train_family(family, device, threads)
                for family in (families or tuple(FAMILIES))}
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]
    judged = sum(r["segments_judged"] for r in rows.values())
    passed = sum(r["segments_passed"] for r in rows.values())
    return {
        "training_device": device,
        "training_segments": sum(r["segments"] for r in rows.values()),
        "training_segments_judged": judged,
        "training_segments_passed": passed,
        "training_worst_first_used": _worst(rows, "worst_first_used"),
        "training_worst_final_used": _worst(rows, "worst_final_used"),
        "training_worst_own_spread_used": _worst(rows, "worst_own_spread_used"),
        "training_unjudgeable_segments": sum(r["unjudgeable"] for r in rows.values()),
        "training_runs_failed": sum(1 for r in rows.values() if r.get("run_failed")),
        "training": rows,
    }


def _train_family(family: str, device: str, threads: int) -> dict[str, Any]:
    """One family: the run on ``device`` in the sandbox and in this process, every segment of
    the sandboxed run (the in-process one where the sandbox failed) audited on the CPU."""
    import torch

    from meshcompute.core.training import segments
    from meshcompute.execution.loader import load_program
    from meshcompute.execution.programs import save_tensors
    from meshcompute.execution.train_runner import run_training_job
    from meshcompute.execution.training import run_steps
    from meshcompute.mesh.bench.train_verify import _export

    program, shard, _, plan = _export(family)
    loaded = load_program(program)
    row: dict[str, Any] = {"steps": plan.steps, "segments": len(segments(plan))}
    outcome = run_training_job(program, save_tensors(shard), plan.to_json(), device=device,
                               threads=threads, time_limit_s=600, memory_limit_mb=8192,
                               max_output_bytes=1 << 30, allow_unsandboxed=True)
    if outcome.ok:
        row.update(wall_s=round(outcome.wall_s, 3), compute_s=round(outcome.compute_s, 4))
    else:
        row["sandbox_failed"] = (outcome.reason or "")[:300]
    started = time.perf_counter()
    try:
        here = run_steps(loaded, shard, plan, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        row["in_process_s"] = round(time.perf_counter() - started, 4)
    except Exception as exc:  # noqa: BLE001 - recorded: the measurement says what failed
        here = None
        row["in_process_failed"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if outcome.ok and here is not None:
        row["in_process_same_bytes"] = here.checkpoints == outcome.checkpoints
    claimed = (outcome.checkpoints, outcome.losses, outcome.diverged_at) if outcome.ok else (
        (here.checkpoints, here.losses, here.diverged_at) if here is not None else None)
    row["judged_run"] = "sandbox" if outcome.ok else ("in_process" if here is not None
                                                      else None)
    if claimed is None:
        row.update(run_failed=True, segments_judged=0, segments_passed=0, unjudgeable=0)
        return row
    checkpoints, losses, diverged_at = claimed
    reference = run_steps(loaded, shard, plan)  # the whole training on the CPU, for its loss
    row.update(first_loss=round(losses[0], 4), final_loss=round(losses[-1], 4),
               cpu_final_loss=round(reference.losses[-1], 4), diverged_at=diverged_at)
    checks = [_audit_segment(loaded, shard, plan, index,
                             checkpoints[index - 1] if index else None, checkpoint)
              for index, checkpoint in enumerate(checkpoints)]
    worst = max(checks, key=lambda c: c["final_used"], default=None)
    row.update(
        segments_judged=len(checks),
        segments_passed=sum(1 for c in checks if c["passed"]),
        unjudgeable=sum(1 for c in checks if c["unjudgeable"]),
        worst_first_used=_num(max((c["first_used"] for c in checks), default=0.0)),
        worst_final_used=_num(worst["final_used"]) if worst else None,
        worst_final_segment=worst["index"] if worst else None,
        worst_own_spread_used=_num(max((c["own_spread_used"] for c in checks), default=0.0)),
        failed_segments=[{"index": c["index"], "first_used": _num(c["first_used"]),
                          "final_used": _num(c["final_used"]), "reason": c["reason"]}
                         for c in checks if not c["passed"]],
    )
    return row


def _worst(rows: dict[str, Any], key: str) -> float | None:
    values = [r[key] for r in rows.values() if r.get(key) is not None]
    return max(values) if values else None


def _num(x: float) -> float | None:
    """Four significant digits; None for a value that is not finite (JSON has no infinity)."""
    return float(f"{x:.4g}") if math.isfinite(x) else None


def _audit_segment(loaded: Any, shard: list[Any], plan: Any, index: int,
                   before: bytes | None, theirs: bytes) -> dict[str, Any]:
    """Segment ``index`` of a claimed run recomputed on the CPU from ``before`` and judged as
    the verifier judges it (:func:`~meshcompute.execution.training.judge_segment`), plus the
    margins: the first comparison's share of the tolerance, the final rule's (our second run
    made whatever the first said) and our own two runs' spread."""
    from meshcompute.core.training import segments
    from meshcompute.execution.training import compare_states, judge_segment, run_steps
    from meshcompute.mesh.bench.train_verify import TRAINING_TOLERANCE

    start, end = segments(plan)[index]
    ours = run_steps(loaded, shard, plan, before, start=start, end=end)
    if ours.diverged_at is not None:
        return {"index": index, "passed": False, "unjudgeable": True,
                "first_used": float("inf"), "final_used": float("inf"),
                "own_spread_used": float("inf"),
                "reason": f"our recomputation diverged at step {ours.diverged_at}"}
    halves = 2 if plan.batch_size % 2 == 0 else 1
    made: list[bytes] = []

    def second() -> bytes:
        if not made:
            made.append(run_steps(loaded, shard, plan, before, start=start, end=end,
                                  micro_batches=halves).last_state)
        return made[0]

    verdict = judge_segment(ours.final_state, theirs, TRAINING_TOLERANCE, second)
    margin = judge_segment(ours.final_state, theirs, TRAINING_TOLERANCE, second,
                           always_second=True)
    passed = verdict.unjudgeable is None and verdict.check.agree
    return {
        "index": index, "passed": passed, "unjudgeable": verdict.unjudgeable is not None,
        "first_used": compare_states(ours.final_state, theirs, TRAINING_TOLERANCE).used,
        "final_used": margin.check.used,
        "own_spread_used": compare_states(ours.final_state, second(), TRAINING_TOLERANCE).used,
        "reason": (verdict.unjudgeable or verdict.check).reason[:200],
    }
