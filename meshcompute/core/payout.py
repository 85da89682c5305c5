"""Payout math, mirrored from contracts/libraries/Payout.sol (property-tested against it)."""

from __future__ import annotations

from meshcompute.units import BPS


def split_reward(reward: int, fee_bps: int) -> tuple[int, int]:
    """Split ``reward`` into (worker pay, protocol fee); the fee is rounded up."""
    if reward < 0 or not 0 <= fee_bps <= BPS:
        raise ValueError(f"reward must be >= 0 and fee_bps in [0, {BPS}], got {reward}, {fee_bps}")
    fee = -(-reward * fee_bps // BPS)
    return reward - fee, fee


def slash_split(collateral: int, reward: int, audit_fee: int) -> tuple[int, int]:
    """Split slashed ``collateral`` into (client compensation, remainder to the protocol).

    The client is compensated first, up to what it paid (reward + audit fee).
    """
    compensation = min(collateral, reward + audit_fee)
    return compensation, collateral - compensation
