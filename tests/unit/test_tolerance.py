"""Tolerance policies: exact, allclose, argmax, top-k; evidence hashes; policy parsing."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meshcompute.core.spec import DEFAULT_TOLERANCE
from meshcompute.core.tolerance import (
    EVIDENCE_VERSION,
    Verdict,
    allclose_ratio,
    compare,
    evidence_hash,
    parse_policy,
)
from meshcompute.errors import BadInput

EXACT = {"kind": "exact"}
CLOSE = {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}
ARGMAX = {"kind": "argmax", "min_agreement": 0.75}
TOP2 = {"kind": "topk", "k": 2, "min_agreement": 1.0}
ALL_POLICIES = (EXACT, CLOSE, ARGMAX, TOP2, DEFAULT_TOLERANCE)


def logits(seed: int = 0, shape: tuple[int, ...] = (8, 10)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------ shape, dtype, count


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_compare_identical_outputs_agree_under_every_policy(policy: dict) -> None:
    a = [logits(1), logits(2, (3, 4, 5))]
    verdict = compare(a, [x.copy() for x in a], policy)
    assert verdict.agree, verdict.reason
    assert verdict.max_abs == 0.0 and verdict.max_rel == 0.0
    assert verdict.policy["kind"] == policy["kind"]


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_compare_float16_result_for_float32_job_is_a_dtype_mismatch(policy: dict) -> None:
    a = logits()
    verdict = compare([a], [a.astype(np.float16)], policy)
    assert not verdict.agree
    assert "dtype float16" in verdict.reason and "float32" in verdict.reason
    assert math.isinf(verdict.max_abs)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_compare_refuses_other_shapes_and_counts(policy: dict) -> None:
    a = logits()
    wrong_shape = compare([a], [a.reshape(10, 8)], policy)
    assert not wrong_shape.agree and "shape [10, 8]" in wrong_shape.reason
    missing = compare([a, a], [a], policy)
    assert not missing.agree and "output count differs" in missing.reason
    extra = compare([a], [a, a], policy)
    assert not extra.agree


def test_compare_names_the_first_bad_output() -> None:
    a, b = logits(1), logits(2)
    verdict = compare([a, b], [a, b * 1.01], CLOSE)
    assert not verdict.agree
    assert verdict.reason.startswith("out.1:")


def test_compare_worker_garbage_is_a_disagreement_not_an_error() -> None:
    verdict = compare([logits()], [np.array(["junk"])], CLOSE)
    assert not verdict.agree
    assert "dtype" in verdict.reason


def test_compare_refuses_non_numeric_expected() -> None:
    with pytest.raises(BadInput, match="non-numeric"):
        compare([np.array(["a"])], [np.array(["a"])], CLOSE)


def test_compare_refuses_malformed_policy() -> None:
    with pytest.raises(BadInput, match="kind"):
        compare([logits()], [logits()], {"kind": "roughly"})
    with pytest.raises(BadInput, match="rtol"):
        compare([logits()], [logits()], {"kind": "allclose", "atol": 1e-5})


# ------------------------------------------------------------ exact


def test_exact_detects_one_flipped_bit() -> None:
    a = logits()
    b = a.copy()
    b.view(np.uint32)[3, 4] ^= 1
    verdict = compare([a], [b], EXACT)
    assert not verdict.agree and "bytes differ" in verdict.reason
    assert 0 < verdict.max_abs < 1e-6


def test_exact_distinguishes_signed_zero_and_accepts_identical_nan() -> None:
    assert not compare([np.array([0.0])], [np.array([-0.0])], EXACT).agree
    nan = np.array([np.nan, 1.0])
    assert compare([nan], [nan.copy()], EXACT).agree


# ------------------------------------------------------------ allclose


def test_allclose_boundary_is_inclusive() -> None:
    policy = {"kind": "allclose", "rtol": 2.0**-10, "atol": 2.0**-12}  # exact in binary
    e = np.array([1.0, 0.0, -2.0])
    budget = policy["atol"] + policy["rtol"] * np.abs(e)
    assert compare([e], [e + budget], policy).agree
    assert compare([e], [e - budget], policy).agree
    assert not compare([e], [e + budget * 1.01], policy).agree


def test_allclose_reports_max_abs_and_rel() -> None:
    e = np.array([1.0, 2.0, 4.0], dtype=np.float64)
    g = np.array([1.0, 2.0002, 3.9996], dtype=np.float64)
    verdict = compare([e], [g], CLOSE)
    assert verdict.agree  # 4e-4 <= 1e-5 + 4e-4
    assert verdict.max_abs == pytest.approx(4e-4)
    assert verdict.max_rel == pytest.approx(1e-4)
    assert verdict.agreement is None


def test_allclose_rel_ignores_zero_expected_elements() -> None:
    verdict = compare([np.array([0.0, 1.0])], [np.array([1e-6, 1.0])], CLOSE)
    assert verdict.agree
    assert verdict.max_rel == 0.0 and verdict.max_abs == pytest.approx(1e-6)


def test_allclose_catches_scaling_by_one_percent() -> None:
    a = logits()
    verdict = compare([a], [a * np.float32(1.01)], DEFAULT_TOLERANCE)
    assert not verdict.agree
    assert "elements outside" in verdict.reason
    assert verdict.max_rel == pytest.approx(0.01, rel=1e-3)


def test_allclose_nan_must_sit_at_the_same_positions() -> None:
    e = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert compare([e], [e.copy()], CLOSE).agree
    moved = np.array([np.nan, 2.0, 3.0], dtype=np.float32)
    verdict = compare([e], [moved], CLOSE)
    assert not verdict.agree and "NaN" in verdict.reason
    assert not compare([np.array([1.0])], [np.array([np.nan])], CLOSE).agree


def test_allclose_infinities_must_be_equal() -> None:
    e = np.array([np.inf, -np.inf, 1.0])
    assert compare([e], [e.copy()], CLOSE).agree
    assert not compare([e], [np.array([-np.inf, -np.inf, 1.0])], CLOSE).agree
    assert not compare([e], [np.array([1e308, -np.inf, 1.0])], CLOSE).agree
    assert not compare([np.array([1.0])], [np.array([np.inf])], CLOSE).agree


def test_allclose_integers_must_be_equal() -> None:
    e = np.array([1, 2, 3], dtype=np.int64)
    assert compare([e], [e.copy()], CLOSE).agree
    verdict = compare([e], [np.array([1, 2, 4], dtype=np.int64)], {**CLOSE, "atol": 5.0})
    assert not verdict.agree and "integer" in verdict.reason


def test_allclose_complex_compares_the_modulus_of_the_difference() -> None:
    e = np.array([1 + 1j, 2 - 1j], dtype=np.complex64)
    assert compare([e], [e + np.complex64(1e-6j)], CLOSE).agree
    assert not compare([e], [e + np.complex64(1e-2j)], CLOSE).agree


def test_empty_outputs_agree() -> None:
    empty = np.zeros((0, 10), dtype=np.float32)
    for policy in ALL_POLICIES:
        assert compare([empty], [empty.copy()], policy).agree
    assert compare([], [], CLOSE).agree


finite64 = hnp.arrays(
    np.float64, hnp.array_shapes(max_dims=3, max_side=6),
    elements=st.floats(-1e6, 1e6, allow_nan=False),
)
any64 = hnp.arrays(
    np.float64, hnp.array_shapes(max_dims=2, max_side=5),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(finite64, st.floats(0, 1e-2), st.floats(0, 1e-2), st.integers(0, 2**32 - 1))
def test_allclose_matches_numpy_allclose(e: np.ndarray, rtol: float, atol: float, seed: int) -> None:
    noise = np.random.default_rng(seed).standard_normal(e.shape) * (atol + rtol * np.abs(e))
    g = e + noise * 1.2
    verdict = compare([e], [g], {"kind": "allclose", "rtol": rtol, "atol": atol})
    assert verdict.agree == bool(np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True))
    ratio = allclose_ratio([e], [g], rtol, atol) if rtol + atol > 0 else None
    if ratio is not None:
        assert verdict.agree == (ratio <= 1)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(any64, any64)
def test_allclose_handles_nonfinite_like_numpy(e: np.ndarray, other: np.ndarray) -> None:
    g = other if other.shape == e.shape else e.copy()
    verdict = compare([e], [g], CLOSE)
    expected = bool(np.allclose(g, e, rtol=CLOSE["rtol"], atol=CLOSE["atol"], equal_nan=True))
    assert verdict.agree == expected
    assert compare([e], [e.copy()], CLOSE).agree


# ------------------------------------------------------------ argmax / top-k


def test_argmax_agreement_fraction_and_threshold() -> None:
    e = np.eye(4, dtype=np.float32)
    g = e.copy()
    g[0] = [0, 1, 0, 0]  # one row of four disagrees
    verdict = compare([e], [g], ARGMAX)
    assert verdict.agreement == pytest.approx(0.75)
    assert verdict.agree  # 0.75 >= 0.75
    strict = compare([e], [g], {"kind": "argmax", "min_agreement": 0.8})
    assert not strict.agree and "below 0.8" in strict.reason


def test_argmax_accepts_a_rescaled_output_by_design() -> None:
    a = logits()
    verdict = compare([a], [a * np.float32(1.01)], {"kind": "argmax", "min_agreement": 1.0})
    assert verdict.agree and verdict.agreement == 1.0


def test_argmax_pools_rows_across_outputs_and_leading_dims() -> None:
    e = [logits(1, (2, 3, 5)), logits(2, (4, 5))]  # 6 + 4 rows
    g = [x.copy() for x in e]
    g[1][0] = -g[1][0]
    verdict = compare(e, g, {"kind": "argmax", "min_agreement": 0.0})
    assert verdict.agreement == pytest.approx(9 / 10)


def test_argmax_rows_with_nan_agree_only_when_nan_matches() -> None:
    e = np.array([[1.0, np.nan], [0.0, 1.0]])
    assert compare([e], [e.copy()], {"kind": "argmax", "min_agreement": 1.0}).agree
    g = np.array([[np.nan, 1.0], [0.0, 1.0]])
    verdict = compare([e], [g], {"kind": "argmax", "min_agreement": 0.0})
    assert verdict.agreement == pytest.approx(0.5)


def test_topk_compares_index_sets() -> None:
    e = np.array([[5.0, 4.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    swapped = np.array([[4.0, 5.0, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]])  # same top-2 set
    assert compare([e], [swapped], TOP2).agree
    changed = np.array([[5.0, 0.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])  # top-2 {0,3} vs {0,1}
    verdict = compare([e], [changed], TOP2)
    assert not verdict.agree and verdict.agreement == pytest.approx(0.5)
    assert "top-2" in verdict.reason


def test_topk_caps_k_at_the_row_length() -> None:
    e = logits(3, (4, 3))
    verdict = compare([e], [logits(4, (4, 3))], {"kind": "topk", "k": 10, "min_agreement": 1.0})
    assert verdict.agree  # every row's top-3 of 3 is the whole row


def test_ranked_mismatch_reports_zero_agreement() -> None:
    verdict = compare([logits()], [logits().astype(np.float64)], ARGMAX)
    assert not verdict.agree and verdict.agreement == 0.0


# ------------------------------------------------------------ verdicts and evidence


def test_verdict_to_json_is_strict_json() -> None:
    verdict = compare([logits()], [logits().astype(np.float16)], CLOSE)
    doc = verdict.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["max_abs"] is None and doc["agree"] is False
    assert isinstance(verdict, Verdict)


H1, H2, H3 = ("a" * 64), ("b" * 64), ("c" * 64)


def test_evidence_hash_is_sha256_of_the_documented_canonical_json() -> None:
    digest = evidence_hash([H1, H2], CLOSE)
    document = {"outputs": [H1, H2], "policy": CLOSE, "version": EVIDENCE_VERSION}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert digest == hashlib.sha256(canonical).digest()
    assert len(digest) == 32


def test_evidence_hash_depends_on_every_output_order_and_policy() -> None:
    base = evidence_hash([H1, H2], CLOSE)
    assert evidence_hash([H2, H1], CLOSE) != base
    assert evidence_hash([H1, H3], CLOSE) != base
    assert evidence_hash([H1, H2, H3], CLOSE) != base
    assert evidence_hash([H1, H2], {**CLOSE, "rtol": 2e-4}) != base
    assert evidence_hash([H1, H2], EXACT) != base


def test_evidence_hash_normalises_the_policy() -> None:
    a = evidence_hash([H1, H2], {"kind": "allclose", "rtol": 0.0001, "atol": 1e-5})
    b = evidence_hash([H1, H2], {"atol": 0.00001, "kind": "allclose", "rtol": 1e-4})
    assert a == b
    assert evidence_hash([H1, H2], {"kind": "topk", "k": 5, "min_agreement": 1}) == evidence_hash(
        [H1, H2], {"kind": "topk", "k": 5.0, "min_agreement": 1.0}
    )


@pytest.mark.parametrize(
    "hashes, message",
    [
        ([H1], "at least two"),
        ([H1, "A" * 64], "output_hashes\\[1\\]"),
        ([H1, "ab"], "output_hashes\\[1\\]"),
        ([H1, 7], "output_hashes\\[1\\]"),
        ("a" * 64, "not one string"),
    ],
)
def test_evidence_hash_refuses_bad_hashes(hashes: object, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        evidence_hash(hashes, CLOSE)  # type: ignore[arg-type]


def test_evidence_hash_refuses_bad_policy() -> None:
    with pytest.raises(BadInput):
        evidence_hash([H1, H2], {"kind": "allclose", "rtol": -1.0, "atol": 0.0})


# ------------------------------------------------------------ parse_policy


@pytest.mark.parametrize(
    "text, policy",
    [
        ("exact", {"kind": "exact"}),
        ("  EXACT ", {"kind": "exact"}),
        ("allclose", DEFAULT_TOLERANCE),
        ("allclose:rtol=1e-4,atol=1e-5", {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}),
        ("allclose:atol=0", {"kind": "allclose", "rtol": DEFAULT_TOLERANCE["rtol"], "atol": 0.0}),
        ("allclose: rtol = 0.01", {"kind": "allclose", "rtol": 0.01,
                                   "atol": DEFAULT_TOLERANCE["atol"]}),
        ("argmax:0.99", {"kind": "argmax", "min_agreement": 0.99}),
        ("topk:5:0.99", {"kind": "topk", "k": 5, "min_agreement": 0.99}),
        ('{"kind": "argmax", "min_agreement": 1}', {"kind": "argmax", "min_agreement": 1.0}),
    ],
)
def test_parse_policy_forms(text: str, policy: dict) -> None:
    assert parse_policy(text) == policy


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("fuzzy", "unknown tolerance policy"),
        ("exact:1", "no parameters"),
        ("allclose:rtol", "rtol=NUMBER"),
        ("allclose:tol=1", "rtol=NUMBER"),
        ("allclose:rtol=abc", "not a number"),
        ("allclose:rtol=nan", "finite"),
        ("allclose:rtol=-1", "out of range"),
        ("argmax", "argmax:FRACTION"),
        ("argmax:1.5", "out of range"),
        ("argmax:0.9:1", "argmax:FRACTION"),
        ("topk:5", "topk:K:FRACTION"),
        ("topk:x:0.9", "positive integer"),
        ("topk:0:0.9", "out of range"),
        ("topk:2.5:0.9", "positive integer"),
        ("{not json", "not valid JSON"),
        ('{"kind": "exact", "rtol": 1}', "unknown fields"),
    ],
)
def test_parse_policy_refuses_bad_text_clearly(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_policy(text)


def test_allclose_ratio_refuses_zero_budget() -> None:
    with pytest.raises(BadInput):
        allclose_ratio([logits()], [logits()], 0.0, 0.0)
