"""Judging job outputs given as safetensors bytes, and probing whether a program can be judged.

The verifier's tolerance adapter (:mod:`meshcompute.verifier.outputs`) and the client SDK's
stability probe share what is here, so an audit and a client's check apply the same rules:

- :func:`load_outputs` / :func:`to_numpy`: the tensors ``out.0 ..`` of an output blob as numpy
  arrays with their stored dtypes (safetensors only, no pickle);
- :func:`compare_output_bytes`: two outputs under a job's policy with the rounding floors of
  :func:`meshcompute.core.tolerance.compare_floored`;
- :func:`own_run_check`: whether a second computation of ours (another numeric setup, or inputs
  moved by one ulp, :func:`meshcompute.execution.perturb.perturb_inputs`) stays within the
  stability margin of our first; :func:`near_tie_note`: whether an argmax/top-k disagreement is
  only about near-ties that rounding decides;
- :func:`probe_stability`: the client's check before it pays, on one shard's inputs: our run,
  the verifier's alternate numeric setup (:data:`ALTERNATE_SETUP`) and a one-ulp change of the
  inputs, judged as an audit judges them.

torch is imported only by the functions that read tensors or run jobs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshcompute.core.spec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIME_LIMIT_S,
    validate_tolerance,
)
from meshcompute.core.tolerance import (
    STABILITY_MARGIN,
    Verdict,
    compare_floored,
    effective_policy,
    ranked_near_ties,
    refusal,
    tolerance_used,
)
from meshcompute.errors import BadInput
from meshcompute.execution.perturb import perturb_inputs

ALTERNATE_SETUP: dict[str, Any] = {
    "extra_threads": 1,
    "cpu_capability": "default",
    "onednn_max_isa": "SSE41",
}
"""The verifier's second numeric setup (:meth:`meshcompute.verifier.recompute.Recomputer.
alternate_setup`): one more thread, torch's plainest kernels (``ATEN_CPU_CAPABILITY=default``)
and oneDNN limited to SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``), as an older CPU would run them."""


def load_outputs(raw: bytes, *, who: str) -> tuple[list[np.ndarray], list[str]]:
    """The tensors ``out.0 .. out.N-1`` of a safetensors blob, in order, and their dtypes as
    stored (BadInput otherwise). Dtypes numpy lacks are widened exactly (bfloat16 and the
    float8 types to float32, complex32 to complex64); the stored dtypes are returned so a
    caller still tells them apart. A dtype that cannot be widened is BadInput."""
    from meshcompute.execution.programs import load_tensors

    try:
        tensors = load_tensors(raw, "out")
    except BadInput as exc:
        raise BadInput(f"{who} output: {exc}") from exc
    except (KeyError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        # safetensors' torch loader raises KeyError for a dtype torch does not map
        raise BadInput(f"{who} output is not readable safetensors: "
                       f"{type(exc).__name__}: {exc}") from None
    arrays, dtypes = [], []
    for index, tensor in enumerate(tensors):
        dtypes.append(str(tensor.dtype).removeprefix("torch."))
        arrays.append(to_numpy(tensor, f"{who} output out.{index}"))
    return arrays, dtypes


def to_numpy(tensor: Any, where: str = "tensor") -> np.ndarray:
    """A CPU numpy copy of a torch tensor. Dtypes numpy lacks are widened exactly (bfloat16 and
    the float8 types to float32, complex32 to complex64); any other dtype numpy cannot hold is
    BadInput naming ``where``."""
    import torch

    tensor = tensor.detach().to("cpu")
    if tensor.dtype.is_floating_point and tensor.element_size() < 2 or tensor.dtype in (
        torch.bfloat16,
    ):
        tensor = tensor.to(torch.float32)
    elif tensor.dtype == torch.complex32:
        tensor = tensor.to(torch.complex64)
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as exc:
        raise BadInput(f"{where} has dtype {tensor.dtype}, which cannot be compared: {exc}") \
            from None


def compare_output_bytes(expected: bytes, got: bytes, policy: dict[str, Any]) -> Verdict:
    """``got`` against ``expected`` (ours, which must parse: BadInput otherwise) under
    ``policy`` with the rounding floors. Every defect of ``got`` is a disagreement."""
    exp, exp_dtypes = load_outputs(expected, who="our")
    policy = validate_tolerance(policy)
    try:
        theirs, their_dtypes = load_outputs(got, who="the compared")
    except BadInput as exc:
        return _structural(str(exc), policy)
    if len(their_dtypes) == len(exp_dtypes):
        for i, (a, b) in enumerate(zip(exp_dtypes, their_dtypes, strict=True)):
            if a != b:
                return _structural(f"out.{i} dtype {b} differs from expected {a}", policy)
    return compare_floored(exp, theirs, policy, exp_dtypes)


def _structural(reason: str, policy: dict[str, Any]) -> Verdict:
    ranked = policy["kind"] in ("argmax", "topk")
    return Verdict(False, reason, math.inf, math.inf, 0.0 if ranked else None, policy)


@dataclass(frozen=True)
class OwnRunCheck:
    """Whether another computation of ours leaves an audit the margin to judge a worker."""

    stable: bool
    reason: str
    used: float | None
    """The fraction of the effective tolerance it uses (exact/allclose; None for ranked)."""


def own_run_check(ours: bytes, other: bytes, policy: dict[str, Any]) -> OwnRunCheck:
    """``other`` (our computation under another numeric setup, or on inputs moved by one ulp)
    against ``ours`` (our first). For ``exact``/``allclose`` it must use at most
    1/:data:`~meshcompute.core.tolerance.STABILITY_MARGIN` of the effective tolerance (then an
    honest worker's rounding may differ several times more than ours and still pass); for
    ``argmax``/``topk`` it must agree under the policy (near-ties are :func:`near_tie_note`'s
    business)."""
    policy = validate_tolerance(policy)
    exp, dtypes = load_outputs(ours, who="our")
    oth, other_dtypes = load_outputs(other, who="our other")
    if other_dtypes != dtypes:
        return OwnRunCheck(False, f"our two runs give different dtypes ({dtypes} vs "
                                  f"{other_dtypes})", math.inf)
    effective = effective_policy(policy, dtypes, exp)
    if effective.kind in ("argmax", "topk"):
        verdict = compare_floored(exp, oth, policy, dtypes)
        return OwnRunCheck(verdict.agree, verdict.reason, None)
    used = tolerance_used(exp, oth, effective)
    limit = 1.0 / STABILITY_MARGIN
    if used <= limit:
        return OwnRunCheck(True, f"uses {used:.1%} of the effective tolerance", used)
    if used > 1.0:
        what = ("beyond it" if math.isinf(used)
                else f"beyond it ({used:.3g} times the effective tolerance)")
    else:
        what = (f"by {used:.0%} of it, more than the 1/{STABILITY_MARGIN} an audit keeps as "
                "margin for an honest worker's rounding")
    clause = effective.describe() or _policy_text(policy)
    return OwnRunCheck(False, f"moves the output {what}; {clause}", used)


def near_tie_note(
    ours: bytes, others: Sequence[bytes], theirs: bytes, policy: dict[str, Any]
) -> str | None:
    """For an ``argmax``/``topk`` job whose worker disagrees with ``ours``: a sentence saying
    the disagreement is only about near-ties (rows whose ranking rounding decides, judged
    against the spread of our ``others`` computations), or None when it is not, or when the
    policy is not ranked or the outputs cannot be compared row by row."""
    policy = validate_tolerance(policy)
    if policy["kind"] not in ("argmax", "topk"):
        return None
    exp, dtypes = load_outputs(ours, who="our")
    try:
        got, their_dtypes = load_outputs(theirs, who="the compared")
    except BadInput:
        return None
    if their_dtypes != dtypes or any(
        a.shape != b.shape or a.dtype != b.dtype for a, b in zip(exp, got, strict=True)
    ):
        return None
    runs = [load_outputs(o, who="our other")[0] for o in others]
    try:
        ties = ranked_near_ties(exp, runs, got, policy, dtypes)
    except BadInput:
        return None
    if ties.near_ties == 0 or not ties.excused:
        return None
    return (f"the ranking is decided by near-ties: {ties.rows - ties.agree} of {ties.rows} rows "
            f"disagree, {ties.near_ties} of them within rounding of the ranking boundary "
            f"(margin {STABILITY_MARGIN} times our own runs' spread and the rounding floor)")


def _policy_text(policy: dict[str, Any]) -> str:
    fields = ", ".join(f"{k}={v:g}" for k, v in policy.items() if k != "kind")
    return f"policy {policy['kind']}" + (f"({fields})" if fields else "")


# ---------------------------------------------------------------------- client probe


@dataclass(frozen=True)
class StabilityReport:
    """What :func:`probe_stability` found."""

    stable: bool
    """Whether an audit can judge the job: our runs agree within the stability margin."""
    reason: str
    requested: dict[str, Any]
    effective: dict[str, Any] | None
    """The effective policy after the rounding floors (None when the program did not run)."""
    refused: str | None
    """Why the tolerance itself is refused (exact on floating outputs, or under the floor)."""
    alternate_used: float | None = None
    """Fraction of the effective tolerance the alternate setup's output uses (None: ranked
    policy or not run)."""
    perturbed_used: float | None = None
    """Fraction used by the output on inputs moved by one ulp (None: ranked, not run, or no
    floating inputs)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stable": self.stable, "reason": self.reason, "requested": dict(self.requested),
            "effective": self.effective, "refused": self.refused,
            "alternate_used": _finite(self.alternate_used),
            "perturbed_used": _finite(self.perturbed_used),
        }


def probe_stability(
    program: bytes,
    inputs: bytes,
    policy: dict[str, Any],
    *,
    threads: int = 1,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    scratch_root: Path | None = None,
    allow_unsandboxed: bool = False,
) -> StabilityReport:
    """Run ``program`` on ``inputs`` (one shard) as an audit would: our run with ``threads``,
    the verifier's alternate setup (:data:`ALTERNATE_SETUP`), and our setup on the inputs moved
    by one ulp, in the sandboxed job runner; then judge them under ``policy`` with the rounding
    floors and the stability margin. Raises :class:`BadInput` when the program fails to run
    (its reason) or the policy is malformed; an unstable program or a refused tolerance is
    reported, not raised."""
    from meshcompute.execution.sandbox import JobRunner

    policy = validate_tolerance(policy)
    limits = {"time_limit_s": time_limit_s, "memory_limit_mb": memory_limit_mb,
              "max_output_bytes": max_output_bytes}
    shifted = perturb_inputs(inputs)
    batch = [inputs] if shifted == inputs else [inputs, shifted]
    with JobRunner(threads=threads, scratch_root=scratch_root,
                   allow_unsandboxed=allow_unsandboxed) as runner:
        first = runner.run_batch(program, batch, **limits)
    with JobRunner(threads=threads + ALTERNATE_SETUP["extra_threads"],
                   cpu_capability=ALTERNATE_SETUP["cpu_capability"],
                   onednn_max_isa=ALTERNATE_SETUP["onednn_max_isa"],
                   scratch_root=scratch_root, allow_unsandboxed=allow_unsandboxed) as runner:
        alternate = runner.run(program, inputs, **limits)
    for outcome, what in ((first[0], "our run"), (alternate, "the alternate setup"),
                          *(((first[1], "the one-ulp run"),) if len(first) > 1 else ())):
        if not outcome.ok or outcome.output is None:
            raise BadInput(f"the program failed under {what}: {outcome.reason}")
    ours = bytes(first[0].output or b"")
    exp, dtypes = load_outputs(ours, who="our")
    effective = effective_policy(policy, dtypes, exp)
    refused = refusal(effective)
    alt = own_run_check(ours, bytes(alternate.output or b""), policy)
    moved = (own_run_check(ours, bytes(first[1].output or b""), policy) if len(first) > 1
             else None)
    problems = []
    if not alt.stable:
        problems.append(f"under another numeric setup (more threads, plain CPU kernels) the "
                        f"output {alt.reason}")
    if moved is not None and not moved.stable:
        problems.append(f"a one-ulp change of the inputs {moved.reason}")
    if problems:
        reason = ("the program is unstable under its tolerance: " + "; and ".join(problems)
                  + ". An audit of it would be void (nobody paid); loosen the tolerance or "
                  "make the program less sensitive to rounding")
    else:
        used = [u for u in (alt.used, moved.used if moved else None) if u is not None]
        reason = ("stable: our other runs stay within "
                  + (f"{max(used):.1%} of the effective tolerance" if used
                     else "the ranking the policy asks for"))
    return StabilityReport(
        stable=not problems, reason=reason, requested=policy, effective=effective.to_json(),
        refused=refused, alternate_used=alt.used,
        perturbed_used=moved.used if moved is not None else None,
    )


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None
