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
builds, GPUs with TF32 off) and about 13x over the mildest cheat.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise, permutations
from typing import Any

import numpy as np
import torch
from torch import nn

from meshcompute.core.spec import DEFAULT_TOLERANCE, validate_tolerance
from meshcompute.core.tolerance import allclose_ratio, compare
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
) -> dict[str, Any]:
    """Measure false accusations and detection under ``policy`` (default: DEFAULT_TOLERANCE)
    over the first ``cases`` default cases (all 24 when None). ``include_cuda`` None means
    "when a GPU is available"."""
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
    return {
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
