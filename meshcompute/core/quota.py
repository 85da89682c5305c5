"""Upload quotas and request rates: how many bytes an address may store in the market's blob
store, and how many signed requests a second it may make, from its on-chain standing (pure;
the market's adapters are ``market/quotas.py`` and ``market/ratelimit.py``).

Disk is the market's scarcest shared resource and a fresh key costs nothing, so what an
address may upload is tied to what it has at stake on chain: its stake in the StakeManager
(workers, verifiers) and the escrow of its open jobs (clients). Bytes are counted over a
sliding window (the blob retention period): what was uploaded longer ago no longer counts.

- An address with standing may hold ``base_bytes + bytes_per_credit * credits`` in the
  window (``credits``: stake plus open escrow, in whole credits).
- An address with less than one credit of them (a stranger, or a client before its first
  job is posted) may hold
  ``base_bytes``, and all strangers together at most ``strangers_bytes``: a thousand fresh
  keys fill the strangers' pool, not the disk, and never what staked workers and paying
  clients need.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcompute.units import TOKEN


@dataclass(frozen=True)
class QuotaPolicy:
    base_bytes: int
    """What any address may upload in the window, standing or not."""
    bytes_per_credit: int
    """What each whole credit of stake or open escrow adds."""
    strangers_bytes: int
    """What all addresses without standing may upload together in the window."""


@dataclass(frozen=True)
class Usage:
    own: int
    """Bytes the address uploaded in the window (new blobs only)."""
    strangers: int
    """Bytes all addresses without standing uploaded in the window."""


def allowance(policy: QuotaPolicy, *, stake: int, escrow: int) -> int:
    """Bytes an address with ``stake`` and ``escrow`` (wei) may upload in the window."""
    return policy.base_bytes + policy.bytes_per_credit * credits_of(stake=stake, escrow=escrow)


def credits_of(*, stake: int, escrow: int) -> int:
    """Whole credits of stake and of open escrow (each rounded down)."""
    return max(0, stake) // TOKEN + max(0, escrow) // TOKEN


def is_stranger(*, stake: int, escrow: int) -> bool:
    """Less than one whole credit of stake and open escrow: a wei of stake, or a tiny job
    (refundable at once), buys no way out of the strangers' pool and rate."""
    return credits_of(stake=stake, escrow=escrow) == 0


def refusal(policy: QuotaPolicy, usage: Usage, incoming: int, *, stake: int,
            escrow: int) -> str | None:
    """Why ``incoming`` more bytes are refused, or None when they fit."""
    limit = allowance(policy, stake=stake, escrow=escrow)
    if usage.own + incoming > limit:
        how = ("stake credits or post a job's escrow to raise it"
               if is_stranger(stake=stake, escrow=escrow)
               else "more stake or open escrow raises it")
        return (f"upload quota exceeded: {usage.own} bytes uploaded in the window plus "
                f"{incoming} exceeds the allowance of {limit} bytes ({how})")
    if is_stranger(stake=stake, escrow=escrow) and (
            usage.strangers + incoming > policy.strangers_bytes):
        return (f"the market's pool for addresses without stake or escrow is full "
                f"({usage.strangers} of {policy.strangers_bytes} bytes in the window); "
                "stake credits or post a job's escrow to upload from your own allowance")
    return None


@dataclass(frozen=True)
class RatePolicy:
    base_per_s: int
    """Signed requests a second any address may make."""
    per_credit_per_s: float
    """What each whole credit of stake or open escrow adds."""
    max_per_s: int
    """The most any address may make, whatever its standing."""
    strangers_per_s: int
    """Signed requests a second all addresses without standing may make together."""


def request_rate(policy: RatePolicy, *, credits: int) -> int:
    """Signed requests a second an address with ``credits`` of stake and open escrow may
    make."""
    rate = policy.base_per_s + int(policy.per_credit_per_s * max(0, credits))
    return max(1, min(policy.max_per_s, rate))
