"""meshcompute.core.quota: upload allowances from on-chain standing (pure)."""

from __future__ import annotations

from meshcompute.core.quota import QuotaPolicy, Usage, allowance, refusal
from meshcompute.units import TOKEN

POLICY = QuotaPolicy(base_bytes=100, bytes_per_credit=10, strangers_bytes=250)


def test_allowance_grows_with_stake_and_escrow_in_whole_credits():
    assert allowance(POLICY, stake=0, escrow=0) == 100
    assert allowance(POLICY, stake=3 * TOKEN, escrow=2 * TOKEN) == 150
    assert allowance(POLICY, stake=TOKEN - 1, escrow=0) == 100
    assert allowance(POLICY, stake=-5, escrow=-5) == 100


def test_a_stranger_gets_the_base_and_a_share_of_the_strangers_pool():
    assert refusal(POLICY, Usage(own=0, strangers=0), 100, stake=0, escrow=0) is None
    over_own = refusal(POLICY, Usage(own=50, strangers=50), 51, stake=0, escrow=0)
    assert over_own is not None and "allowance of 100 bytes" in over_own
    assert "stake credits or post a job's escrow" in over_own
    pool = refusal(POLICY, Usage(own=0, strangers=200), 51, stake=0, escrow=0)
    assert pool is not None and "pool for addresses without stake or escrow is full" in pool


def test_standing_is_not_bound_by_the_strangers_pool():
    full_pool = Usage(own=0, strangers=10**9)
    assert refusal(POLICY, full_pool, 140, stake=4 * TOKEN, escrow=0) is None
    over = refusal(POLICY, full_pool, 141, stake=4 * TOKEN, escrow=0)
    assert over is not None and "more stake or open escrow raises it" in over


def test_a_wei_of_stake_or_a_tiny_job_is_still_a_stranger():
    from meshcompute.core.quota import is_stranger

    assert is_stranger(stake=1, escrow=TOKEN - 1)
    assert not is_stranger(stake=TOKEN, escrow=0)
    pool_full = Usage(own=0, strangers=POLICY.strangers_bytes)
    assert refusal(POLICY, pool_full, 1, stake=1, escrow=10**15) is not None
