"""False positives and detection of the tolerance policy (``mesh bench verify``).

For each (model, input) case from the three model families (``meshcompute.mesh.models``), the job
is computed honestly in several harmless ways:

- ``threads_1`` (the reference), ``threads_2`` and ``threads_<all cores>`` (``torch.set_num_threads``;
  the report counts the cases whose output hash really changed with the thread count),
- ``batch_split``: shards of 1, ~b/3 and the rest, run separately and concatenated,
- ``cuda`` when a GPU is present (TF32 off, as float32 jobs require).

Every ordered pair of honest results is one honest audit (the first plays the verifier's
recomputation, the second the worker's output): any disagreement is a false accusation. Then
each cheat is audited against every honest result:

- ``random_output`` (same shape, mean and spread), ``all_zeros``, ``scaled_1.01`` (an honest
  output times 1.01),
- ``skipped_layer``: the model with one layer removed (MLP: a hidden Linear+GELU; convnet: the
  first ReLU; transformer: the feed-forward block),
- ``float16_returned``: computed in float16 and returned as float16,
- ``float16_cast_back``: computed in float16 and cast back to float32 (caught only by the
  tolerance, which is what makes the default tolerance matter),
- ``different_input``: the same program run on another input,
- ``copied_earlier_result``: the result of an earlier job of the same program whose input
  differed from this one in its last row only (the hardest copy to spot).

For an ``allclose`` policy the report also gives how much of the tolerance budget the worst
honest difference uses and how far over it the mildest cheat lies
(:func:`meshcompute.core.tolerance.allclose_ratio`), and sweeps a range of policies.

How the default was chosen (2 CPU cores, torch 2.13 CPU, 24 cases): the worst honest
difference used 1.0% of an ``allclose(rtol=1e-4, atol=1e-5)`` budget (max abs 1.1e-7, the
512x2048 MLP at 1 vs 2 threads) and the mildest cheat, float16 computed and cast back, used
388% of it (max abs 5.5e-5). Any ``allclose`` with ``atol = rtol / 10`` and rtol between about
1e-6 and 4e-4 separates them; ``rtol=1e-3`` already lets float16 through. The default
``rtol=3e-5, atol=3e-6`` sits near the middle of that window on a log scale, leaning towards
honest workers: about 30x headroom for honest differences not measured here (other BLAS
builds) and about 13x over the mildest cheat. On an NVIDIA H200 (TF32 off; ``mesh bench
cuda``) the worst CUDA-vs-CPU difference used 6.2% of the default budget: 16x headroom.

``floored``: the same audits through the rounding floors that audits apply
(:func:`meshcompute.core.tolerance.compare_floored`), for the policy and for ``exact``: no
false positive, every cheat caught, and how much of the floor the worst honest difference and
the mildest cheat use (the measurement behind ``FLOOR_ULPS``).

The grief set (:func:`run_grief_bench`, the verification game): a client that wants honest
workers slashed posts a program built to magnify rounding (``frac(65536 * gelu(linear(x)))``,
a large-magnitude cancellation, a deep residual stack at an argmax tie, that tie decided inside
the program) or a tolerance under rounding (``exact`` on floats, ``allclose`` far below the
floor). Each case runs an honest worker variant in the real sandboxed runner (2 or 4 threads,
the batch split in two halves, ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41``)
and then the real audit decision (Auditor, Recomputer, its alternate setup as confirmation):
pass, void (NotReproducible) or fail. ``honest_workers_slashed`` counts the fails and must be
0. Cheat controls: a cheater (plausible junk) on each program and tolerance must fail on the
ordinary MLP even under ``exact``; on a chaotic program it may be void (it cannot be judged).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise, permutations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meshcompute.core.spec import DEFAULT_TOLERANCE, validate_tolerance
from meshcompute.core.tolerance import (
    FLOOR_ULPS,
    STABILITY_MARGIN,
    allclose_ratio,
    compare,
    compare_floored,
    effective_policy,
    tolerance_used,
)
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.verifier.outputs import to_numpy

CHEATS = (
    "random_output",
    "all_zeros",
    "scaled_1.01",
    "skipped_layer",
    "float16_returned",
    "float16_cast_back",
    "different_input",
    "copied_earlier_result",
)

#: Policies evaluated in the sweep, loosest first (atol = rtol / 10).
SWEEP = (
    {"kind": "exact"},
    *({"kind": "allclose", "rtol": r, "atol": float(f"{r / 10:g}")}
      for r in (1e-7, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3, 1e-2)),
    {"kind": "argmax", "min_agreement": 1.0},
)


@dataclass(frozen=True)
class Case:
    family: str
    """``mlp_large`` is the MLP at 512x2048 (DESIGN.md's measurement), others as in models."""
    seed: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.family}/seed{self.seed}/b{self.batch}"

    def model(self) -> nn.Module:
        if self.family == "mlp_large":
            return build_model("mlp", self.seed, d_in=512, d_hidden=2048)
        return build_model(self.family, self.seed)

    def inputs(self, seed_offset: int = 0) -> tuple[torch.Tensor, ...]:
        seed = 100 + self.seed + seed_offset
        if self.family == "mlp_large":
            gen = torch.Generator().manual_seed(seed)
            return (torch.randn(self.batch, 512, generator=gen),)
        return example_inputs(self.family, self.batch, seed)


def default_cases() -> list[Case]:
    """24 cases, interleaved so that any prefix of 4 covers every family."""
    batches = {
        "mlp_large": (4, 64, 128),
        "mlp": (2, 32, 64),
        "convnet": (2, 16, 32),
        "transformer": (2, 16, 32),
    }
    out = []
    for seed in (1, 2):
        for index in range(3):
            for family, sizes in batches.items():
                out.append(Case(family, seed, sizes[index]))
    return out


def run_verify_bench(
    *,
    cases: int | None = None,
    policy: dict[str, Any] | None = None,
    include_cuda: bool | None = None,
    grief: int | None = None,
) -> dict[str, Any]:
    """Measure false accusations and detection under ``policy`` (default: DEFAULT_TOLERANCE)
    over the first ``cases`` default cases (all 24 when None). ``include_cuda`` None means
    "when a GPU is available".

    Then the same audits under the rounding floors (:func:`meshcompute.core.tolerance.
    compare_floored`: the policy and ``exact``, as audits apply them), and the grief set
    (:func:`run_grief_bench`): the first ``grief`` grief cases; None means all of them for the
    full bench and as many as ``cases`` for a reduced one, 0 none. ``runtime_s`` is the time
    of the model cases alone, ``grief_runtime_s`` that of the grief set."""
    started = time.perf_counter()
    policy = validate_tolerance(dict(policy or DEFAULT_TOLERANCE))
    selected = default_cases()[: cases or None]
    if not selected:
        raise ValueError("run_verify_bench needs at least one case")
    cuda = torch.cuda.is_available() if include_cuda is None else include_cuda
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("include_cuda=True but torch sees no CUDA device")
    all_cores = os.cpu_count() or 1
    thread_counts = sorted({1, 2, all_cores})
    ratio_ref = policy if policy["kind"] == "allclose" else {"rtol": 1e-4, "atol": 1e-5}

    honest_audits: list[_Audit] = []
    cheat_audits: list[_Audit] = []
    thread_hash_differs = 0
    split_hash_differs = 0
    saved_threads = torch.get_num_threads()
    try:
        for case in selected:
            honest = _honest_runs(case, thread_counts, cuda)
            hashes = {name: _hash(out) for name, out in honest.items()}
            thread_hash_differs += len({hashes[f"threads_{n}"] for n in thread_counts}) > 1
            split_hash_differs += hashes["batch_split"] != hashes["threads_1"]
            for ref_name, got_name in permutations(honest, 2):
                honest_audits.append(
                    _audit(case, f"{ref_name}->{got_name}", honest[ref_name], honest[got_name],
                           policy, ratio_ref)
                )
            for cheat, output in _cheats(case, honest).items():
                for ref_name, ref in honest.items():
                    cheat_audits.append(_audit(case, cheat, ref, output, policy, ratio_ref))
    finally:
        torch.set_num_threads(saved_threads)

    false_positives = [a for a in honest_audits if not a.agree]
    detected = [a for a in cheat_audits if not a.agree]
    by_type = {
        cheat: _rate([a for a in cheat_audits if a.label == cheat]) for cheat in CHEATS
    }
    worst = max(honest_audits, key=lambda a: (a.ratio, a.max_abs))
    comparable = [a for a in cheat_audits if np.isfinite(a.ratio)]
    mildest = min(comparable, key=lambda a: (a.ratio, a.max_abs)) if comparable else None
    sweep = [_sweep_row(p, honest_audits, cheat_audits) for p in SWEEP]
    report = {
        "policy": policy,
        "honest_cases": len(honest_audits),
        "false_positives": len(false_positives),
        "cheat_cases": len(cheat_audits),
        "cheats_detected": len(detected),
        "detection_rate_by_cheat": {k: v["rate"] for k, v in by_type.items()},
        "cheat_cases_by_type": {k: v["cases"] for k, v in by_type.items()},
        "model_input_cases": len(selected),
        "families": sorted({c.family for c in selected}),
        "honest_variants": ["threads_" + str(n) for n in thread_counts] + ["batch_split"]
        + (["cuda"] if cuda else []),
        "cuda_included": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "thread_counts": thread_counts,
        "cases_where_thread_count_changed_hash": thread_hash_differs,
        "cases_where_batch_split_changed_hash": split_hash_differs,
        "ratio_reference": {"rtol": ratio_ref["rtol"], "atol": ratio_ref["atol"]},
        "worst_honest": worst.summary(),
        "worst_honest_by_variant": _worst_by_variant(honest_audits),
        "mildest_cheat": mildest.summary() if mildest else None,
        "mildest_cheat_by_type": {
            cheat: min((a for a in comparable if a.label == cheat), key=lambda a: a.ratio).summary()
            for cheat in CHEATS if any(a.label == cheat for a in comparable)
        },
        "margin_factor": (
            round(mildest.ratio / worst.ratio, 2) if mildest and worst.ratio > 0 else None
        ),
        "honest_headroom_factor": round(1 / worst.ratio, 2) if worst.ratio > 0 else None,
        "cheat_headroom_factor": round(mildest.ratio, 2) if mildest else None,
        "policy_sweep": sweep,
        "false_positive_examples": [a.summary() for a in false_positives[:5]],
        "undetected_examples": [
            a.summary() for a in cheat_audits if a.agree
        ][:5],
        "torch": torch.__version__,
        "cpu_cores": all_cores,
        "runtime_s": round(time.perf_counter() - started, 2),
    }
    report.update(_floored_figures(policy, honest_audits, cheat_audits))
    chosen = grief_cases(cuda=cuda)
    count = (len(chosen) if cases is None else cases) if grief is None else grief
    if count > 0:
        report.update(run_grief_bench(chosen[:count]))
    return report


def _floored_figures(policy: dict[str, Any], honest: list[_Audit],
                     cheats: list[_Audit]) -> dict[str, Any]:
    """The audits above again, through the rounding floors, for the policy and for ``exact``
    (which the floor turns into allclose): honest audits must all pass, every cheat must
    still be caught. Each output's stored dtype is its numpy dtype here (float32 runs)."""
    rows = {}
    for name, chosen in (("policy", policy), ("exact", {"kind": "exact"})):
        def judge(a: _Audit, chosen: dict[str, Any] = chosen) -> bool:
            return compare_floored([a.expected], [a.got], chosen, [str(a.expected.dtype)]).agree

        fp = sum(1 for a in honest if not judge(a))
        missed = [a for a in cheats if judge(a)]
        def used(a: _Audit, chosen: dict[str, Any] = chosen) -> float:
            effective = effective_policy(chosen, [str(a.expected.dtype)], [a.expected])
            return tolerance_used([a.expected], [a.got], effective)

        worst = max((used(a) for a in honest), default=0.0)
        mildest = min((u for u in map(used, cheats) if np.isfinite(u)), default=math.inf)
        rows[name] = {
            "false_positives": fp, "cheats_detected": len(cheats) - len(missed),
            "cheat_cases": len(cheats), "worst_honest_tolerance_used": _num(worst),
            "mildest_cheat_tolerance_used": _num(mildest),
            "missed_by_type": {k: sum(1 for a in missed if a.label == k)
                               for k in CHEATS if any(a.label == k for a in missed)},
        }
    return {
        "floor_ulps": dict(FLOOR_ULPS),
        "stability_margin": STABILITY_MARGIN,
        "floored": rows,
    }


# ---------------------------------------------------------------- computing


def _run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*inputs)


def _honest_runs(case: Case, thread_counts: list[int], cuda: bool) -> dict[str, torch.Tensor]:
    model, inputs = case.model(), case.inputs()
    runs: dict[str, torch.Tensor] = {}
    for n in thread_counts:
        torch.set_num_threads(n)
        runs[f"threads_{n}"] = _run(model, inputs)
    torch.set_num_threads(max(thread_counts))
    b = case.batch
    bounds = [0, 1, 1 + max(1, b // 3), b]
    shards = [
        _run(model, tuple(x[lo:hi] for x in inputs))
        for lo, hi in pairwise(bounds) if hi > lo
    ]
    runs["batch_split"] = torch.cat(shards)
    if cuda:
        runs["cuda"] = _run_cuda(model, inputs)
    return runs


def _run_cuda(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = copy.deepcopy(model).to("cuda")
        out = _run(gpu, tuple(x.to("cuda") for x in inputs))
        torch.cuda.synchronize()
        return out.to("cpu")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _skip_one_layer(case: Case, model: nn.Module) -> nn.Module:
    cut = copy.deepcopy(model)
    if case.family in ("mlp", "mlp_large"):
        cut.net[2] = nn.Identity()  # hidden Linear(d_hidden, d_hidden)
        cut.net[3] = nn.Identity()  # and its GELU
    elif case.family == "convnet":
        cut.features[2] = nn.Identity()  # the first ReLU (BatchNorm at init is ~identity)
    elif case.family == "transformer":
        cut.ff = _Zero()  # the feed-forward block: h = norm2(h + 0)
    else:  # pragma: no cover - default_cases only has the families above
        raise ValueError(case.family)
    return cut.eval()


def _cheats(case: Case, honest: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model, inputs = case.model(), case.inputs()
    mine = honest["threads_2"] if "threads_2" in honest else honest["threads_1"]
    gen = torch.Generator().manual_seed(10_000 + case.seed)
    random_out = torch.randn(mine.shape, generator=gen) * mine.std() + mine.mean()
    half = copy.deepcopy(model).half()
    fp16 = _run(half, tuple(x.half() for x in inputs))
    earlier_inputs = tuple(x.clone() for x in inputs)
    other = case.inputs(seed_offset=1_000)
    for x, y in zip(earlier_inputs, other, strict=True):
        x[-1] = y[-1]
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "random_output": lambda: random_out,
        "all_zeros": lambda: torch.zeros_like(mine),
        "scaled_1.01": lambda: mine * 1.01,
        "skipped_layer": lambda: _run(_skip_one_layer(case, model), inputs),
        "float16_returned": lambda: fp16,
        "float16_cast_back": lambda: fp16.float(),
        "different_input": lambda: _run(model, other),
        "copied_earlier_result": lambda: _run(model, earlier_inputs),
    }
    return {name: makers[name]() for name in CHEATS}


def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(to_numpy(t.contiguous()).tobytes()).hexdigest()


# ---------------------------------------------------------------- judging


@dataclass(frozen=True)
class _Audit:
    case: str
    label: str
    agree: bool
    max_abs: float
    max_rel: float
    ratio: float
    expected: np.ndarray
    got: np.ndarray

    def summary(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "what": self.label,
            "max_abs": _num(self.max_abs),
            "max_rel": _num(self.max_rel),
            "allclose_ratio": _num(self.ratio),
        }


def _audit(case: Case, label: str, expected: torch.Tensor, got: torch.Tensor,
           policy: dict[str, Any], ratio_ref: dict[str, Any]) -> _Audit:
    e, g = to_numpy(expected), to_numpy(got)
    verdict = compare([e], [g], policy)
    ratio = allclose_ratio([e], [g], ratio_ref["rtol"], ratio_ref["atol"])
    return _Audit(case.name, label, verdict.agree, verdict.max_abs, verdict.max_rel, ratio, e, g)


def _rate(audits: list[_Audit]) -> dict[str, Any]:
    caught = sum(1 for a in audits if not a.agree)
    return {"cases": len(audits), "rate": round(caught / len(audits), 4) if audits else None}


def _worst_by_variant(audits: list[_Audit]) -> dict[str, Any]:
    groups: dict[str, list[_Audit]] = {}
    for a in audits:
        ref, got = a.label.split("->")
        kinds = sorted({_variant_kind(ref), _variant_kind(got)})
        groups.setdefault(" vs ".join(kinds), []).append(a)
    return {k: max(v, key=lambda a: a.ratio).summary() for k, v in sorted(groups.items())}


def _variant_kind(name: str) -> str:
    return "threads" if name.startswith("threads_") else name


def _sweep_row(policy: dict[str, Any], honest: list[_Audit], cheats: list[_Audit]) -> dict[str, Any]:
    fp = sum(1 for a in honest if not compare([a.expected], [a.got], policy).agree)
    caught = sum(1 for a in cheats if not compare([a.expected], [a.got], policy).agree)
    missed: dict[str, int] = {}
    for a in cheats:
        if compare([a.expected], [a.got], policy).agree:
            missed[a.label] = missed.get(a.label, 0) + 1
    return {
        "policy": policy,
        "false_positives": fp,
        "honest_cases": len(honest),
        "cheats_detected": caught,
        "cheat_cases": len(cheats),
        "missed_by_type": missed,
    }


def _num(x: float) -> float | None:
    return float(f"{x:.4g}") if np.isfinite(x) else None


# ---------------------------------------------------------------- grief: the verification game
#
# A client that wants honest workers slashed posts an allowlisted program that magnifies
# rounding, or a tolerance no float computation can meet. Each grief case runs one honest
# worker variant of such a job in the real sandboxed runner (the environment variables must be
# set before torch is imported) and then the real audit decision: an Auditor over an in-memory
# blob store, with a Recomputer as the recomputation and its alternate setup as the
# confirmation, as `mesh verifier run` builds it. Outcomes: pass, void (the job cannot be
# judged: NotReproducible), fail (the worker would be slashed; must never happen here).
# Sandboxed processes dominate the time (about 3.5 s each to start torch), so runs that share a
# setup and a program share a process (the whole batch and its two halves; our first run and
# our run on the inputs moved by one ulp), and a recomputation is run once per (setup,
# program, inputs) and reused by every case that needs it: the same setup gives the same bytes.

GRIEF_D = 64
"""Width of the grief programs (small: the bench measures decisions, not speed)."""
GRIEF_BATCH = 16


class FracGelu(nn.Module):
    """``frac(65536 * gelu(linear(x)))``: a last-bit change of gelu moves the output by ~1e-2,
    and across an integer by ~1."""

    def __init__(self, d: int = GRIEF_D) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.frac(65536.0 * nn.functional.gelu(self.lin(x)))


class Cancellation(nn.Module):
    """``(1e4 * gelu(a(x)) + b(x)) - 1e4 * gelu(a(x))``: the result is small and its terms 1e4
    times larger, so its rounding error is ~1e-3 of it, far over a floor scaled by the output."""

    def __init__(self, d: int = GRIEF_D) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = 1e4 * nn.functional.gelu(self.a(x))
        return (big + self.b(x)) - big


class TieResidual(nn.Module):
    """A deep residual stack (``h + 0.5 * gelu(linear(h))``, 12 layers) whose two top classes
    tie up to rounding: class 1 is class 0 summed in the opposite order, and every other class
    is lifted 100 below them. ``argmax``: return the winning class (int64) instead."""

    def __init__(self, d: int = GRIEF_D, depth: int = 12, classes: int = 8,
                 argmax: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.head = nn.Linear(d, classes)
        self.argmax = argmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = h + 0.5 * nn.functional.gelu(layer(h))
        logits = self.head(h)
        w, b = self.head.weight[0], self.head.bias[0]
        twin = (h.flip(-1) * w.flip(-1)).sum(dim=-1, keepdim=True) + b
        top = torch.cat([logits[:, :1], twin, logits[:, 2:] - 100.0], dim=-1)
        return torch.argmax(top, dim=-1) if self.argmax else top


GRIEF_PROGRAMS = ("frac_gelu", "cancellation", "tie_residual", "argmax_in_program", "mlp")
"""The chaotic programs, and an ordinary MLP (the control: tight tolerances on a stable
program)."""


def _grief_model(name: str) -> nn.Module:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(20_000 + GRIEF_PROGRAMS.index(name))
        model: nn.Module = {
            "frac_gelu": FracGelu,
            "cancellation": Cancellation,
            "tie_residual": TieResidual,
            "argmax_in_program": lambda: TieResidual(argmax=True),
            "mlp": lambda: build_model("mlp", 7),
        }[name]()
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _grief_inputs(name: str) -> tuple[torch.Tensor, ...]:
    if name == "mlp":
        return example_inputs("mlp", GRIEF_BATCH, 777)
    gen = torch.Generator().manual_seed(30_000 + GRIEF_PROGRAMS.index(name))
    return (torch.randn(GRIEF_BATCH, GRIEF_D, generator=gen),)


#: Honest worker setups: JobRunner settings, and the variants each yields (the whole batch,
#: and with ``split`` also the batch run as its two halves, outputs concatenated).
HONEST_SETUPS: dict[str, dict[str, Any]] = {
    "threads_2": {"threads": 2, "split": "batch_split"},
    "threads_4": {"threads": 4, "split": "batch_split"},
    "cpu_capability_default": {"threads": 1, "cpu_capability": "default"},
    "onednn_sse41": {"threads": 1, "onednn_max_isa": "SSE41"},
    "cuda": {"threads": 2, "device": "cuda"},
}
HONEST_VARIANTS = ("threads_2", "threads_4", "cpu_capability_default", "onednn_sse41",
                   "batch_split", "cuda")

_EXACT = {"kind": "exact"}
_FAR_BELOW = {"kind": "allclose", "rtol": 1e-9, "atol": 0.0}
_BELOW = {"kind": "allclose", "rtol": 1e-7, "atol": 1e-8}
_ARGMAX = {"kind": "argmax", "min_agreement": 1.0}
_TOP2 = {"kind": "topk", "k": 2, "min_agreement": 1.0}


@dataclass(frozen=True)
class GriefCase:
    program: str
    tolerance: dict[str, Any]
    worker: str
    """The honest worker variant (:data:`HONEST_VARIANTS`)."""
    setup: str
    """The setup (:data:`HONEST_SETUPS`) whose process computes it."""

    @property
    def name(self) -> str:
        return f"{self.program}/{_policy_label(self.tolerance)}/{self.worker}"


def grief_cases(cuda: bool = False) -> list[GriefCase]:
    """30 cases, ordered by program: the fractional part of a magnified gelu, a large-magnitude
    cancellation, a deep residual stack at an argmax/top-2 tie, the same tie decided inside the
    program (int64 output, ``exact``), and an ordinary MLP, under ``exact`` on float outputs,
    ``allclose`` far below rounding, at it, and the default; each with honest worker variants
    (thread counts, batch split, plain CPU kernels, oneDNN on SSE4.1).

    With ``cuda``, 11 more: a worker that ran the job on the GPU (TF32 off, as the job process
    sets it) under every (program, tolerance) above and the ordinary MLP under the default
    tolerance, audited by the CPU verifier: what a CUDA provider risks."""
    default = dict(DEFAULT_TOLERANCE)
    plan: tuple[tuple[str, tuple[dict[str, Any], ...], tuple[tuple[str, str], ...]], ...] = (
        ("frac_gelu", (_EXACT, _FAR_BELOW, default),
         (("onednn_sse41", "onednn_sse41"), ("cpu_capability_default", "cpu_capability_default"),
          ("threads_2", "threads_2"), ("batch_split", "threads_2"))),
        ("cancellation", (default, _BELOW),
         (("onednn_sse41", "onednn_sse41"), ("threads_4", "threads_4"),
          ("batch_split", "threads_4"))),
        ("tie_residual", (_ARGMAX, _TOP2),
         (("onednn_sse41", "onednn_sse41"), ("cpu_capability_default", "cpu_capability_default"))),
        ("argmax_in_program", (_EXACT,),
         (("onednn_sse41", "onednn_sse41"), ("threads_2", "threads_2"))),
        ("mlp", (_EXACT, _FAR_BELOW),
         (("onednn_sse41", "onednn_sse41"), ("threads_4", "threads_4"),
          ("batch_split", "threads_4"))),
    )
    cases = [GriefCase(program, dict(tol), worker, setup)
             for program, tolerances, workers in plan
             for tol in tolerances for worker, setup in workers]
    if cuda:
        cases += [GriefCase(program, dict(tol), "cuda", "cuda")
                  for program, tolerances, _ in plan for tol in tolerances]
        cases.append(GriefCase("mlp", default, "cuda", "cuda"))
    return cases


def _policy_label(policy: dict[str, Any]) -> str:
    if policy["kind"] == "allclose":
        return f"allclose:rtol={policy['rtol']:g},atol={policy['atol']:g}"
    if policy["kind"] == "argmax":
        return f"argmax:{policy['min_agreement']:g}"
    if policy["kind"] == "topk":
        return f"topk:{policy['k']}:{policy['min_agreement']:g}"
    return str(policy["kind"])


class _MemoryStore:
    """The blob store of one audit, in memory."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def get_blob(self, sha256: str, *, verify: bool = True) -> bytes:
        from meshcompute.errors import NotFound

        if sha256 not in self.blobs:
            raise NotFound(f"blob {sha256} is not in the store")
        return self.blobs[sha256]

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = bytes(data)
        return sha


class _Once:
    """A Recomputer's runs, each run once per (program, inputs): the same setup gives the same
    bytes, so the cases that share a job share its run. :meth:`prefetch` runs several inputs of
    one program in one process of the recomputer's own runner (what a call would do, one
    process start instead of several); calls then find them done."""

    def __init__(self, recomputer: Any) -> None:
        self.recomputer = recomputer
        self.done: dict[tuple[str, str], bytes] = {}
        self.processes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(program: bytes, inputs: bytes) -> tuple[str, str]:
        return hashlib.sha256(program).hexdigest(), hashlib.sha256(inputs).hexdigest()

    def prefetch(self, program: bytes, inputs: list[bytes]) -> None:
        from meshcompute.core.spec import DEFAULT_MAX_OUTPUT_BYTES

        runner = self.recomputer._runner("cpu")
        outcomes = runner.run_batch(program, inputs, time_limit_s=120, memory_limit_mb=2048,
                                    max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES,
                                    reuse_key="0x" + "00" * 20)
        with self._lock:
            self.processes += 1
            for data, outcome in zip(inputs, outcomes, strict=True):
                if outcome.ok and outcome.output is not None:
                    self.done[self._key(program, data)] = bytes(outcome.output)

    def __call__(self, spec: Any, program: bytes, inputs: bytes, *,
                 client: str | None = None) -> bytes:
        key = self._key(program, inputs)
        with self._lock:
            if key in self.done:
                return self.done[key]
        output = self.recomputer(spec, program, inputs, client=client)
        with self._lock:
            self.processes += 1
            self.done[key] = output
        return output


def _worker_outputs(program: bytes, inputs: tuple[torch.Tensor, ...], setup: dict[str, Any],
                    scratch: Path) -> dict[str, bytes]:
    """An honest worker's output bytes under ``setup`` (one sandboxed process): the whole batch,
    and with ``split`` also the batch run as its two halves, concatenated."""
    from meshcompute.execution.programs import load_tensors, save_tensors
    from meshcompute.execution.sandbox import JobRunner

    settings = {k: v for k, v in setup.items() if k != "split"}
    half = len(inputs[0]) // 2
    jobs = [save_tensors(list(inputs))]
    if setup.get("split"):
        jobs += [save_tensors([x[:half] for x in inputs]), save_tensors([x[half:] for x in inputs])]
    with JobRunner(scratch_root=scratch, **settings) as runner:
        outcomes = runner.run_batch(program, jobs, time_limit_s=120, memory_limit_mb=2048,
                                    max_output_bytes=1 << 26, reuse_key="0x" + "00" * 20)
    for outcome in outcomes:
        if not outcome.ok or outcome.output is None:
            raise RuntimeError(f"honest worker run failed: {outcome.reason}")
    outputs = [bytes(o.output or b"") for o in outcomes]
    result = {"whole": outputs[0]}
    if setup.get("split"):
        parts = [load_tensors(o, "out") for o in outputs[1:]]
        result["split"] = save_tensors([torch.cat(ts) for ts in zip(*parts, strict=True)], "out")
    return result


def _cheat_output(honest: bytes) -> bytes:
    """A cheater's output: plausible junk of the right dtypes and shapes (float tensors drawn
    with the honest mean and spread, integers shifted by one)."""
    from meshcompute.execution.programs import load_tensors, save_tensors

    gen = torch.Generator().manual_seed(4242)
    junk = []
    for t in load_tensors(honest, "out"):
        if t.is_floating_point():
            wide = t.double()
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            junk.append((noise * wide.std() + wide.mean()).to(t.dtype))
        else:
            junk.append(t + 1)
    return save_tensors(junk, "out")


def run_grief_bench(
    cases: list[GriefCase] | None = None, *, workers: int = 2, cheat_controls: bool = True,
) -> dict[str, Any]:
    """Run the honest workers of the grief ``cases`` (all of :func:`grief_cases` when None) and
    the real audit decision on each; with ``cheat_controls``, also audit a cheater (plausible
    junk) on each (program, tolerance) the cases use. Needs bubblewrap, as any verifier."""
    from meshcompute.core.job import JobRecord, JobState
    from meshcompute.core.spec import JobSpec
    from meshcompute.core.tolerance import evidence_hash
    from meshcompute.execution.perturb import perturb_inputs
    from meshcompute.execution.programs import export_program, save_tensors
    from meshcompute.verifier.audit import Auditor, NotReproducible, RecomputeFailed
    from meshcompute.verifier.journal import Journal
    from meshcompute.verifier.outputs import compare_outputs
    from meshcompute.verifier.recompute import Recomputer

    started = time.perf_counter()
    chosen = grief_cases(cuda=torch.cuda.is_available()) if cases is None else list(cases)
    names = [n for n in GRIEF_PROGRAMS if any(c.program == n for c in chosen)]
    tensors = {n: _grief_inputs(n) for n in names}
    programs = {n: export_program(_grief_model(n), tensors[n]) for n in names}
    inputs = {n: save_tensors(list(tensors[n])) for n in names}
    honest: dict[tuple[str, str], bytes] = {}
    rows: list[dict[str, Any]] = []
    controls: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-grief-") as folder:
        scratch = Path(folder)
        first = Recomputer(threads=1, scratch_root=scratch, warm=False)
        alternate = first.alternate_setup()
        recompute, confirm = _Once(first), _Once(alternate)

        def run_worker(program: str, setup: str) -> None:
            outs = _worker_outputs(programs[program], tensors[program], HONEST_SETUPS[setup],
                                   scratch)
            honest[(program, setup)] = outs["whole"]
            if "split" in outs:
                honest[(program, str(HONEST_SETUPS[setup]["split"]))] = outs["split"]

        tasks: list[Callable[[], object]] = [
            lambda p=program, s=setup: run_worker(p, s)
            for program, setup in sorted({(c.program, c.setup) for c in chosen})
        ]
        for n in names:  # our runs, ahead of the audits that need them
            tasks.append(lambda n=n: recompute.prefetch(
                programs[n], [inputs[n], perturb_inputs(inputs[n])]))
            tasks.append(lambda n=n: confirm.prefetch(programs[n], [inputs[n]]))
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for future in [pool.submit(task) for task in tasks]:
                    future.result()

            def audit(program: str, tolerance: dict[str, Any], output: bytes) -> tuple[str, str]:
                store = _MemoryStore()
                spec = JobSpec(program=store.put_blob(programs[program]),
                               inputs=store.put_blob(inputs[program]), tolerance=tolerance)
                spec_sha = store.put_blob(spec.canonical_bytes())
                result_sha = store.put_blob(output)
                record = JobRecord(
                    client="0x" + "11" * 20, worker="0x" + "22" * 20, auditor="0x" + "33" * 20,
                    reward=1, audit_fee=1, collateral=1, deadline=2**40, lease_expiry=0,
                    committed_at=1, committed_block=1, resolved_at=0, audit_bps=10_000,
                    state=JobState.AUDITED, spec_hash=bytes.fromhex(spec_sha),
                    result_hash=bytes.fromhex(result_sha),
                )
                journal = Journal(scratch / f"journal-{uuid.uuid4().hex}.json")
                auditor = Auditor(store, recompute, compare_outputs, evidence_hash, journal,
                                  verifier="0x" + "44" * 20, chain_id=31337,
                                  job_market="0x" + "55" * 20, confirm=confirm)
                try:
                    ready = auditor.audit(1, record, missing_output_is_final=True)
                except NotReproducible as exc:
                    return "void", str(exc)
                except RecomputeFailed as exc:
                    return "error", str(exc)
                reason = "; ".join(c.reason for c in ready.evidence.comparisons)
                return ("pass" if ready.verdict else "fail"), reason

            for case in chosen:
                outcome, reason = audit(case.program, case.tolerance,
                                        honest[(case.program, case.worker)])
                rows.append({"case": case.name, "program": case.program,
                             "tolerance": case.tolerance, "worker": case.worker,
                             "outcome": outcome, "reason": reason[:300]})
            if cheat_controls:
                seen: set[tuple[str, str]] = set()
                for case in chosen:
                    key = (case.program, json.dumps(case.tolerance, sort_keys=True))
                    if key in seen:
                        continue
                    seen.add(key)
                    junk = _cheat_output(honest[(case.program, case.worker)])
                    outcome, reason = audit(case.program, case.tolerance, junk)
                    controls.append({"case": f"{case.program}/{_policy_label(case.tolerance)}/"
                                             "cheater", "program": case.program,
                                     "tolerance": case.tolerance, "outcome": outcome,
                                     "reason": reason[:300]})
        finally:
            first.close()
            alternate.close()
    outcomes = ("pass", "void", "fail", "error")
    counts = {k: sum(1 for r in rows if r["outcome"] == k) for k in outcomes}
    return {
        "grief_cases": len(rows),
        "honest_workers_slashed": counts["fail"],
        "grief_outcomes": counts,
        "grief_programs": names,
        "grief_worker_variants": [v for v in HONEST_VARIANTS if any(c.worker == v for c in chosen)],
        "grief_rows": rows,
        "grief_cheat_controls": controls,
        "grief_cheat_control_outcomes": {k: sum(1 for r in controls if r["outcome"] == k)
                                         for k in outcomes},
        "grief_sandboxed_processes": len({(c.program, c.setup) for c in chosen})
        + recompute.processes + confirm.processes,
        "grief_runtime_s": round(time.perf_counter() - started, 2),
    }
