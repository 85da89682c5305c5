"""Verification of training jobs by segments (``mesh bench train-verify``).

Two real training runs: an MLP on scikit-learn's bundled digits images (1,797 8x8 images, no
download) and a small character-level transformer on the Python standard library's own
sources. Each is exported with its loss (:func:`meshcompute.execution.programs.export_program`)
and trained by :func:`meshcompute.execution.training.run_steps` from the loaded program.

Honest workers differ from the verifier's reference (1 thread, whole batches) only in how they
compute: 2 and 4 threads, and gradient accumulation over two micro-batches. Every segment of
every honest run is recomputed by the reference from the worker's own checkpoint before it and
compared with the worker's checkpoint after it: any disagreement is a false accusation.

The cheats, each a whole run: fewer steps than asked (half of each segment), a lower learning
rate, part of the shard, another shard, the initial state returned, noise added to the final
weights, steps computed in float16 or bfloat16 (autocast) when float32 was asked, a neighbour's
result (the same job with another seed), and the second half of the checkpoints extrapolated
from the first half. Each is audited as a drawn audit would: the last segment and one more
drawn from a seed. ``verify_cost_ratio`` is the steps the verifier recomputes over the steps
the worker ran at those default audit settings.

An appeal is judged step by step from the worker's own states
(:func:`meshcompute.execution.training.check_links`): every step of every honest run is judged
so (``honest_steps``, ``step_false_positives``), and ``step_record_overhead`` is what keeping
the hash of the state after every step (the worker's step records) adds to a run's time.
"""

from __future__ import annotations

import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from torch import nn

from meshcompute.core.training import (
    DEFAULT_AUDITED_SEGMENTS,
    DEFAULT_TRAINING_TOLERANCE,
    TrainingPlan,
    audit_segments,
    segments,
    validate_plan,
)
from meshcompute.execution.loader import load_program
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import (
    check_links,
    check_segment,
    initial_state,
    links_in_process,
    run_steps,
    state_bytes,
)
from meshcompute.mesh.models import MLPClassifier

TRAINING_TOLERANCE = DEFAULT_TRAINING_TOLERANCE
AUDITED_SEGMENTS = DEFAULT_AUDITED_SEGMENTS
HONEST_VARIANTS = {"threads_2": {"threads": 2}, "threads_4": {"threads": 4},
                   "micro_batches_2": {"threads": 1, "micro_batches": 2}}
CHEATS = ("fewer_steps", "lower_lr", "part_of_shard", "other_shard", "initial_state",
          "noise_final", "float16_steps", "bfloat16_steps", "neighbour_result", "extrapolated")


class CharTransformer(nn.Module):
    """One causal attention block over bytes (vocabulary 256), next-character loss."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(256, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        h = self.embed(x)
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        split = [z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v)]
        att = nn.functional.scaled_dot_product_attention(*split, is_causal=True)
        h = h + self.out(att.transpose(1, 2).reshape(b, t, -1))
        h = h + self.ff(self.norm2(h))
        logits = self.head(h)
        return nn.functional.cross_entropy(logits.reshape(b * t, 256), y.reshape(b * t))


def _digits() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return [x[:896], y[:896]], [x[896:1792], y[896:1792]]


def _text(seq: int = 32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    raw = b"".join((stdlib / name).read_bytes() for name in ("textwrap.py", "string.py"))
    data = torch.tensor(list(raw[: (len(raw) // (seq + 1)) * (seq + 1)]), dtype=torch.long)
    rows = data.reshape(-1, seq + 1)
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    half = min(len(x) // 2, 512)
    return [x[:half], y[:half]], [x[half:2 * half], y[half:2 * half]]


FAMILIES = {
    "digits_mlp": (lambda: MLPClassifier(d_in=64, d_hidden=64, d_out=10, depth=2), _digits,
                   {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "steps": 96,
                    "batch_size": 32, "seed": 7, "checkpoint_every": 4}),
    "char_transformer": (CharTransformer, _text,
                         {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                          "schedule": {"kind": "cosine", "warmup_steps": 8}, "steps": 96,
                          "batch_size": 16, "seed": 11, "checkpoint_every": 4}),
}


def _export(family: str) -> tuple[bytes, list[torch.Tensor], list[torch.Tensor], TrainingPlan]:
    make, load_data, plan_doc = FAMILIES[family]
    torch.manual_seed(1234)
    shard, other = load_data()
    model = make().train()
    program = export_program(model, tuple(t[:4] for t in shard))
    return program, shard, other, validate_plan(plan_doc)


class _Result:
    """A worker's claimed result: the checkpoint after each segment and the loss curve."""

    def __init__(self, checkpoints: list[bytes], losses: list[float]) -> None:
        self.checkpoints = checkpoints
        self.losses = losses
        self.step_states: list[bytes] = []


def _run(program: Any, data: list[torch.Tensor], plan: TrainingPlan, threads: int = 1,
         micro_batches: int = 1, autocast: torch.dtype | None = None,
         record: str | None = None) -> _Result:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if autocast is None:
            run = run_steps(program, data, plan, micro_batches=micro_batches, record=record)
        else:
            with torch.autocast("cpu", dtype=autocast):
                run = run_steps(program, data, plan, micro_batches=micro_batches)
    finally:
        torch.set_num_threads(saved)
    result = _Result(run.checkpoints, run.losses)
    result.step_states = run.step_states
    return result


def _step_checks(loaded: Any, shard: list[torch.Tensor], plan: TrainingPlan,
                 variants: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Every step of each honest variant judged from the worker's own state before it, as an
    appeal judges: (steps judged, steps failed, our second runs)."""
    links = links_in_process(loaded, shard, plan)
    judged = failed = seconds = 0
    for setup in variants:
        states = _run(loaded, shard, plan, record="states", **setup).step_states
        for start, end in segments(plan):
            chain = [states[start - 1] if start > 0 else None, *states[start:end]]
            check = check_links(chain, start, TRAINING_TOLERANCE, links)
            judged += end - start
            failed += not check.agree
            seconds += check.steps_run - (end - start)
    return judged, failed, seconds


def _record_overhead(loaded: Any, shard: list[torch.Tensor], plan: TrainingPlan) -> float:
    """A run's time with the step records over its time without (the best of three each)."""
    times: dict[str | None, float] = {}
    for record in (None, "hashes") * 3:
        began = time.perf_counter()
        run_steps(loaded, shard, plan, record=record)
        spent = time.perf_counter() - began
        times[record] = min(times.get(record, spent), spent)
    return times["hashes"] / times[None] - 1.0


def _segmentwise(program: Any, data: list[torch.Tensor], plan: TrainingPlan,
                 steps_of: Any) -> _Result:
    """A run whose every segment does only ``steps_of(start, end)`` of its steps and claims
    the state it reached as the segment's checkpoint (its loss curve padded)."""
    checkpoints: list[bytes] = []
    losses: list[float] = []
    state: bytes | None = None
    for start, end in segments(plan):
        stop = start + max(1, steps_of(start, end))
        run = run_steps(program, data, plan, state, start=start, end=stop)
        losses += run.losses + [run.losses[-1]] * (end - stop)
        state = run.last_state
        checkpoints.append(state)
    return _Result(checkpoints, losses)


def _scaled(a: bytes, b: bytes, t: float) -> bytes:
    """``a + t * (b - a)`` tensor by tensor."""
    ta, tb = st_load(a), st_load(b)
    return state_bytes({k: ta[k] + t * (tb[k] - ta[k]) for k in ta})


def _cheat(name: str, program: bytes, shard: list[torch.Tensor], other: list[torch.Tensor],
           plan: TrainingPlan, honest: _Result) -> _Result:
    if name == "fewer_steps":
        return _segmentwise(program, shard, plan, lambda s, e: (e - s) // 2)
    if name == "lower_lr":
        doc = plan.to_json()
        doc["optimizer"] = {**doc["optimizer"], "lr": doc["optimizer"]["lr"] * 0.5}
        return _run(program, shard, validate_plan(doc))
    if name == "part_of_shard":
        return _run(program, [t[: len(t) // 2] for t in shard], plan)
    if name == "other_shard":
        return _run(program, other, plan)
    if name == "initial_state":
        start = state_bytes(initial_state(load_program(program), plan))
        return _Result([start] * len(honest.checkpoints), honest.losses)
    if name == "noise_final":
        final = st_load(honest.checkpoints[-1])
        gen = torch.Generator().manual_seed(5)
        # in name order: safetensors gives a file's tensors in no fixed order
        noisy = {k: final[k] + 1e-3 * final[k].std() * torch.randn(final[k].shape, generator=gen)
                 for k in sorted(final)}
        return _Result(honest.checkpoints[:-1] + [state_bytes(noisy)], honest.losses)
    if name in ("float16_steps", "bfloat16_steps"):
        dtype = torch.float16 if name == "float16_steps" else torch.bfloat16
        return _run(program, shard, plan, autocast=dtype)
    if name == "neighbour_result":
        return _run(program, shard, validate_plan({**plan.to_json(), "seed": plan.seed + 1}))
    if name == "extrapolated":
        half = len(honest.checkpoints) // 2
        first = state_bytes(initial_state(load_program(program), plan))
        mid = honest.checkpoints[half - 1]
        made = [_scaled(first, mid, (i + 1) / half) for i in range(half, len(honest.checkpoints))]
        return _Result(honest.checkpoints[:half] + made, honest.losses)
    raise ValueError(name)


def _audit(program: Any, shard: list[torch.Tensor], plan: TrainingPlan, result: _Result,
           which: list[int], margin: bool = False) -> tuple[bool, list[Any]]:
    """Recompute segments ``which`` of ``result``; True when every one agrees. ``margin``:
    always judge with our own spread (the share of the final rule's allowance used)."""
    checks = []
    for index in which:
        before = result.checkpoints[index - 1] if index > 0 else None
        checks.append(check_segment(program, shard, plan, index, before,
                                    result.checkpoints[index], result.losses,
                                    TRAINING_TOLERANCE, always_second=margin))
    return all(c.agree for c in checks), checks


def run_train_verify_bench(families: tuple[str, ...] = tuple(FAMILIES)) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(1)
    honest_cases = false_positives = 0
    worst_honest = 0.0
    cheat_rows: list[dict[str, Any]] = []
    per_family: dict[str, Any] = {}
    audited_steps = worker_steps = 0
    honest_steps = step_false_positives = 0
    for family in families:
        program, shard, other, plan = _export(family)
        loaded = load_program(program)
        reference = _run(loaded, shard, plan)
        row: dict[str, Any] = {"steps": plan.steps, "segments": len(segments(plan)),
                               "first_loss": round(reference.losses[0], 4),
                               "final_loss": round(reference.losses[-1], 4)}
        honest = [_run(loaded, shard, plan, **setup) for setup in HONEST_VARIANTS.values()]
        for result in honest:
            for index in range(len(segments(plan))):
                honest_cases += 1
                agree, (check,) = _audit(loaded, shard, plan, result, [index], margin=True)
                false_positives += not agree
                worst_honest = max(worst_honest, check.used)
        which = audit_segments(plan, f"bench:{family}".encode(), AUDITED_SEGMENTS)
        for result in honest:  # what a default audit of each honest worker costs
            _, checks = _audit(loaded, shard, plan, result, which)
            audited_steps += sum(c.steps_run for c in checks)
            worker_steps += plan.steps
        mildest = float("inf")
        for cheat in CHEATS:
            result = _cheat(cheat, program, shard, other, plan, reference)
            agree, checks = _audit(loaded, shard, plan, result, which)
            ratio = max(c.used for c in _audit(loaded, shard, plan, result, which, True)[1])
            mildest = min(mildest, ratio)
            bad = [c.first_bad_step for c in checks if not c.agree]
            cheat_rows.append({"family": family, "cheat": cheat, "detected": not agree,
                               "tolerance_used": _num(ratio),
                               "first_bad_step": bad[0] if bad else None})
        row["mildest_cheat_tolerance_used"] = _num(mildest)
        steps, failed, seconds = _step_checks(loaded, shard, plan,
                                              list(HONEST_VARIANTS.values()))
        honest_steps += steps
        step_false_positives += failed
        row["honest_steps_needing_our_second_run"] = seconds
        row["step_record_overhead"] = round(_record_overhead(loaded, shard, plan), 3)
        per_family[family] = row
    detected = sum(1 for r in cheat_rows if r["detected"])
    mildest_all = min((r["tolerance_used"] or float("inf")) for r in cheat_rows)
    return {
        "tolerance": TRAINING_TOLERANCE,
        "families": list(families),
        "honest_cases": honest_cases,
        "false_positives": false_positives,
        "cheat_cases": len(cheat_rows),
        "cheats_detected": detected,
        "worst_honest_tolerance_used": _num(worst_honest),
        "mildest_cheat_tolerance_used": _num(mildest_all),
        "margin_factor": _num(mildest_all / worst_honest) if worst_honest > 0 else None,
        "audited_segments": AUDITED_SEGMENTS,
        "verify_cost_ratio": round(audited_steps / worker_steps, 3),
        "honest_steps": honest_steps,
        "step_false_positives": step_false_positives,
        "step_record_overhead": max(r["step_record_overhead"] for r in per_family.values()),
        "per_family": per_family,
        "cheats": cheat_rows,
        "torch": torch.__version__,
        "runtime_s": round(time.perf_counter() - started, 2),
    }


def _num(x: float) -> float | None:
    return float(f"{x:.4g}") if np.isfinite(x) else None
