"""The one tolerance adapter over job outputs: compare two outputs given as safetensors bytes
(``out.0``, ``out.1``, ...) under a tolerance policy with the rounding floors of
:func:`meshcompute.core.tolerance.compare_floored`. The verifier's audits and appeals, ``mesh
verify`` and the verification benchmark all compare through this module, so no policy a client
chooses (``exact`` on float outputs, an ``allclose`` far below rounding) is applied tighter than
honest floating-point arithmetic can meet; the effective policy is in every comparison's reason.

Parsing is :func:`meshcompute.execution.programs.load_tensors` (safetensors only, no pickle).
The recomputation (``expected``) is ours and must parse; every defect of the worker's bytes
(not safetensors, wrong tensor names, wrong dtype or shape) is a disagreement with a reason,
never an exception.

:func:`check_own_run` and :func:`near_tie_excuse` judge our own second computations before a
fail is posted (:meth:`meshcompute.verifier.audit.Auditor.audit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshcompute.execution.stability import (
    compare_output_bytes,
    load_outputs,
    near_tie_note,
    own_run_check,
    to_numpy,
)
from meshcompute.verifier.audit import OutputComparison

__all__ = ["check_own_run", "compare_outputs", "load_outputs", "near_tie_excuse", "to_numpy"]


def compare_outputs(expected: bytes, got: bytes, policy: dict[str, Any]) -> OutputComparison:
    """``got`` (the other party's output) against ``expected`` (our recomputation) under the
    job's policy with the rounding floors; the reason says what the floor changed."""
    verdict = compare_output_bytes(expected, got, policy)
    return OutputComparison(
        agree=verdict.agree,
        reason=verdict.reason,
        max_abs=verdict.max_abs,
        max_rel=verdict.max_rel,
        agreement=verdict.agreement,
        effective=verdict.effective,
    )


def check_own_run(ours: bytes, other: bytes, policy: dict[str, Any]) -> OutputComparison:
    """Whether ``other`` (our computation under another numeric setup, or on inputs moved by
    one ulp) stays within the stability margin of ``ours``; ``agree`` False means the job
    cannot be judged (see :func:`meshcompute.execution.stability.own_run_check`)."""
    check = own_run_check(ours, other, policy)
    return OutputComparison(agree=check.stable, reason=check.reason)


def near_tie_excuse(
    ours: bytes, others: Sequence[bytes], theirs: bytes, policy: dict[str, Any]
) -> str | None:
    """For argmax/top-k jobs: why the worker's disagreement is only about near-ties that
    rounding decides (then the job cannot be judged), or None."""
    return near_tie_note(ours, others, theirs, policy)
