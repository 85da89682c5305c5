"""Payout math, mirrored from contracts/libraries/Payout.sol (property-tested against it)."""

from __future__ import annotations

from meshcompute.units import BPS


def split_reward(reward: int, fee_bps: int) -> tuple[int, int]:
    """Split ``reward`` into (worker pay, protocol fee); the fee is rounded up."""
    if reward < 0 or not 0 <= fee_bps <= BPS:
        raise ValueError(f"reward must be >= 0 and fee_bps in [0, {BPS}], got {reward}, {fee_bps}")
    fee = -(-reward * fee_bps // BPS)
    return reward - fee, fee


def slash_split(collateral: int, audit_fee: int) -> tuple[int, int]:
    """Split slashed ``collateral`` into (client compensation, remainder to the protocol).

    The client gets its reward back from the escrow; from the collateral only the audit fee it
    spent on the verdict, so a slash leaves it where it started and never enriches it (a client
    that gained from slashes would profit from getting honest workers slashed).
    """
    compensation = min(collateral, audit_fee)
    return compensation, collateral - compensation
