"""The audit-rate rule: bounds, monotonicity, and the deterrence condition it is derived from."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshcompute.core.audit_rate import BPS, TRUSTED_MARGIN, audit_bps, deters_cheating
from meshcompute.core.payout import split_reward
from meshcompute.errors import BadInput

amount = st.integers(0, 2**96 - 1)
positive = st.integers(1, 2**96 - 1)
count = st.integers(0, 2**32 - 1)
bps = st.integers(0, BPS)


def rate(**overrides: int) -> int:
    args = {"reward": 100, "collateral": 1_000, "free_stake": 100_000, "completed": 0,
            "audits_passed": 0, "slashed": 0, "min_bps": 0}
    args.update(overrides)
    return audit_bps(**args)


def test_new_worker_rate_follows_the_documented_formula() -> None:
    # margin 4, reward / (reward + collateral) = 1/11 -> ceil(40000 / 11)
    assert rate() == 3637
    assert rate(free_stake=0) == 3637  # no record: the stake changes nothing


def test_long_record_with_ample_stake_approaches_the_trusted_margin() -> None:
    long_record = rate(completed=10**12, audits_passed=10**11, free_stake=10**12)
    assert long_record == 1364  # ceil(1.5 / 11 * 10000)
    partial = rate(completed=1_000, audits_passed=200)
    assert long_record < partial < rate()


def test_thin_stake_forfeits_the_record_discount() -> None:
    record = {"completed": 5_000, "audits_passed": 1_000}
    assert rate(free_stake=0, **record) == rate()
    assert rate(free_stake=500, **record) > rate(free_stake=1_000, **record)


def test_ever_slashed_worker_is_audited_on_every_job() -> None:
    assert rate(slashed=1, completed=10**6, audits_passed=10**5) == BPS
    assert rate(slashed=1, collateral=10**9) == BPS


def test_rate_is_floored_and_capped() -> None:
    assert rate(collateral=10**9, min_bps=500) == 500
    assert rate(collateral=0) == BPS  # nothing to slash: audit everything
    assert rate(reward=0, min_bps=123) == 123


@pytest.mark.parametrize(
    "field, value",
    [("reward", -1), ("collateral", 1.5), ("free_stake", True), ("completed", "3"),
     ("audits_passed", None), ("slashed", -2), ("min_bps", 10_001)],
)
def test_rate_refuses_bad_input_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(BadInput, match=field):
        rate(**{field: value})  # type: ignore[arg-type]


@st.composite
def job_and_worker(draw: st.DrawFn) -> dict[str, int]:
    return {
        "reward": draw(positive),
        "collateral": draw(amount),
        "free_stake": draw(amount),
        "completed": draw(count),
        "audits_passed": draw(count),
        "slashed": draw(st.integers(0, 3)),
        "min_bps": draw(bps),
    }


@pytest.mark.property
@settings(max_examples=400)
@given(job_and_worker())
def test_rate_stays_within_bounds(args: dict[str, int]) -> None:
    assert args["min_bps"] <= audit_bps(**args) <= BPS


@pytest.mark.property
@settings(max_examples=300)
@given(job_and_worker(), st.integers(1, 2**64))
def test_rate_rises_with_reward_and_falls_with_collateral(args: dict[str, int], step: int) -> None:
    base = audit_bps(**args)
    assert audit_bps(**{**args, "reward": args["reward"] + step}) >= base
    assert audit_bps(**{**args, "collateral": args["collateral"] + step}) <= base


@pytest.mark.property
@settings(max_examples=300)
@given(job_and_worker(), st.integers(1, 2**32))
def test_rate_falls_with_record_and_stake(args: dict[str, int], step: int) -> None:
    base = audit_bps(**args)
    assert audit_bps(**{**args, "completed": args["completed"] + step}) <= base
    assert audit_bps(**{**args, "audits_passed": args["audits_passed"] + step}) <= base
    assert audit_bps(**{**args, "free_stake": args["free_stake"] + step}) <= base
    assert audit_bps(**{**args, "slashed": args["slashed"] + 1}) == BPS


@pytest.mark.property
@settings(max_examples=300)
@given(job_and_worker())
def test_new_worker_is_audited_at_least_as_much_as_any_record(args: dict[str, int]) -> None:
    assume(args["slashed"] == 0)
    fresh = {**args, "completed": 0, "audits_passed": 0}
    assert audit_bps(**fresh) >= audit_bps(**args)


@pytest.mark.property
@settings(max_examples=500)
@given(job_and_worker(), bps, st.floats(0, 1))
def test_deterrence_holds_for_every_input(args: dict[str, int], fee_bps: int, share: float) -> None:
    """For any worker whose honest work costs c <= its pay, junk pays strictly less than
    honest work (p (C + R') > c) and the expected value of a junk result is negative."""
    assume(args["collateral"] > 0)
    p_bps = audit_bps(**args)
    reward, collateral = args["reward"], args["collateral"]
    pay, _fee = split_reward(reward, fee_bps)
    saving = int(pay * Fraction(share))  # exact: a float product can round above pay
    assert deters_cheating(p_bps, reward=reward, collateral=collateral, fee_bps=fee_bps,
                           saving=saving) or saving == 0 == pay
    p = Fraction(p_bps, BPS)
    junk_ev = (1 - p) * pay - p * collateral
    assert junk_ev < 0 or pay == 0
    # with margin: the expected loss covers the pay at least 1.5 times, unless every job is
    # audited (then the whole collateral and pay are at stake)
    assert p * (collateral + pay) >= TRUSTED_MARGIN * pay or p_bps == BPS


def test_deters_cheating_is_the_documented_inequality() -> None:
    # p (C + R - fee) > c  with R=100, fee 1% -> pay 99, C=1000: 1364 bps -> 0.1364 * 1099
    assert deters_cheating(1_364, reward=100, collateral=1_000, fee_bps=100, saving=99)
    assert not deters_cheating(900, reward=100, collateral=1_000, fee_bps=100, saving=99)
