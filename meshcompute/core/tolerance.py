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

Rounding floors (:func:`effective_policy`, applied by :func:`compare_floored`, which is what
audits, appeals and ``mesh verify`` use through :mod:`meshcompute.verifier.outputs`): no policy
is tighter than what honest floating-point arithmetic can meet, whatever a client asked for.
For a floating output of stored dtype ``d`` (bfloat16 and float8 are judged by their own
precision, not by the float32 they are widened to) with ``rms`` the root mean square of the
finite elements of the expected tensor:

- ``rtol_floor = k(d) * eps(d)`` and ``atol_floor = k(d) * eps(d) * rms``: rounding errors
  scale with the magnitude of the terms that were summed, which the tensor's rms stands for
  where an element itself is small (a sum that cancels);
- ``exact`` on any floating output becomes ``allclose`` at the floor (integer and boolean
  outputs stay exactly equal); ``allclose`` bounds under the floor are raised to it; ``argmax``
  and ``topk`` are unchanged.

``k`` (:data:`FLOOR_ULPS`) is measured (2 cores, torch 2.13 CPU). Over the real sandboxed
runner, with every honest variant of ordinary programs (1 to 4 threads, the batch split in two
halves, ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41``; the MLP families, a
convnet, a transformer, a softmax head, a 12-layer residual stack) and a one-ulp change of the
inputs, the largest ``|diff| / (eps * (|expected| + rms))`` was 10.5 for float32 (the 512x2048
MLP under SSE41; 12.3 for the one-ulp input change), 2.2 for a bfloat16 MLP (one-ulp input
change; no setup changed its bits) and 0.17 for float16 outputs cast from float32. In-process
(``mesh bench verify``: thread counts and a batch split with a one-row shard) the worst honest
float32 audit needs 13.2, and the mildest cheat (float16 computed and cast back) 3,150.
``k = 128`` for 32- and 64-bit formats: the worst honest difference uses 10% of the floor (so
our own second runs stay well inside the 1/4 margin below) and the mildest cheat 25 times it;
under the default policy the floored audits of that bench give the same figures as unfloored
(no false positive, every cheat caught, same worst and mildest ratios). ``k = 16`` for
16-bit formats (rtol 1.6% for float16, 12.5% for bfloat16: a bfloat16 output cannot be judged
more finely than a few of its ulps) and ``k = 1`` for 8-bit formats, which torch only produces
by a final cast (one ulp apart at most; more would let 1 pass for 0 in float8_e5m2).

:data:`STABILITY_MARGIN`: a verifier's own second computations (another numeric setup, inputs
moved by one ulp) must stay within a quarter of the effective tolerance of its first before a
fail is posted (:func:`tolerance_used`), so an honest worker whose rounding differs up to 4
times more than ours is never the one that pays; otherwise the job cannot be judged.

:func:`evidence_hash` is what a verifier posts on chain with its verdict: anyone holding the
blobs can recompute it. Pure: numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    """The normalised policy of the job (what was asked)."""
    effective: dict[str, Any] | None = None
    """What was applied after the rounding floors (:meth:`EffectivePolicy.to_json`), for
    :func:`compare_floored`; None for :func:`compare`, which applies ``policy`` as it is."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite differences become None)."""
        doc = {
            "agree": self.agree,
            "reason": self.reason,
            "max_abs": _finite_or_none(self.max_abs),
            "max_rel": _finite_or_none(self.max_rel),
            "agreement": self.agreement,
            "policy": dict(self.policy),
        }
        if self.effective is not None:
            doc["effective"] = self.effective
        return doc


def compare(
    expected: Sequence[np.ndarray], got: Sequence[np.ndarray], policy: dict[str, Any]
) -> Verdict:
    """Compare a worker's outputs ``got`` with the recomputation ``expected`` under ``policy``.

    Raises :class:`BadInput` for a malformed policy or for ``expected`` arrays that are not
    numeric tensors (the recomputation is the verifier's own); every defect of ``got`` is a
    disagreement, never an exception. The policy is applied as given: audits use
    :func:`compare_floored`.
    """
    policy = validate_tolerance(policy)
    return _compare(_expected_arrays(expected), got, policy, None)


def compare_floored(
    expected: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    policy: dict[str, Any],
    dtypes: Sequence[str],
) -> Verdict:
    """:func:`compare` under the job's :func:`effective_policy` (the rounding floors), with
    ``dtypes`` the stored dtype names of ``expected`` (``"float32"``, ``"bfloat16"``, ...).
    The verdict carries the effective policy, and its reason says what the floor changed."""
    policy = validate_tolerance(policy)
    exp = _expected_arrays(expected)
    return _compare(exp, got, policy, effective_policy(policy, dtypes, exp))


def _expected_arrays(expected: Sequence[np.ndarray]) -> list[np.ndarray]:
    exp = [np.asarray(a) for a in expected]
    for i, a in enumerate(exp):
        if a.dtype.kind not in "biufc":
            raise BadInput(f"expected out.{i} has non-numeric dtype {a.dtype}")
    return exp


def _compare(
    exp: list[np.ndarray], got: Sequence[np.ndarray], policy: dict[str, Any],
    effective: EffectivePolicy | None,
) -> Verdict:
    verdict = _judge(exp, got, policy, effective)
    if effective is None:
        return verdict
    reason = verdict.reason
    if effective.raised:
        reason = f"{reason}; {effective.describe()}"
    return replace(verdict, reason=reason, effective=effective.to_json())


def _judge(
    exp: list[np.ndarray], got: Sequence[np.ndarray], policy: dict[str, Any],
    effective: EffectivePolicy | None,
) -> Verdict:
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
    kind = policy["kind"] if effective is None else effective.kind
    if kind == "exact":
        verdict = _exact(exp, gotten, policy, max_abs, max_rel)
    elif kind == "allclose":
        bounds = (
            [(float(policy["rtol"]), float(policy["atol"]))] * len(exp) if effective is None
            else [(float(p.get("rtol", 0.0)), float(p.get("atol", 0.0)))
                  for p in effective.outputs]
        )
        verdict = _allclose(exp, gotten, policy, bounds, max_abs, max_rel)
    else:
        verdict = _ranked(exp, gotten, policy, max_abs, max_rel)
    return verdict


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


# ---------------------------------------------------------------- rounding floors

#: Stored dtype name -> (machine epsilon, floor in units of it). Names are torch's, as
#: :func:`meshcompute.verifier.outputs.load_outputs` reports them; complex formats use the
#: precision of their parts. See the module docstring for how ``k`` was measured.
FLOAT_FORMATS: dict[str, tuple[float, int]] = {
    "float64": (2.0**-52, 128),
    "float32": (2.0**-23, 128),
    "complex128": (2.0**-52, 128),
    "complex64": (2.0**-23, 128),
    "float16": (2.0**-10, 16),
    "bfloat16": (2.0**-7, 16),
    "complex32": (2.0**-10, 16),
    "float8_e4m3fn": (2.0**-3, 1),
    "float8_e4m3fnuz": (2.0**-3, 1),
    "float8_e5m2": (2.0**-2, 1),
    "float8_e5m2fnuz": (2.0**-2, 1),
    "float8_e8m0fnu": (1.0, 1),
}
FLOOR_ULPS = {name: ulps for name, (_, ulps) in FLOAT_FORMATS.items()}
"""``k`` per stored dtype: the floor is ``k`` machine epsilons of the output's own format."""

STABILITY_MARGIN = 4
"""A verifier's own second computations must use at most 1/STABILITY_MARGIN of the effective
tolerance of its first before a fail may be posted (see the module docstring)."""


def rounding_floor(dtype: str, expected: np.ndarray) -> tuple[float, float] | None:
    """The ``(rtol, atol)`` floor of one output of stored dtype ``dtype`` (a torch dtype name)
    whose expected values are ``expected``; None for integer and boolean outputs (they are
    compared exactly). ``atol`` is ``rtol`` times the rms of the finite expected elements
    (their modulus for complex outputs). An unknown floating dtype takes the precision of the
    array it was widened to, with the 32-bit ``k``."""
    array = np.asarray(expected)
    name = str(dtype).removeprefix("torch.")
    if name in FLOAT_FORMATS:
        eps, ulps = FLOAT_FORMATS[name]
    elif array.dtype.kind in "fc":
        eps, ulps = float(np.finfo(array.dtype).eps), FLOOR_ULPS["float32"]
    else:
        return None
    rtol = ulps * eps
    return rtol, rtol * _rms(array)


def _rms(array: np.ndarray) -> float:
    if array.size == 0:
        return 0.0
    wide = np.abs(np.asarray(array, dtype=np.complex128 if array.dtype.kind == "c"
                             else np.float64))
    finite = wide[np.isfinite(wide)]
    if finite.size == 0:
        return 0.0
    with np.errstate(over="ignore"):
        peak = float(np.max(finite))
        if peak == 0.0:
            return 0.0
        return peak * float(np.sqrt(np.mean((finite / peak) ** 2)))


@dataclass(frozen=True)
class EffectivePolicy:
    """The policy an audit applies after the rounding floors (:func:`effective_policy`)."""

    requested: dict[str, Any]
    """The job's normalised policy."""
    kind: str
    """``exact``, ``allclose``, ``argmax`` or ``topk`` (``exact`` on floating outputs is
    ``allclose`` here)."""
    outputs: tuple[dict[str, Any], ...]
    """The normalised policy applied to each output ``out.i``, in order."""
    floors: tuple[tuple[float, float] | None, ...]
    """Each output's ``(rtol, atol)`` rounding floor (None: integer or boolean)."""

    @property
    def raised(self) -> bool:
        """Whether the floor changed anything the job asked for."""
        return any(p != self.requested for p in self.outputs)

    def describe(self) -> str:
        """One readable clause saying what was applied and why (empty when nothing changed)."""
        if not self.raised:
            return ""
        applied = ", ".join(
            f"out.{i} rtol={p['rtol']:.3g} atol={p['atol']:.3g}"
            for i, p in enumerate(self.outputs)
            if p.get("kind") == "allclose" and self.floors[i] is not None
        )
        if self.requested["kind"] == "exact":
            why = "exact on floating outputs is compared at the rounding floor"
        else:
            why = "allclose bounds under the rounding floor were raised to it"
        return f"effective policy allclose ({why}): {applied}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "requested": dict(self.requested),
            "outputs": [dict(p) for p in self.outputs],
            "raised": self.raised,
        }


def effective_policy(
    policy: dict[str, Any], dtypes: Sequence[str], expected: Sequence[np.ndarray]
) -> EffectivePolicy:
    """The policy an audit applies to outputs of stored dtypes ``dtypes`` whose recomputation
    is ``expected``: ``exact`` on any floating output becomes ``allclose`` at each output's
    :func:`rounding_floor` (integer and boolean outputs stay exactly equal), ``allclose``
    bounds under the floor are raised to it, ``argmax``/``topk`` are unchanged. No policy a
    client can choose is tighter than honest rounding. BadInput when ``dtypes`` and
    ``expected`` differ in length (both are the verifier's own)."""
    policy = validate_tolerance(policy)
    arrays = [np.asarray(a) for a in expected]
    names = list(dtypes)
    if len(names) != len(arrays):
        raise BadInput(f"{len(names)} dtypes for {len(arrays)} expected outputs")
    floors = tuple(rounding_floor(d, a) for d, a in zip(names, arrays, strict=True))
    kind = policy["kind"]
    if kind in ("argmax", "topk") or (
        kind == "exact" and all(f is None for f in floors)
    ):
        return EffectivePolicy(policy, kind, tuple(dict(policy) for _ in arrays), floors)
    outputs: list[dict[str, Any]] = []
    for floor in floors:
        if kind == "exact":
            rtol, atol = floor if floor is not None else (0.0, 0.0)
        else:
            rtol, atol = float(policy["rtol"]), float(policy["atol"])
            if floor is not None:
                rtol, atol = max(rtol, floor[0]), max(atol, floor[1])
        outputs.append({"kind": "allclose", "rtol": rtol, "atol": atol})
    return EffectivePolicy(policy, "allclose", tuple(outputs), floors)


def refusal(effective: EffectivePolicy) -> str | None:
    """Why a client's tolerance is refused outright, or None: ``exact`` on floating outputs,
    or ``allclose`` with both bounds under the rounding floor of some floating output (the
    whole budget lies under what honest rounding needs, so no honest worker can be held to
    it). A policy the floor raises only in part is accepted (and applied raised)."""
    requested = effective.requested
    floating = [i for i, f in enumerate(effective.floors) if f is not None]
    if not floating:
        return None
    if requested["kind"] == "exact":
        return (f"tolerance 'exact' on floating outputs ({', '.join(f'out.{i}' for i in floating)})"
                " cannot be met by honest workers: the same float program differs in its last "
                "bits between thread counts, batch splits and CPUs; use allclose (at least "
                f"{_floor_text(effective, floating)}) or argmax/topk")
    if requested["kind"] != "allclose":
        return None
    under = [i for i in floating
             if requested["rtol"] < effective.floors[i][0]  # type: ignore[index]
             and requested["atol"] < effective.floors[i][1]]  # type: ignore[index]
    if not under:
        return None
    return (f"tolerance allclose(rtol={requested['rtol']:g}, atol={requested['atol']:g}) lies "
            f"under the rounding floor of {', '.join(f'out.{i}' for i in under)} "
            f"({_floor_text(effective, under)}): no honest worker can be held to it")


def _floor_text(effective: EffectivePolicy, indexes: Sequence[int]) -> str:
    parts = []
    for i in indexes:
        rtol, atol = effective.floors[i]  # type: ignore[misc]
        parts.append(f"out.{i} rtol={rtol:.3g}, atol={atol:.3g}")
    return "; ".join(parts)


def tolerance_used(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], effective: EffectivePolicy
) -> float:
    """How much of the effective tolerance ``other`` uses against ``reference`` (two
    computations of ours, same program): the largest :func:`allclose_ratio` over floating
    outputs under their effective bounds, 0 or infinity for outputs compared exactly (equal or
    not), infinity when the outputs cannot be compared. For ``exact``/``allclose`` jobs;
    BadInput for ranked policies."""
    if effective.kind not in ("exact", "allclose"):
        raise BadInput(f"tolerance_used is for exact/allclose policies, not {effective.kind}")
    ref = [np.asarray(a) for a in reference]
    oth = [np.asarray(a) for a in other]
    if len(ref) != len(oth) or len(ref) != len(effective.outputs):
        return math.inf
    worst = 0.0
    for e, g, p in zip(ref, oth, effective.outputs, strict=True):
        if e.dtype != g.dtype or e.shape != g.shape:
            return math.inf
        exact = p["kind"] == "exact" or e.dtype.kind in "biu" or (
            float(p["rtol"]) + float(p["atol"]) == 0.0)
        if exact:
            same = np.ascontiguousarray(e).tobytes() == np.ascontiguousarray(g).tobytes()
            if not same:
                return math.inf
            continue
        worst = max(worst, allclose_ratio([e], [g], float(p["rtol"]), float(p["atol"])))
    return worst


@dataclass(frozen=True)
class RankedTies:
    """Rows of an ``argmax``/``topk`` comparison, with the disagreeing rows that are near-ties
    (:func:`ranked_near_ties`)."""

    rows: int
    agree: int
    near_ties: int
    """Disagreeing rows whose disputed indices lie within rounding of the ranking boundary."""
    need: float

    @property
    def excused(self) -> bool:
        """Whether the agreement counting near-ties as agreeing meets the policy (the
        disagreement is then about ties that rounding decides, not about the values)."""
        if self.rows == 0:
            return False
        return (self.agree + self.near_ties) / self.rows + 1e-12 >= self.need


def ranked_near_ties(
    ours: Sequence[np.ndarray],
    others: Sequence[Sequence[np.ndarray]],
    theirs: Sequence[np.ndarray],
    policy: dict[str, Any],
    dtypes: Sequence[str],
    *,
    margin: float = STABILITY_MARGIN,
) -> RankedTies:
    """Which rows of an ``argmax``/``topk`` disagreement between ``theirs`` and ``ours`` are
    near-ties. A row is a near-tie when every index in the symmetric difference of the two
    top-k sets has, in ``ours``, a value within ``delta`` of our k-th largest value ``t``,
    with ``delta = margin * (noise + atol_floor + rtol_floor * |t|)`` and ``noise`` the
    largest difference in that row between ``ours`` and our other computations ``others``
    (another numeric setup, inputs moved by one ulp). Rows with NaN are never near-ties;
    integer and boolean outputs have no floor (only exact ties count). ``theirs`` must have
    ``ours``' dtypes and shapes (BadInput otherwise: compare first)."""
    policy = validate_tolerance(policy)
    if policy["kind"] not in ("argmax", "topk"):
        raise BadInput(f"ranked_near_ties is for argmax/topk policies, not {policy['kind']}")
    k = int(policy.get("k", 1))
    exp = [np.asarray(a) for a in ours]
    got = [np.asarray(a) for a in theirs]
    if len(exp) != len(got) or len(list(dtypes)) != len(exp):
        raise BadInput("ranked_near_ties needs as many outputs and dtypes on every side")
    rows = agree = near = 0
    for index, (e, g, dtype) in enumerate(zip(exp, got, dtypes, strict=True)):
        if e.shape != g.shape or e.dtype != g.dtype:
            raise BadInput(f"out.{index}: dtype or shape differs; compare first")
        if e.size == 0:
            continue
        width = e.shape[-1] if e.ndim else 1
        er, gr = _rows(e, width), _rows(g, width)
        kk = min(k, width)
        top_e = _top_mask(er, kk)
        top_g = _top_mask(gr, kk)
        nan_e, nan_g = np.isnan(er), np.isnan(gr)
        has_nan = nan_e.any(axis=1) | nan_g.any(axis=1)
        same_nan = np.all(nan_e == nan_g, axis=1)
        match = np.all(top_e == top_g, axis=1)
        agree_rows = np.where(has_nan, same_nan, match)
        floor = rounding_floor(dtype, e) or (0.0, 0.0)
        noise = np.zeros(er.shape[0])
        for run in others:
            o = np.asarray(run[index]) if index < len(run) else None
            if o is None or o.shape != e.shape:
                noise[:] = np.inf
                continue
            orows = _rows(o, width)
            with np.errstate(invalid="ignore"):
                d = np.abs(orows - er)
            d = np.where(np.isnan(orows) & np.isnan(er), 0.0, d)
            d = np.where(np.isnan(d), np.inf, d)
            noise = np.maximum(noise, d.max(axis=1))
        kth = np.sort(np.where(nan_e, -np.inf, er), axis=1)[:, width - kk]
        with np.errstate(over="ignore", invalid="ignore"):
            delta = margin * (noise + floor[1] + floor[0] * np.abs(kth))
            close = np.abs(er - kth[:, None]) <= delta[:, None]
        disputed = top_e ^ top_g
        tie_rows = ~agree_rows & ~has_nan & np.all(~disputed | close, axis=1)
        rows += er.shape[0]
        agree += int(np.count_nonzero(agree_rows))
        near += int(np.count_nonzero(tie_rows))
    return RankedTies(rows, agree, near, float(policy["min_agreement"]))


def _top_mask(rows: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of each row's ``k`` largest entries, chosen as :func:`compare` does."""
    if k == 1:
        picked = np.argmax(rows, axis=1)[:, None]
    else:
        picked = np.argsort(rows, axis=1, kind="stable")[:, ::-1][:, :k]
    mask = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(mask, picked, True, axis=1)
    return mask


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


def _allclose(exp, got, policy, bounds, max_abs, max_rel) -> Verdict:
    for i, (e, g) in enumerate(zip(exp, got, strict=True)):
        rtol, atol = bounds[i]
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
    if len(set(bounds)) <= 1:
        rtol, atol = bounds[0] if bounds else (policy.get("rtol", 0.0), policy.get("atol", 0.0))
        within = f"within rtol={rtol:g}, atol={atol:g}"
    else:
        within = "within their rtol, atol"
    return Verdict(
        True,
        f"all {len(exp)} outputs {within} (max abs {max_abs:.3g}, max rel {max_rel:.3g})",
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
