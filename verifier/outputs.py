"""Compare two job outputs given as safetensors bytes (``out.0``, ``out.1``, ...) under a
tolerance policy, with :func:`meshcompute.core.tolerance.compare`; parsing is
:func:`meshcompute.programs.load_tensors` (safetensors only, no pickle).

The recomputation (``expected``) is ours and must parse; every defect of the worker's bytes
(not safetensors, wrong tensor names, wrong dtype or shape) is a disagreement with a reason,
never an exception. Parsing uses ``safetensors`` only: no pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshcompute.core.tolerance import compare
from meshcompute.errors import BadInput
from verifier.audit import OutputComparison


def load_outputs(raw: bytes, *, who: str) -> tuple[list[np.ndarray], list[str]]:
    """The tensors ``out.0 .. out.N-1`` of a safetensors blob, in order, and their dtypes as
    stored (BadInput otherwise). bfloat16 tensors are widened to float32 for numpy, which has
    no bfloat16; the stored dtypes are returned so a caller still tells them apart."""
    import torch

    from meshcompute.programs import load_tensors

    try:
        tensors = load_tensors(raw, "out")
    except BadInput as exc:
        raise BadInput(f"{who} output: {exc}") from exc
    arrays, dtypes = [], []
    for tensor in tensors:
        dtypes.append(str(tensor.dtype).removeprefix("torch."))
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)
        arrays.append(tensor.numpy())
    return arrays, dtypes


def compare_outputs(expected: bytes, got: bytes, policy: dict[str, Any]) -> OutputComparison:
    """``got`` (the other party's output) against ``expected`` (our recomputation)."""
    exp, exp_dtypes = load_outputs(expected, who="our")
    try:
        theirs, their_dtypes = load_outputs(got, who="the compared")
    except BadInput as exc:
        return OutputComparison(False, str(exc))
    for i, (a, b) in enumerate(zip(exp_dtypes, their_dtypes, strict=False)):
        if a != b:
            return OutputComparison(False, f"out.{i} dtype {b} differs from expected {a}")
    verdict = compare(exp, theirs, policy)
    return OutputComparison(
        agree=verdict.agree,
        reason=verdict.reason,
        max_abs=verdict.max_abs,
        max_rel=verdict.max_rel,
        agreement=verdict.agreement,
    )
