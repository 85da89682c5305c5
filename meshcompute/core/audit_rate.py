"""The audit rate of a job: the probability, in basis points, that the chain draws it for an
independent recomputation. The market signs it into the assignment ticket; the contract takes
the largest of the ticket's rate, the client's and the deployment's floor (``minAuditBps``).

Deterrence condition
--------------------
A worker who returns junk instead of computing saves its compute cost ``c``. The audit draw
happens after the commit, so the worker cannot tell which jobs will be audited; an audit
catches junk (the measured detection rate is 1, see ``mesh bench verify``). Writing ``R`` for
the reward, ``R' = R - fee`` for the worker's pay after the protocol fee, ``C`` for the
collateral and ``p`` for the audit probability, the contract gives:

- honest: ``R' - c``;
- junk: ``(1 - p) * R' - p * C`` (caught: collateral slashed, no pay, client refunded).

Junk pays less than honest work exactly when ``p * (C + R') > c``. A worker takes a job only
if ``c <= R'`` (otherwise honest work loses money), so the worst case is ``c = R'`` and the
condition becomes ``p > R' / (C + R')``; since ``R' <= R`` it suffices that
``p >= m * R / (C + R)`` for a margin ``m > 1``. With that, even a worker whose honest work
would cost its whole pay loses ``(m - 1) * R'`` or more per junk result in expectation, i.e.
the expected value of a junk result, ``(1 - p) * R' - p * C``, is negative.

Formula
-------
::

    if slashed > 0:           bps = 10000               (a worker ever slashed: every job)
    evidence = 10 * audits_passed + completed            (an audit passed counts as 10 jobs)
    trust    = evidence / (evidence + 250)               (0 for a new worker, -> 1)
    cover    = min(1, free_stake / (10 * reward))        (stake left to lose later)
    margin   = 4 - (4 - 1.5) * trust * cover             (4 for new workers, -> 1.5)
    bps      = ceil(10000 * margin * reward / (reward + collateral)),
               clamped to [min_bps, 10000]

So the rate rises with the job's value relative to its collateral (``R / (R + C)``) and to
the worker's free stake (``cover``), falls as a worker builds a record of passed audits and
completed jobs, and never drops below the deterrence bound: the margin stays >= 1.5. A worker
with little free stake relative to the job gets no record discount, because it has little
left to lose from a ruined record and could walk away after one large cheat. ``free_stake`` is
the worker's free stake when the job is assigned, before the job's collateral is locked.

With collateral at 10 times the reward, a new worker is audited at ``4 / 11`` (3637 bps) and a
worker with a long record and ample stake at about ``1.5 / 11`` (1364 bps). Lower rates need
more collateral per unit of reward: the rate is the price of trusting a result.
"""

from __future__ import annotations

from fractions import Fraction

from meshcompute.errors import BadInput
from meshcompute.units import BPS

NEW_WORKER_MARGIN = Fraction(4)
"""Deterrence margin for a worker with no record (or no stake to lose)."""
TRUSTED_MARGIN = Fraction(3, 2)
"""The margin a long, clean record approaches (never below it, and always > 1)."""
AUDIT_WEIGHT = 10
"""A passed audit counts as this many completed jobs of evidence."""
TRUST_HALF_EVIDENCE = 250
"""Evidence (in completed-job units) at which half of the record discount is earned."""
STAKE_COVER = 10
"""Free stake of this many rewards earns the full record discount."""


def audit_bps(
    *,
    reward: int,
    collateral: int,
    free_stake: int,
    completed: int,
    audits_passed: int,
    slashed: int,
    min_bps: int = 0,
) -> int:
    """The audit probability of one job in basis points, in ``[min_bps, 10000]`` (see the
    module docstring for the formula and why it deters cheating). Exact integer arithmetic,
    so every machine computes the same rate."""
    values = {
        "reward": reward, "collateral": collateral, "free_stake": free_stake,
        "completed": completed, "audits_passed": audits_passed, "slashed": slashed,
        "min_bps": min_bps,
    }
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInput(f"audit_bps: {name} must be a non-negative integer, got {value!r}")
    if min_bps > BPS:
        raise BadInput(f"audit_bps: min_bps must be at most {BPS}, got {min_bps}")
    if slashed > 0:
        return BPS
    if reward == 0:
        return min_bps  # nothing to gain by cheating
    evidence = AUDIT_WEIGHT * audits_passed + completed
    full_cover = STAKE_COVER * reward
    # trust * cover = tn / td, exactly
    tn = evidence * min(free_stake, full_cover)
    td = (evidence + TRUST_HALF_EVIDENCE) * full_cover
    # margin = new - (new - trusted) * tn / td, as a fraction with denominator md * td
    new, trusted = NEW_WORKER_MARGIN, TRUSTED_MARGIN
    md = new.denominator * trusted.denominator
    new_n = new.numerator * trusted.denominator
    drop_n = new_n - trusted.numerator * new.denominator
    margin_num = new_n * td - drop_n * tn
    margin_den = md * td
    num = margin_num * reward * BPS
    den = margin_den * (reward + collateral)
    bps = -(-num // den)
    return max(min_bps, min(BPS, bps))


def deters_cheating(bps: int, *, reward: int, collateral: int, fee_bps: int, saving: int) -> bool:
    """Whether a rate of ``bps`` makes junk pay strictly less than honest work for a worker
    whose honest work costs ``saving``: ``p * (collateral + reward - fee) > saving``."""
    fee = -(-reward * fee_bps // BPS)
    return bps * (collateral + reward - fee) > saving * BPS
