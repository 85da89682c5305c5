"""Rounding floors and the stability judgements of the pure core: no tolerance a client picks is
applied tighter than honest rounding, the floor is in the verdict, cheats are still caught, and
an argmax/top-k disagreement that only rounding decides is recognised as such."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshcompute.core.tolerance import (
    FLOAT_FORMATS,
    FLOOR_ULPS,
    STABILITY_MARGIN,
    compare,
    compare_floored,
    effective_policy,
    ranked_near_ties,
    refusal,
    rounding_floor,
    tolerance_used,
)
from meshcompute.errors import BadInput

EXACT = {"kind": "exact"}
DEFAULT = {"kind": "allclose", "rtol": 3e-5, "atol": 3e-6}
TIGHT = {"kind": "allclose", "rtol": 1e-9, "atol": 0.0}
ARGMAX = {"kind": "argmax", "min_agreement": 1.0}
TOP2 = {"kind": "topk", "k": 2, "min_agreement": 1.0}
EPS32 = 2.0**-23


def outputs(seed: int = 0, shape=(16, 10), scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ulps(a: np.ndarray, n: int) -> np.ndarray:
    out = a.copy()
    for _ in range(n):
        out = np.nextafter(out, np.float32(np.inf))
    return out


# ------------------------------------------------------------------ the floor itself


def test_floor_is_k_eps_of_the_stored_dtype_and_scales_with_the_rms() -> None:
    e = outputs(scale=3.0)
    rms = float(np.sqrt(np.mean(e.astype(np.float64) ** 2)))
    rtol, atol = rounding_floor("float32", e)
    assert rtol == FLOOR_ULPS["float32"] * EPS32
    assert atol == pytest.approx(rtol * rms)
    # bfloat16 is widened to float32 for comparison but judged by its own precision
    assert rounding_floor("bfloat16", e)[0] == FLOOR_ULPS["bfloat16"] * 2.0**-7
    assert rounding_floor("torch.float16", e)[0] == FLOOR_ULPS["float16"] * 2.0**-10
    assert rounding_floor("int64", np.arange(4)) is None
    assert rounding_floor("bool", np.ones(2, dtype=bool)) is None
    assert rounding_floor("float32", np.zeros(0, dtype=np.float32))[1] == 0.0
    inf_and_nan = np.array([np.inf, np.nan, 2.0, -2.0], dtype=np.float32)
    assert rounding_floor("float32", inf_and_nan)[1] == pytest.approx(rtol * 2.0)
    huge = np.full(4, 3e38, dtype=np.float32)  # rms computed without overflow
    assert math.isfinite(rounding_floor("float32", huge)[1])
    assert set(FLOOR_ULPS) == set(FLOAT_FORMATS)


def test_exact_on_float_outputs_becomes_allclose_at_the_floor_and_ints_stay_exact() -> None:
    e = outputs()
    eff = effective_policy(EXACT, ["float32", "int64"], [e, np.arange(3)])
    assert eff.kind == "allclose" and eff.raised
    floor = rounding_floor("float32", e)
    assert eff.outputs[0] == {"kind": "allclose", "rtol": floor[0], "atol": floor[1]}
    assert eff.outputs[1] == {"kind": "allclose", "rtol": 0.0, "atol": 0.0}
    ints = effective_policy(EXACT, ["int64"], [np.arange(3)])
    assert ints.kind == "exact" and not ints.raised


def test_allclose_is_raised_only_where_it_is_under_the_floor() -> None:
    e = outputs()
    floor = rounding_floor("float32", e)
    tight = effective_policy(TIGHT, ["float32"], [e])
    assert tight.outputs[0] == {"kind": "allclose", "rtol": floor[0], "atol": floor[1]}
    loose = {"kind": "allclose", "rtol": 1e-3, "atol": 1e-3}
    assert not effective_policy(loose, ["float32"], [e]).raised
    mixed = effective_policy({"kind": "allclose", "rtol": 1e-3, "atol": 0.0}, ["float32"], [e])
    assert mixed.outputs[0] == {"kind": "allclose", "rtol": 1e-3, "atol": floor[1]}
    for ranked in (ARGMAX, TOP2):
        eff = effective_policy(ranked, ["float32"], [e])
        assert eff.kind == ranked["kind"] and not eff.raised
    with pytest.raises(BadInput, match="dtypes"):
        effective_policy(EXACT, ["float32"], [e, e])


def test_an_honest_last_bit_difference_passes_exact_and_the_verdict_says_why() -> None:
    e = outputs()
    honest = ulps(e, 8)
    assert not compare([e], [honest], EXACT).agree  # as asked, no honest worker could pass
    verdict = compare_floored([e], [honest], EXACT, ["float32"])
    assert verdict.agree
    assert "effective policy allclose" in verdict.reason
    assert "exact on floating outputs" in verdict.reason
    assert verdict.policy == EXACT  # what the job asked, as the evidence hash binds it
    assert verdict.effective is not None and verdict.effective["requested"] == EXACT
    assert verdict.to_json()["effective"]["outputs"][0]["kind"] == "allclose"
    assert compare_floored([e], [honest], TIGHT, ["float32"]).agree


def test_cheats_are_still_caught_at_the_floor() -> None:
    e = outputs()
    for cheat in (e * np.float32(1.0001), np.zeros_like(e), e.astype(np.float16).astype(
            np.float32) + np.float32(1e-3), outputs(seed=9)):
        for policy in (EXACT, TIGHT, DEFAULT):
            verdict = compare_floored([e], [cheat], policy, ["float32"])
            assert not verdict.agree, (policy, verdict.reason)
    # a float16 result for a float32 job is still a dtype mismatch
    assert not compare_floored([e], [e.astype(np.float16)], EXACT, ["float32"]).agree


def test_the_default_policy_is_not_loosened_for_ordinary_outputs() -> None:
    e = outputs(scale=0.1)
    eff = effective_policy(DEFAULT, ["float32"], [e])
    assert not eff.raised
    verdict = compare_floored([e], [e * np.float32(1.0001)], DEFAULT, ["float32"])
    assert not verdict.agree and "effective policy" not in verdict.reason


def test_low_precision_floors_still_tell_values_apart() -> None:
    ones, zeros = np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)
    for dtype in ("float8_e4m3fn", "float8_e5m2", "bfloat16", "float16"):
        assert not compare_floored([ones], [zeros], EXACT, [dtype]).agree, dtype
        assert compare_floored([ones], [ones], EXACT, [dtype]).agree
    # one bfloat16 ulp (2**-7 relative) is within its floor, ten percent is not
    assert compare_floored([ones], [ones * np.float32(1 + 2**-7)], EXACT, ["bfloat16"]).agree
    assert not compare_floored([ones], [ones * np.float32(1.3)], EXACT, ["bfloat16"]).agree


# ------------------------------------------------------------------ refusing tolerances


def test_refused_tolerances_name_the_problem() -> None:
    e = outputs()
    assert "exact" in refusal(effective_policy(EXACT, ["float32"], [e]))
    assert "rounding floor" in refusal(effective_policy(TIGHT, ["float32"], [e]))
    assert refusal(effective_policy(EXACT, ["int64"], [np.arange(3)])) is None
    assert refusal(effective_policy(DEFAULT, ["float32"], [e])) is None
    partly = {"kind": "allclose", "rtol": 1e-3, "atol": 0.0}  # raised in part only: accepted
    assert refusal(effective_policy(partly, ["float32"], [e])) is None
    assert refusal(effective_policy(ARGMAX, ["float32"], [e])) is None


# ------------------------------------------------------------------ our own second runs


def test_tolerance_used_measures_our_other_runs_against_the_effective_budget() -> None:
    e = outputs()
    eff = effective_policy(EXACT, ["float32"], [e])
    assert tolerance_used([e], [e], eff) == 0.0
    small = tolerance_used([e], [ulps(e, 2)], eff)
    assert 0 < small < 1 / STABILITY_MARGIN
    assert tolerance_used([e], [e * np.float32(1.001)], eff) > 1
    assert tolerance_used([e], [e[:3]], eff) == math.inf
    nan = e.copy()
    nan[0, 0] = np.nan
    assert tolerance_used([e], [nan], eff) == math.inf
    mixed = effective_policy(EXACT, ["float32", "int64"], [e, np.arange(3)])
    assert tolerance_used([e, np.arange(3)], [e, np.arange(3) + 1], mixed) == math.inf
    ints = effective_policy(EXACT, ["int64"], [np.arange(3)])
    assert tolerance_used([np.arange(3)], [np.arange(3)], ints) == 0.0
    with pytest.raises(BadInput):
        tolerance_used([e], [e], effective_policy(ARGMAX, ["float32"], [e]))


def _tied(rows: int = 12) -> np.ndarray:
    logits = outputs(shape=(rows, 6))
    logits[:, 1] = logits[:, 0] = 5.0  # an exact tie at the top of every row
    return logits


def test_a_disagreement_only_about_ties_is_recognised() -> None:
    ours = _tied()
    theirs = ours.copy()
    theirs[:, 1] = np.nextafter(theirs[:, 1], np.float32(np.inf))  # rounding breaks the tie
    assert not compare([ours], [theirs], ARGMAX).agree
    ties = ranked_near_ties([ours], [[ours]], [theirs], ARGMAX, ["float32"])
    assert (ties.rows, ties.agree, ties.near_ties, ties.excused) == (12, 0, 12, True)


def test_a_wrong_class_is_not_a_near_tie() -> None:
    ours = _tied()
    theirs = ours.copy()
    theirs[:, 4] = 9.0  # a class far below the top in our output
    ties = ranked_near_ties([ours], [[ours]], [theirs], ARGMAX, ["float32"])
    assert ties.near_ties == 0 and not ties.excused
    half = ours.copy()
    half[:6, 1] = np.nextafter(half[:6, 1], np.float32(np.inf))
    half[6:, 4] = 9.0
    mixed = ranked_near_ties([ours], [[ours]], [half], ARGMAX, ["float32"])
    assert (mixed.near_ties, mixed.excused) == (6, False)
    lenient = ranked_near_ties([ours], [[ours]], [half], {**ARGMAX, "min_agreement": 0.5},
                               ["float32"])
    assert lenient.excused


def test_near_ties_widen_with_the_spread_of_our_own_runs() -> None:
    ours = outputs(shape=(8, 5))
    ours[:, 0] = 3.0
    ours[:, 1] = 3.0 - 1e-3  # a gap far over the floor
    theirs = ours.copy()
    theirs[:, 1] = 3.0 + 1e-3
    assert not ranked_near_ties([ours], [[ours]], [theirs], ARGMAX, ["float32"]).excused
    noisy = ours.copy()
    noisy[:, 1] += 5e-4  # our own other run moves that much: the gap is within its spread
    assert ranked_near_ties([ours], [[noisy]], [theirs], ARGMAX, ["float32"]).excused


def test_topk_near_ties_look_at_the_kth_boundary() -> None:
    ours = outputs(shape=(6, 5))
    ours[:, 0], ours[:, 1], ours[:, 2] = 9.0, 4.0, 4.0  # top-2 boundary tied between 1 and 2
    theirs = ours.copy()
    theirs[:, 1] = np.nextafter(np.float32(4.0), np.float32(np.inf))  # ours picks 2, theirs 1
    assert not compare([ours], [theirs], TOP2).agree
    assert ranked_near_ties([ours], [[ours]], [theirs], TOP2, ["float32"]).excused
    wrong = ours.copy()
    wrong[:, 4] = 20.0
    assert not ranked_near_ties([ours], [[ours]], [wrong], TOP2, ["float32"]).excused


def test_rows_with_nan_are_never_near_ties_and_bad_calls_are_refused() -> None:
    ours = _tied(4)
    theirs = ours.copy()
    theirs[:, 1] = np.nextafter(theirs[:, 1], np.float32(np.inf))
    theirs[0, 3] = np.nan
    ties = ranked_near_ties([ours], [[ours]], [theirs], ARGMAX, ["float32"])
    assert ties.near_ties == 3 and not ties.excused
    with pytest.raises(BadInput):
        ranked_near_ties([ours], [[ours]], [theirs], EXACT, ["float32"])
    with pytest.raises(BadInput):
        ranked_near_ties([ours], [[ours]], [theirs[:2]], ARGMAX, ["float32"])
