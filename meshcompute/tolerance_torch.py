"""Tolerance comparison of torch tensors and of job output files (safetensors, ``out.N``).

A thin adapter over :func:`meshcompute.core.tolerance.compare`: it reads the files with
:func:`meshcompute.execution.programs.load_tensors`, checks dtypes in torch's terms (numpy has no
bfloat16 or float8, so those are widened to float32 only after both sides were found to have
the same dtype) and hands numpy arrays to the core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from meshcompute.core.spec import validate_tolerance
from meshcompute.core.tolerance import Verdict, compare
from meshcompute.errors import BadInput
from meshcompute.execution.programs import OUTPUT_PREFIX, load_tensors


def compare_tensors(
    expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor], policy: dict[str, Any]
) -> Verdict:
    """Compare a worker's output tensors ``got`` with the recomputation ``expected``."""
    policy = validate_tolerance(policy)
    expected, got = list(expected), list(got)
    if len(expected) != len(got):
        return _mismatch(f"output count differs: expected {len(expected)}, got {len(got)}", policy)
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if not isinstance(g, torch.Tensor):
            return _mismatch(f"out.{i} is a {type(g).__name__}, not a tensor", policy)
        if g.dtype != e.dtype:
            return _mismatch(f"out.{i} dtype {g.dtype} differs from expected {e.dtype}", policy)
    return compare([to_numpy(t) for t in expected], [to_numpy(t) for t in got], policy)


def compare_outputs(expected: bytes, got: bytes, policy: dict[str, Any]) -> Verdict:
    """Compare two output files (safetensors bytes named ``out.0 .. out.{n-1}``).

    ``expected`` is the verifier's own recomputation: if it cannot be read, :class:`BadInput`
    is raised. ``got`` is the worker's committed output: if it cannot be read (not
    safetensors, wrong names), that is a disagreement, because a worker must deliver a
    readable output.
    """
    policy = validate_tolerance(policy)
    reference = load_tensors(expected, OUTPUT_PREFIX)
    try:
        worker = load_tensors(got, OUTPUT_PREFIX)
    except BadInput as exc:
        return _mismatch(f"worker output unreadable: {exc}", policy)
    return compare_tensors(reference, worker, policy)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``tensor``; dtypes numpy lacks are widened losslessly
    (bfloat16/float8 to float32, complex32 to complex64)."""
    t = tensor.detach().to("cpu")
    try:
        return t.numpy()
    except TypeError:
        if t.is_floating_point():
            return t.to(torch.float32).numpy()
        if t.is_complex():
            return t.to(torch.complex64).numpy()
        raise BadInput(f"cannot compare tensors of dtype {t.dtype}") from None


def _mismatch(reason: str, policy: dict[str, Any]) -> Verdict:
    ranked = policy["kind"] in ("argmax", "topk")
    return Verdict(False, reason, math.inf, math.inf, 0.0 if ranked else None, policy)
