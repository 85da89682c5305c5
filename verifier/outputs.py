"""The one tolerance adapter over job outputs: compare two outputs given as safetensors bytes
(``out.0``, ``out.1``, ...) under a tolerance policy with
:func:`meshcompute.core.tolerance.compare`. The verifier's audits and appeals, ``mesh verify``
and the verification benchmark all compare through this module.

Parsing is :func:`meshcompute.execution.programs.load_tensors` (safetensors only, no pickle).
The recomputation (``expected``) is ours and must parse; every defect of the worker's bytes
(not safetensors, wrong tensor names, wrong dtype or shape) is a disagreement with a reason,
never an exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshcompute.core.tolerance import compare
from meshcompute.errors import BadInput
from meshcompute.verifier.audit import OutputComparison


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
