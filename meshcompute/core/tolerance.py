"""Comparing two computations of the same job under its tolerance policy.

An audit recomputes a job independently and compares the recomputation (``expected``) with
the worker's committed output (``got``), tensor by tensor (``out.0``, ``out.1``, ...). The
policy shapes are those of :func:`meshcompute.core.spec.validate_tolerance`:

- ``exact``: every tensor has the same dtype, shape and bytes. Only for integer outputs or
  jobs with pinned determinism: the same float32 program differs in its last bits between
  thread counts, batch splits and devices.
- ``allclose``: per element ``|got - expected| <= atol + rtol * |expected|`` (numpy's
  convention: the recomputation is the reference). Computed in float64 (complex128 for
  complex tensors). NaN must appear at exactly the same positions in both, and infinities
  must be equal (same sign, same positions); anything else non-finite is a mismatch. Integer
  and boolean tensors must be equal.
- ``argmax``: each tensor is read as rows along its last dimension; a row agrees when both
  argmaxes are equal (numpy's first index on ties). ``agreement`` is the fraction of agreeing
  rows over all tensors together and must be at least ``min_agreement``.
- ``topk``: as ``argmax``, but a row agrees when the sets of its ``k`` largest indices are
  equal (``k`` is capped at the row length).

For ``argmax``/``topk`` a row in which either side has a NaN agrees only when both have NaN
at exactly the same positions. Under every policy the outputs must have the same count and
each pair the same dtype and shape: a float16 result for a float32 job is a mismatch whatever
the values. ``max_abs`` / ``max_rel`` are reported for every policy as information: the
largest ``|got - expected|`` and the largest ``|got - expected| / |expected|`` over elements
with a non-zero ``expected`` (equal non-finite values count as 0, unequal ones as infinity;
infinity also when the tensors cannot be compared element by element).

:func:`evidence_hash` is what a verifier posts on chain with its verdict: anyone holding the
blobs can recompute it. Pure: numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meshcompute.core.spec import DEFAULT_TOLERANCE, is_sha256_hex, validate_tolerance
from meshcompute.errors import BadInput

EVIDENCE_VERSION = "meshcompute.evidence.v1"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison."""

    agree: bool
    """True when ``got`` is acceptable under the policy."""
    reason: str
    """One readable line: what agreed, or the first thing that did not."""
    max_abs: float
    max_rel: float
    agreement: float | None
    """Row agreement fraction for ``argmax``/``topk``; None for the other policies."""
    policy: dict[str, Any] = field(default_factory=dict)
    """The normalised policy that was applied."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite differences become None)."""
        return {
            "agree": self.agree,
            "reason": self.reason,
            "max_abs": _finite_or_none(self.max_abs),
            "max_rel": _finite_or_none(self.max_rel),
            "agreement": self.agreement,
            "policy": dict(self.policy),
        }


def compare(
    expected: Sequence[np.ndarray], got: Sequence[np.ndarray], policy: dict[str, Any]
) -> Verdict:
    """Compare a worker's outputs ``got`` with the recomputation ``expected`` under ``policy``.

    Raises :class:`BadInput` for a malformed policy or for ``expected`` arrays that are not
    numeric tensors (the recomputation is the verifier's own); every defect of ``got`` is a
    disagreement, never an exception.
    """
    policy = validate_tolerance(policy)
    exp = [np.asarray(a) for a in expected]
    for i, a in enumerate(exp):
        if a.dtype.kind not in "biufc":
            raise BadInput(f"expected out.{i} has non-numeric dtype {a.dtype}")
    try:
        gotten = [np.asarray(a) for a in got]
    except (TypeError, ValueError) as exc:
        return _mismatch(f"worker output is not a list of arrays: {exc}", policy)
    if len(gotten) != len(exp):
        return _mismatch(f"output count differs: expected {len(exp)}, got {len(gotten)}", policy)
    for i, (e, g) in enumerate(zip(exp, gotten, strict=True)):
        if g.dtype != e.dtype:
            return _mismatch(f"out.{i} dtype {g.dtype} differs from expected {e.dtype}", policy)
        if g.shape != e.shape:
            return _mismatch(
                f"out.{i} shape {list(g.shape)} differs from expected {list(e.shape)}", policy
            )
    diffs = [_differences(e, g) for e, g in zip(exp, gotten, strict=True)]
    max_abs = max((d[0] for d in diffs), default=0.0)
    max_rel = max((d[1] for d in diffs), default=0.0)
    kind = policy["kind"]
    if kind == "exact":
        return _exact(exp, gotten, policy, max_abs, max_rel)
    if kind == "allclose":
        return _allclose(exp, gotten, policy, max_abs, max_rel)
    return _ranked(exp, gotten, policy, max_abs, max_rel)


def allclose_ratio(
    expected: Sequence[np.ndarray], got: Sequence[np.ndarray], rtol: float, atol: float
) -> float:
    """How much of the allclose budget the worst element uses: the largest
    ``|got - expected| / (atol + rtol * |expected|)`` over all finite elements (0 when none
    differ; infinity when the outputs cannot be compared element by element or their
    non-finite values differ). ``allclose`` agrees exactly when this is <= 1, so measuring it
    for honest and cheating outputs tells how far a policy can be tightened or loosened."""
    if rtol < 0 or atol < 0 or rtol + atol == 0:
        raise BadInput(f"allclose_ratio needs rtol, atol >= 0, not both 0 (got {rtol}, {atol})")
    exp = [np.asarray(a) for a in expected]
    gotten = [np.asarray(a) for a in got]
    if len(exp) != len(gotten):
        return math.inf
    worst = 0.0
    for e, g in zip(exp, gotten, strict=True):
        if e.dtype != g.dtype or e.shape != g.shape:
            return math.inf
        if e.size == 0:
            continue
        ew, gw = _wide(e, g)
        if _nonfinite_mismatch(ew, gw):
            return math.inf
        both = np.isfinite(ew) & np.isfinite(gw)
        if not both.any():
            continue
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            d = np.abs(gw[both] - ew[both])
            budget = atol + rtol * np.abs(ew[both])
            used = np.where(d == 0, 0.0, np.where(budget > 0, d / budget, np.inf))
        worst = max(worst, float(np.max(used)))
    return worst


def evidence_hash(output_hashes: Sequence[str], policy: dict[str, Any]) -> bytes:
    """The 32-byte evidence a verdict carries: sha256 of the canonical JSON
    ``{"outputs": [...], "policy": {...}, "version": EVIDENCE_VERSION}`` (sorted keys, no
    spaces, UTF-8), where ``outputs`` are the sha256 hex names of every output compared, in the
    order given (by convention the worker's first, then each recomputation), and ``policy`` is
    the normalised tolerance policy."""
    if isinstance(output_hashes, str):
        raise BadInput("output_hashes must be a sequence of sha256 hex strings, not one string")
    hashes = list(output_hashes)
    if len(hashes) < 2:
        raise BadInput(f"evidence needs at least two compared outputs, got {len(hashes)}")
    for i, value in enumerate(hashes):
        if not is_sha256_hex(value):
            raise BadInput(f"output_hashes[{i}] is not a lowercase sha256 hex string: {value!r}")
    document = {"outputs": hashes, "policy": validate_tolerance(policy), "version": EVIDENCE_VERSION}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).digest()


_POLICY_FORMS = (
    '"exact", "allclose", "allclose:rtol=1e-4,atol=1e-5", "argmax:0.99", "topk:5:0.99" '
    "or a JSON object"
)


def parse_policy(text: str) -> dict[str, Any]:
    """Parse a policy given on the command line; returns the normalised policy dict.

    Forms: ``exact``; ``allclose`` (the default rtol/atol); ``allclose:rtol=R,atol=A`` (either
    key may be left out and keeps its default); ``argmax:F``; ``topk:K:F`` with F the minimum
    agreement fraction in [0, 1]; or a JSON object of the policy shape.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"tolerance policy is empty; use one of {_POLICY_FORMS}")
    text = text.strip()
    if text.startswith("{"):
        try:
            return validate_tolerance(json.loads(text))
        except ValueError as exc:
            if isinstance(exc, BadInput):
                raise
            raise BadInput(f"tolerance policy is not valid JSON: {exc}") from exc
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind == "exact":
        if rest:
            raise BadInput(f"tolerance 'exact' takes no parameters, got {text!r}")
        return {"kind": "exact"}
    if kind == "allclose":
        values = _allclose_defaults()
        if rest:
            for item in rest.split(","):
                name, eq, value = item.partition("=")
                name = name.strip()
                if not eq or name not in values:
                    raise BadInput(
                        f"tolerance {text!r}: expected rtol=NUMBER and/or atol=NUMBER, "
                        f"got {item!r}"
                    )
                values[name] = _number(value, f"{name} in {text!r}")
        return validate_tolerance({"kind": "allclose", **values})
    if kind == "argmax":
        parts = rest.split(":") if rest else []
        if len(parts) != 1:
            raise BadInput(f"tolerance {text!r}: expected argmax:FRACTION, e.g. argmax:0.99")
        return validate_tolerance(
            {"kind": "argmax", "min_agreement": _number(parts[0], f"fraction in {text!r}")}
        )
    if kind == "topk":
        parts = rest.split(":") if rest else []
        if len(parts) != 2:
            raise BadInput(f"tolerance {text!r}: expected topk:K:FRACTION, e.g. topk:5:0.99")
        if not re.fullmatch(r"\s*\d+\s*", parts[0]):
            raise BadInput(f"tolerance {text!r}: k must be a positive integer, got {parts[0]!r}")
        return validate_tolerance({
            "kind": "topk",
            "k": int(parts[0]),
            "min_agreement": _number(parts[1], f"fraction in {text!r}"),
        })
    raise BadInput(f"unknown tolerance policy {text!r}; use one of {_POLICY_FORMS}")


# ---------------------------------------------------------------- internals


def _allclose_defaults() -> dict[str, float]:
    if DEFAULT_TOLERANCE.get("kind") == "allclose":
        return {"rtol": float(DEFAULT_TOLERANCE["rtol"]), "atol": float(DEFAULT_TOLERANCE["atol"])}
    return {"rtol": 1e-4, "atol": 1e-5}


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"tolerance {what} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise BadInput(f"tolerance {what} must be finite, got {text.strip()!r}")
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mismatch(reason: str, policy: dict[str, Any]) -> Verdict:
    ranked = policy["kind"] in ("argmax", "topk")
    return Verdict(False, reason, math.inf, math.inf, 0.0 if ranked else None, policy)


def _wide(e: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays in float64 (complex128 for complex dtypes) for exact differences."""
    dtype = np.complex128 if e.dtype.kind == "c" else np.float64
    return np.asarray(e, dtype=dtype), np.asarray(g, dtype=dtype)


def _nonfinite_mismatch(e: np.ndarray, g: np.ndarray) -> bool:
    """True when NaN positions differ or some infinity is not matched by an equal value."""
    nan_e, nan_g = np.isnan(e), np.isnan(g)
    if not np.array_equal(nan_e, nan_g):
        return True
    inf = np.isinf(e) | np.isinf(g)
    return bool(np.any(inf & ~nan_e & (e != g)))


def _differences(e: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """(max abs, max rel) between two same-shaped arrays, as the module docstring defines."""
    if e.size == 0:
        return 0.0, 0.0
    ew, gw = _wide(e, g)
    if _nonfinite_mismatch(ew, gw):
        return math.inf, math.inf
    finite = np.isfinite(ew) & np.isfinite(gw)
    if not finite.any():
        return 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = np.abs(gw[finite] - ew[finite])
        mag = np.abs(ew[finite])
        nonzero = mag > 0
        max_rel = float(np.max(d[nonzero] / mag[nonzero])) if nonzero.any() else 0.0
    return float(np.max(d)), max_rel


def _exact(exp, got, policy, max_abs, max_rel) -> Verdict:
    for i, (e, g) in enumerate(zip(exp, got, strict=True)):
        if np.ascontiguousarray(e).tobytes() != np.ascontiguousarray(g).tobytes():
            return Verdict(False, f"out.{i} bytes differ", max_abs, max_rel, None, policy)
    return Verdict(True, f"all {len(exp)} outputs byte-identical", max_abs, max_rel, None, policy)


def _allclose(exp, got, policy, max_abs, max_rel) -> Verdict:
    rtol, atol = policy["rtol"], policy["atol"]
    for i, (e, g) in enumerate(zip(exp, got, strict=True)):
        if e.size == 0:
            continue
        if e.dtype.kind in "biu":
            if not np.array_equal(e, g):
                bad = int(np.count_nonzero(e != g))
                return Verdict(
                    False, f"out.{i}: {bad} of {e.size} integer elements differ",
                    max_abs, max_rel, None, policy,
                )
            continue
        ew, gw = _wide(e, g)
        nan_e, nan_g = np.isnan(ew), np.isnan(gw)
        if not np.array_equal(nan_e, nan_g):
            bad = int(np.count_nonzero(nan_e != nan_g))
            return Verdict(
                False, f"out.{i}: NaN at {bad} positions where the other side has a number",
                max_abs, max_rel, None, policy,
            )
        inf = (np.isinf(ew) | np.isinf(gw)) & ~nan_e
        if np.any(inf & (ew != gw)):
            bad = int(np.count_nonzero(inf & (ew != gw)))
            return Verdict(
                False, f"out.{i}: {bad} infinite values differ", max_abs, max_rel, None, policy
            )
        finite = ~nan_e & ~inf
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.abs(gw[finite] - ew[finite])
            outside = d > atol + rtol * np.abs(ew[finite])
        if np.any(outside):
            bad = int(np.count_nonzero(outside))
            return Verdict(
                False,
                f"out.{i}: {bad} of {e.size} elements outside rtol={rtol:g}, atol={atol:g} "
                f"(max abs {max_abs:.3g}, max rel {max_rel:.3g})",
                max_abs, max_rel, None, policy,
            )
    return Verdict(
        True,
        f"all {len(exp)} outputs within rtol={rtol:g}, atol={atol:g} "
        f"(max abs {max_abs:.3g}, max rel {max_rel:.3g})",
        max_abs, max_rel, None, policy,
    )


def _ranked(exp, got, policy, max_abs, max_rel) -> Verdict:
    kind = policy["kind"]
    k = policy.get("k", 1)
    rows_total = 0
    rows_agree = 0
    for e, g in zip(exp, got, strict=True):
        if e.size == 0:
            continue
        width = e.shape[-1] if e.ndim else 1
        er = _rows(e, width)
        gr = _rows(g, width)
        nan_e, nan_g = np.isnan(er), np.isnan(gr)
        has_nan = nan_e.any(axis=1) | nan_g.any(axis=1)
        same_nan = np.all(nan_e == nan_g, axis=1)
        if kind == "argmax":
            match = np.argmax(er, axis=1) == np.argmax(gr, axis=1)
        else:
            kk = min(k, width)
            top_e = np.sort(np.argsort(er, axis=1, kind="stable")[:, ::-1][:, :kk], axis=1)
            top_g = np.sort(np.argsort(gr, axis=1, kind="stable")[:, ::-1][:, :kk], axis=1)
            match = np.all(top_e == top_g, axis=1)
        agree_rows = np.where(has_nan, same_nan, match)
        rows_total += er.shape[0]
        rows_agree += int(np.count_nonzero(agree_rows))
    agreement = rows_agree / rows_total if rows_total else 1.0
    need = policy["min_agreement"]
    what = "argmax" if kind == "argmax" else f"top-{k}"
    summary = f"{what} agreement {agreement:.4f} over {rows_total} rows"
    if agreement + 1e-12 < need:
        return Verdict(False, f"{summary}, below {need:g}", max_abs, max_rel, agreement, policy)
    return Verdict(True, f"{summary}, at least {need:g}", max_abs, max_rel, agreement, policy)


def _rows(a: np.ndarray, width: int) -> np.ndarray:
    rows = a.reshape(-1, width)
    if rows.dtype.kind == "b":
        return rows.astype(np.int8)
    if rows.dtype.kind == "c":
        raise BadInput("argmax/topk policies cannot rank complex outputs; use allclose")
    return rows if rows.dtype.kind in "iu" else rows.astype(np.float64)
