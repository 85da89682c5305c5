"""The economics of cheating: a simulated market of honest and cheating providers.

Every job follows the contract's money flows (``contracts/JobMarket.sol``):

- the client escrows ``reward + audit_fee``; the job's audit rate is decided on chain at the
  assignment (:func:`job_audit_bps`): the largest of the client's ``auditBps``, the
  deployment's floor ``min_audit_bps``, the market's signed ticket and
  :func:`meshcompute.core.audit_rate.audit_bps` of the worker's on-chain record and free stake,
  so a ticket can only raise the rate (an honest market signs the formula's rate);
- the draw after the commit audits the job with that probability;
- not audited, or audited and passed: the worker is paid ``reward - fee`` (fee rounded up,
  :func:`meshcompute.core.payout.split_reward`); the verifier earns the audit fee when the job
  was audited, otherwise it goes back to the client;
- audited and caught: the worker's collateral is slashed and it is paid nothing; the client
  gets its reward back and, from the collateral, the audit fee it spent (never more than it
  paid: :func:`meshcompute.core.payout.slash_split`), the rest goes to the protocol; the
  verifier still earns the audit fee;
- audited and void (``voidAudit``: the program is numerically unstable, so the verifier's
  recomputations under two numeric setups disagree or a 1-ulp perturbation of the inputs moves
  the output beyond the job's tolerance): the verifier earns the audit fee, the client gets its
  reward back, the worker is paid nothing and its collateral is unlocked (no slash, and its
  record is unchanged). Undrawn jobs of the same program are paid normally.

A provider pays ``compute_cost`` for an honest result and ``junk_cost`` for junk. Junk is
caught at an audit with probability ``detection_bps`` (1 at the defaults: ``mesh bench
verify`` measured every cheat type caught at every audit). Providers do not compete on
price, so the market decomposes into independent providers; each strategy's providers get
the same job stream and the same audit draws (common random numbers), which makes the
comparison between strategies sharp.

A caught provider walks away from its ruined record and comes back under a fresh address with
a fresh stake (``new_identity_after_slash``): the strongest thing a cheater can do, since a
slashed address is audited on every job.

Other roles (:func:`simulate_roles`), each against the honest play of the same role on the same
job stream and draws:

- ``griefing_client``: posts unstable (chaotic) programs to get honest workers slashed; it
  values the outputs at 0, while an honest client values a delivered honest result at exactly
  the reward it paid (a break-even marginal client), so the honest client's profit per job is
  minus the audit fees it pays. Drawn jobs are void, undrawn ones paid: no honest worker is
  slashed, but the worker loses its compute cost on the void jobs.
- ``colluding_operator``: the market operator runs its own workers, which return junk on every
  job, and signs their tickets at 0 bps; its profit is theirs. With the rate decided on chain
  (``onchain_audit_rate``) the ticket cannot lower the rate; without it (the old contract) the
  rate falls to ``max(client, floor)``.
- ``lazy_verifier``: posts "pass" without recomputing, saving ``verify_cost_bps`` of the reward
  per audit. A pass locks ``pass_bond_rewards`` rewards of its stake until the client's dispute
  window closes; ``canary_bps`` of the audits are canaries (known junk, disputed once passed),
  on which the lazy verifier loses that bond and earns no fee while an honest one fails the
  junk and earns its fee. Lazy passes lose money when ``canary share > verify cost / (audit
  fee + bond)``; the result reports that break-even share.
- ``silent_verifier``: never posts the verdicts the draw assigns it, saving ``verify_cost_bps``
  of the reward per audit. Halfway through the verdict's window it escalates to a second seat
  of the VerifierRegistry; when that seat posts (honest, the default), the job is judged as
  usual and the fee is the poster's: the silent seat earns nothing and loses nothing, so it
  forfeits the honest profit ``audit fee - verify cost``. When the escalated seat is silent
  too, the job is void (the worker gets its collateral back and is not paid, the client its
  escrow) and each of the two seats has ``reward + collateral`` of its registry deposit burned
  (a seat is only ever assigned jobs its deposit covers; ``if_escalation_also_silent``).

Training jobs (:data:`TRAINING_STRATEGIES`): a training job of ``n`` checkpoint segments is
audited by recomputing the last segment and ``DEFAULT_AUDITED_SEGMENTS - 1`` others drawn after
the commit (:func:`meshcompute.core.training.audit_segments`), each from the worker's own
checkpoint before it. A worker that skips ``m`` segments and computes the rest honestly from its
wrong checkpoints saves ``m / n`` of the compute and is caught at an audit only when the draw
picks a skipped segment: :func:`segment_detection`, exactly, for the cheater's best choice of
segments (never the last, which every audit recomputes, unless it skips them all). In the
simulation each audit of its result runs the real ``audit_segments`` on a seed drawn for the
job; the money flows are those above. With ``A = min(audited, n) - 1 >= 1`` others drawn,
the detection ``1 - C(n-1-m, A) / C(n-1, A)`` is at least ``m / (n - 1)``, more than the
``m / n`` saved, so the gain over honest play, ``(m/n) c - p q (R' + C)``, is below ``m / n`` times that
of full junk: partial cheating is deterred wherever full junk is.

Pure: the standard library and the core only.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Literal, NamedTuple

from meshcompute.core.audit_rate import BPS, audit_bps
from meshcompute.core.job import PASS_BOND_REWARDS
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.core.training import (
    DEFAULT_AUDITED_SEGMENTS,
    MAX_SEGMENTS,
    TrainingPlan,
    audit_segments,
    validate_plan,
)
from meshcompute.errors import BadInput


@dataclass(frozen=True)
class MarketParams:
    """The default market. Amounts are in whole credits; bps are basis points of the reward."""

    reward_min: int = 10
    """Smallest job reward; rewards are drawn log-uniformly in [reward_min, reward_max]."""
    reward_max: int = 1_000
    audit_fee_bps: int = 10_000
    """Audit fee the client escrows, as a share of the reward (paid to the verifier if drawn;
    the SDK's default: the reward, since a verifier recomputes what the worker computed)."""
    collateral_ratio: int = 10
    """Collateral the worker locks per job, as a multiple of the reward."""
    compute_cost_bps: int = 6_000
    """A provider's cost of computing a job honestly, as a share of the reward."""
    junk_cost_bps: int = 0
    """A provider's cost of producing junk instead."""
    fee_bps: int = 100
    """Protocol fee on each paid reward (DeployParams default)."""
    min_audit_bps: int = 500
    """Floor of every job's audit probability (DeployParams default)."""
    initial_stake: int = 100_000
    """Each provider's stake; topped back up when it falls below a job's collateral."""
    detection_bps: int = BPS
    """Probability that an audit catches junk (measured: every cheat, every audit)."""
    new_identity_after_slash: bool = True
    """A caught provider restarts under a fresh address (no record, fresh stake)."""
    client_audit_bps: int = 0
    """The audit rate an (honest) client asks for when it posts (``auditBps``)."""
    onchain_audit_rate: bool = True
    """The contract takes the rate of :func:`meshcompute.core.audit_rate.audit_bps` itself, so
    the market's ticket can only raise it. False: the contract of before, where the rate is
    ``max(client, floor, ticket)`` and a ticket signed at 0 leaves ``max(client, floor)``."""
    verify_cost_bps: int | None = None
    """A verifier's cost of one recomputation, as a share of the reward (None: the same as
    ``compute_cost_bps``)."""
    canary_bps: int = 800
    """Share of audits that are canaries: jobs whose result is known junk (posted by the
    protocol's canary client to its own worker, which commits a wrong output), disputed by
    that client once passed. A verifier cannot tell them from other audits."""
    pass_bond_rewards: int = PASS_BOND_REWARDS
    """Rewards of the verifier's stake behind a pass (JobMarket), lost on an overturned one."""
    coalition_bps: int = 3_333
    """Share of the verifier seats' weight a colluding coalition holds (open admission: anyone
    may take seats), so the chance the draw gives it the contest of its own appeal verdict."""

    def __post_init__(self) -> None:
        if not 0 < self.reward_min <= self.reward_max:
            raise BadInput("market needs 0 < reward_min <= reward_max")
        for name in ("audit_fee_bps", "compute_cost_bps", "junk_cost_bps", "fee_bps",
                     "min_audit_bps", "detection_bps", "client_audit_bps", "verify_cost_bps",
                     "canary_bps", "coalition_bps"):
            if name == "verify_cost_bps" and self.verify_cost_bps is None:
                continue
            if not 0 <= getattr(self, name) <= BPS:
                raise BadInput(f"market {name} must be within 0..{BPS}, got {getattr(self, name)}")
        if self.collateral_ratio < 0 or self.initial_stake < 0 or self.pass_bond_rewards < 0:
            raise BadInput("market collateral_ratio, initial_stake and pass_bond_rewards must "
                           "be >= 0")

    def collateral(self, reward: int) -> int:
        return self.collateral_ratio * reward

    def audit_fee(self, reward: int) -> int:
        return reward * self.audit_fee_bps // BPS

    def compute_cost(self, reward: int) -> int:
        return reward * self.compute_cost_bps // BPS

    def junk_cost(self, reward: int) -> int:
        return reward * self.junk_cost_bps // BPS

    @property
    def verify_bps(self) -> int:
        """``verify_cost_bps``, resolved (the compute cost when unset)."""
        return self.compute_cost_bps if self.verify_cost_bps is None else self.verify_cost_bps

    def verify_cost(self, reward: int) -> int:
        return reward * self.verify_bps // BPS

    def silence_penalty(self, reward: int) -> int:
        """What the registry burns from each assigned seat's deposit when a verdict never comes
        (JobMarket._punishSilence): the job's reward and collateral. The registry assigns a
        job only to seats whose weight covers that much, so the deposit holds it."""
        return reward + self.collateral(reward)


def job_audit_bps(params: MarketParams, *, formula_bps: int, ticket_bps: int,
                  client_bps: int | None = None) -> int:
    """The audit rate the contract sets at assignment: the largest of the client's rate
    (``params.client_audit_bps`` unless ``client_bps`` is given), the deployment's floor, the
    market's ticket and, when ``params.onchain_audit_rate``, ``formula_bps`` (the rate
    :func:`meshcompute.core.audit_rate.audit_bps` gives for the worker's on-chain record)."""
    client = params.client_audit_bps if client_bps is None else client_bps
    rate = max(client, params.min_audit_bps, ticket_bps)
    if params.onchain_audit_rate:
        rate = max(rate, formula_bps)
    return min(BPS, rate)


@dataclass(frozen=True)
class WorkerView:
    """What a strategy knows when it decides: its current address's record and the job."""

    jobs_taken: int
    completed: int
    audits_passed: int
    reward: int


TRAINING_SEGMENTS = 16
"""Checkpoint segments of a simulated training job (e.g. 1,600 steps, a checkpoint every 100)."""


def segment_detection(segments: int, cheated: Iterable[int],
                      audited: int = DEFAULT_AUDITED_SEGMENTS) -> Fraction:
    """The exact probability that a drawn audit of a training job of ``segments`` segments
    recomputes at least one segment of ``cheated``.

    :func:`meshcompute.core.training.audit_segments` always takes the last segment and adds
    draws uniform over all segments until it holds ``min(audited, segments)``; a draw of the
    last or of one already taken adds nothing, so the others are a uniformly random set of
    ``A = min(audited, segments) - 1`` of the ``segments - 1`` non-last ones. So: 1 when the
    last is cheated, else ``1 - C(segments-1-m, A) / C(segments-1, A)`` for ``m`` cheated.
    (Each draw is SHA-256 modulo ``segments``: a bias under ``segments / 2**64``, none when
    ``segments`` is a power of two.)"""
    if not 1 <= segments <= MAX_SEGMENTS or audited < 1:
        raise BadInput(f"segment_detection needs 1 <= segments <= {MAX_SEGMENTS} and "
                       f"audited >= 1, got {segments} and {audited}")
    chosen = set(cheated)
    if not chosen <= set(range(segments)):
        raise BadInput(f"cheated segments must be in 0..{segments - 1}, got {sorted(chosen)}")
    if not chosen:
        return Fraction(0)
    if segments - 1 in chosen:
        return Fraction(1)
    others = min(audited, segments) - 1
    return 1 - Fraction(math.comb(segments - 1 - len(chosen), others),
                        math.comb(segments - 1, others))


@functools.lru_cache(maxsize=64)
def _segment_plan(segments: int) -> TrainingPlan:
    """A plan of ``segments`` one-step segments: all :func:`audit_segments` looks at."""
    return validate_plan({"optimizer": {"name": "sgd", "lr": 0.1}, "steps": segments,
                          "batch_size": 1, "seed": 0, "checkpoint_every": 1})


@dataclass(frozen=True)
class SegmentCheat:
    """A training result with ``cheated`` of its ``segments`` segments done wrong (their steps
    skipped) and the others computed honestly from the worker's own checkpoints; a drawn audit
    recomputes ``audited`` segments (:func:`meshcompute.core.training.audit_segments`)."""

    segments: int
    cheated: frozenset[int]
    audited: int = DEFAULT_AUDITED_SEGMENTS

    def __post_init__(self) -> None:
        if not self.cheated:
            raise BadInput("a segment cheat cheats on at least one segment")
        segment_detection(self.segments, self.cheated, self.audited)  # validates

    @functools.cached_property
    def detection(self) -> Fraction:
        """Probability that a drawn audit recomputes a cheated segment (exact)."""
        return segment_detection(self.segments, self.cheated, self.audited)

    @property
    def saved_share(self) -> Fraction:
        """Share of the honest compute the cheat saves."""
        return Fraction(len(self.cheated), self.segments)

    def cost(self, compute_cost: int, junk_cost: int) -> float:
        """The worker's cost: the honest cost less the share saved, exactly (a cost is not an
        amount on chain, and whole credits would round a small job's saving far off)."""
        return compute_cost - (compute_cost - junk_cost) * len(self.cheated) / self.segments

    def drawn(self, seed: bytes) -> bool:
        """Whether the audit drawn with ``seed`` recomputes a cheated segment: the real
        :func:`meshcompute.core.training.audit_segments`."""
        audit = audit_segments(_segment_plan(self.segments), seed, self.audited)
        return not self.cheated.isdisjoint(audit)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    cheats: Callable[[WorkerView, float], bool]
    """Decides whether to return junk for this job; the float is a uniform draw in [0, 1)."""
    segment_cheat: SegmentCheat | None = None
    """Training jobs: the junk is these segments done wrong, the rest computed (None: the whole
    result is junk, caught at every audit that detects)."""


def _fraction(f: float) -> Strategy:
    return Strategy(f"cheat_{round(f * 100)}pct", f"junk on a random {f:.0%} of jobs",
                    lambda view, u: u < f)


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("honest", "always computes", lambda view, u: False),
    Strategy("always_cheat", "junk on every job", lambda view, u: True),
    _fraction(0.01),
    _fraction(0.10),
    _fraction(0.50),
    Strategy("cheat_when_new", "junk on an address's first 20 jobs, honest after",
             lambda view, u: view.jobs_taken < 20),
    Strategy("cheat_small_jobs", "junk on jobs with reward < 100, honest on larger",
             lambda view, u: view.reward < 100),
    Strategy("cheat_large_jobs", "junk on jobs with reward >= 500, honest on smaller",
             lambda view, u: view.reward >= 500),
    Strategy("cheat_when_trusted", "honest for 300 jobs to build a record, then junk always",
             lambda view, u: view.jobs_taken >= 300),
)


def segment_cheater(cheat: int, segments: int = TRAINING_SEGMENTS,
                    audited: int = DEFAULT_AUDITED_SEGMENTS) -> Strategy:
    """A worker that skips ``cheat`` of the ``segments`` segments of every training job,
    choosing the set an audit catches least often: segments other than the last (which every
    audit recomputes) while it can, since the draw treats all the others alike."""
    if not 1 <= cheat <= segments:
        raise BadInput(f"segment_cheater needs 1 <= cheat <= segments, got {cheat} of {segments}")
    choices = (frozenset(range(cheat)), frozenset(range(segments - cheat, segments)))
    best = min(choices, key=lambda chosen: segment_detection(segments, chosen, audited))
    where = "all" if cheat == segments else (
        "not the last" if segments - 1 not in best else "with the last")
    return Strategy(
        f"segment_cheat_{cheat}_of_{segments}",
        f"training: skips {cheat} of {segments} segments ({where}) on every job",
        lambda view, u: True, SegmentCheat(segments, best, audited),
    )


def training_strategies(segments: int = TRAINING_SEGMENTS,
                        audited: int = DEFAULT_AUDITED_SEGMENTS) -> tuple[Strategy, ...]:
    """Segment cheaters on training jobs of ``segments`` segments: one segment, a quarter, half,
    all but the last, and all of them."""
    counts = sorted({1, segments // 4, segments // 2, segments - 1, segments} - {0})
    return tuple(segment_cheater(m, segments, audited) for m in counts)


TRAINING_STRATEGIES: tuple[Strategy, ...] = training_strategies()


def strategy_named(name: str) -> Strategy:
    for strategy in STRATEGIES + TRAINING_STRATEGIES:
        if strategy.name == name:
            return strategy
    raise BadInput(f"unknown strategy {name!r}; choose one of "
                   f"{[s.name for s in STRATEGIES + TRAINING_STRATEGIES]}")


@dataclass
class _Identity:
    stake: int
    jobs_taken: int = 0
    completed: int = 0
    audits_passed: int = 0
    slashed: int = 0


@dataclass
class StrategyResult:
    """Totals for one strategy's providers over the simulated jobs."""

    strategy: str
    jobs: int = 0
    junk: int = 0
    audited: int = 0
    caught: int = 0
    junk_accepted: int = 0
    """Junk results that were paid (not audited, or audited and missed)."""
    identities: int = 0
    profit: float = 0
    """In credits; a whole number except for segment cheaters, whose cost is a share."""
    profit_sq: float = 0
    junk_profit: float = 0
    """Profit on the junk jobs alone."""
    gain_vs_honest: float = 0
    """Profit on the junk jobs minus what honest work on those same jobs would have earned."""
    slashed: int = 0
    client_compensation: int = 0
    verifier_fees: int = 0
    protocol_income: int = 0
    voided: int = 0
    """Drawn jobs that the verifier could not judge (unstable program): void."""
    rate_bps_sum: int = 0
    """Sum of the jobs' audit rates (for the mean rate)."""
    segment_audits: int = 0
    """Training: audits of a segment cheater's results (not void)."""
    segment_audits_drawn: int = 0
    """Of those, the audits whose drawn segments include a cheated one."""

    @property
    def profit_per_job(self) -> float:
        return self.profit / self.jobs if self.jobs else 0.0

    @property
    def profit_per_job_stderr(self) -> float:
        if self.jobs < 2:
            return 0.0
        mean = self.profit / self.jobs
        var = max(0.0, (self.profit_sq - self.jobs * mean * mean) / (self.jobs - 1))
        return math.sqrt(var / self.jobs)

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "junk_results": self.junk,
            "audited": self.audited,
            "caught": self.caught,
            "junk_accepted": self.junk_accepted,
            "addresses_used": self.identities,
            "profit_per_job": round(self.profit_per_job, 4),
            "profit_per_job_stderr": round(self.profit_per_job_stderr, 4),
            "profit_per_junk_result": round(self.junk_profit / self.junk, 4) if self.junk else None,
            "gain_per_junk_result_vs_honest": (
                round(self.gain_vs_honest / self.junk, 4) if self.junk else None
            ),
            "slashed_collateral": self.slashed,
            "client_compensation": self.client_compensation,
            "verifier_fees": self.verifier_fees,
            "protocol_income": self.protocol_income,
        }


Verdict = Literal["paid", "void", "slashed"]


class JobOutcome(NamedTuple):
    """How one job settled, with the money each side saw (a tuple: built once per job)."""

    reward: int
    audit_fee: int
    rate_bps: int
    audited: bool
    junk: bool
    verdict: Verdict
    worker_profit: float
    worker_expected_profit: float
    """The worker's expected profit on this job given its audit rate (before the draw)."""
    compensation: int
    """What the client got from the slashed collateral (0 unless slashed)."""

    def client_paid(self) -> int:
        """What the client spent, net of refunds: the reward when paid, the audit fee when
        audited (paid or void), less the compensation when slashed."""
        if self.verdict == "paid":
            return self.reward + (self.audit_fee if self.audited else 0)
        return self.audit_fee - self.compensation

    def client_profit(self, *, values_outputs: bool) -> int:
        """The client's profit: a client that values outputs gets, from a paid honest result,
        exactly the reward it paid for it (junk is worth nothing)."""
        value = self.reward if values_outputs and self.verdict == "paid" and not self.junk else 0
        return value - self.client_paid()


@dataclass(frozen=True)
class _Job:
    reward: int
    audit_draw: int
    detect_draw: int
    choice: float

    @property
    def audit_seed(self) -> bytes:
        """The seed of the job's audit (a training audit draws its segments from it): a hash of
        the job's draws, so the stream needs no extra random number."""
        return f"audit:{self.audit_draw}:{self.detect_draw}:{self.choice!r}".encode()


@dataclass
class _Provider:
    params: MarketParams
    strategy: Strategy
    result: StrategyResult
    identity: _Identity = field(init=False)

    def __post_init__(self) -> None:
        self._fresh_identity()

    def _fresh_identity(self) -> None:
        self.identity = _Identity(stake=self.params.initial_stake)
        self.result.identities += 1

    def take(self, job: _Job) -> bool:
        """Run one job; True when the provider was caught returning junk."""
        return self._settle(job, None, None, False, None) == "slashed"

    def serve(self, job: _Job, *, ticket_bps: int | None = None, client_bps: int | None = None,
              unstable: bool = False) -> JobOutcome:
        """Run one job and return how it settled. ``ticket_bps``: the rate the market signs
        (None: an honest market signs the formula's rate); ``client_bps``: the client's rate
        (None: ``params.client_audit_bps``); ``unstable``: the program cannot be judged, so a
        drawn job is void."""
        sink: list[JobOutcome] = []
        self._settle(job, ticket_bps, client_bps, unstable, sink)
        return sink[0]

    def _settle(self, job: _Job, ticket_bps: int | None, client_bps: int | None,
                unstable: bool, sink: list[JobOutcome] | None) -> Verdict:
        """Run one job (see :meth:`serve`); its outcome is appended to ``sink`` when given
        (:meth:`take`, run millions of times by :func:`catch_probabilities`, skips it)."""
        p, ident, res = self.params, self.identity, self.result
        reward = job.reward
        collateral = p.collateral(reward)
        if ident.stake < collateral:
            ident.stake = max(p.initial_stake, collateral)  # the owner tops the stake up
        view = WorkerView(ident.jobs_taken, ident.completed, ident.audits_passed, reward)
        junk = self.strategy.cheats(view, job.choice)
        partial = self.strategy.segment_cheat
        formula = audit_bps(
            reward=reward, collateral=collateral, free_stake=ident.stake,
            completed=ident.completed, audits_passed=ident.audits_passed,
            slashed=ident.slashed, min_bps=p.min_audit_bps,
        )
        client = p.client_audit_bps if client_bps is None else client_bps
        if ticket_bps is None:  # an honest market signs the formula's rate (>= the floor)
            rate = max(client, formula)
        else:
            rate = job_audit_bps(p, formula_bps=formula, ticket_bps=ticket_bps, client_bps=client)
        audited = job.audit_draw < rate
        void = audited and unstable
        caught = junk and audited and not void and job.detect_draw < p.detection_bps
        if partial is not None and junk and audited and not void:
            drawn = partial.drawn(job.audit_seed)  # the audit recomputes a skipped segment
            res.segment_audits += 1
            res.segment_audits_drawn += drawn
            caught = caught and drawn
        audit_fee = p.audit_fee(reward)
        pay, fee = split_reward(reward, p.fee_bps)
        cost: float
        if not junk:
            cost = p.compute_cost(reward)
        elif partial is None:
            cost = p.junk_cost(reward)
        else:
            cost = partial.cost(p.compute_cost(reward), p.junk_cost(reward))
        honest_profit = pay - p.compute_cost(reward)
        ident.jobs_taken += 1
        res.jobs += 1
        res.audited += audited
        res.rate_bps_sum += rate
        if audited:
            res.verifier_fees += audit_fee
        compensation = 0
        verdict: Verdict
        if caught:
            verdict = "slashed"
            profit = -collateral - cost
            compensation, remainder = slash_split(collateral, audit_fee)
            res.caught += 1
            res.slashed += collateral
            res.client_compensation += compensation
            res.protocol_income += remainder
            ident.stake -= collateral
            ident.slashed += 1
        elif void:
            verdict = "void"  # collateral unlocked, nothing paid, record unchanged
            profit = -cost
            res.voided += 1
        else:
            verdict = "paid"
            profit = pay - cost
            res.protocol_income += fee
            ident.completed += 1
            ident.audits_passed += audited
            res.junk_accepted += junk
        if junk:
            res.junk += 1
            res.junk_profit += profit
            res.gain_vs_honest += profit - honest_profit
        res.profit += profit
        res.profit_sq += profit * profit
        if caught and p.new_identity_after_slash:
            self._fresh_identity()
        if sink is not None:
            # The expected profit given the rate (the audit draw not yet made): an estimate of
            # the strategy's expected profit with less variance than the realized one.
            pr = rate / BPS
            if unstable:
                expected = (1 - pr) * pay - cost
            elif junk:
                pq = pr * p.detection_bps / BPS
                if partial is not None:
                    pq *= float(partial.detection)
                expected = (1 - pq) * (pay - cost) - pq * (collateral + cost)
            else:
                expected = float(pay - cost)
            sink.append(JobOutcome(reward, audit_fee, rate, audited, junk, verdict, profit,
                                   expected, compensation))
        return verdict


def _job_stream(params: MarketParams, jobs: int, seed: int) -> list[_Job]:
    rng = random.Random(seed)
    lo, hi = math.log(params.reward_min), math.log(params.reward_max)
    stream = []
    for _ in range(jobs):
        reward = min(params.reward_max, max(params.reward_min, round(math.exp(rng.uniform(lo, hi)))))
        stream.append(_Job(reward, rng.randrange(BPS), rng.randrange(BPS), rng.random()))
    return stream


def simulate_market(
    params: MarketParams = MarketParams(),
    strategies: tuple[Strategy, ...] = STRATEGIES,
    *,
    jobs: int = 10_000,
    providers: int = 10,
    seed: int = 0,
) -> dict[str, StrategyResult]:
    """Each strategy's ``providers`` share ``jobs`` jobs round robin (the same job stream and
    audit draws for every strategy); returns the totals per strategy."""
    if jobs < 1 or providers < 1:
        raise BadInput("simulate_market needs jobs >= 1 and providers >= 1")
    stream = _job_stream(params, jobs, seed)
    return {
        strategy.name: _run(params, strategy, stream, providers, outcomes=False)[0]
        for strategy in strategies
    }


def _run(
    params: MarketParams,
    strategy: Strategy,
    stream: list[_Job],
    providers: int,
    *,
    ticket_bps: int | None = None,
    client_bps: int | None = None,
    unstable: bool = False,
    outcomes: bool = True,
) -> tuple[StrategyResult, list[JobOutcome]]:
    """``providers`` providers following ``strategy`` share ``stream`` round robin; the totals
    and (when ``outcomes``) each job's outcome, in stream order."""
    result = StrategyResult(strategy.name)
    workers = [_Provider(params, strategy, result) for _ in range(providers)]
    sink: list[JobOutcome] = []
    for i, job in enumerate(stream):
        workers[i % providers]._settle(job, ticket_bps, client_bps, unstable,
                                       sink if outcomes else None)
    return result, sink


ROLE_STRATEGIES: tuple[tuple[str, str, str], ...] = (
    ("griefing_client", "client",
     ("posts numerically unstable (chaotic) programs to get honest workers slashed; values "
      "the outputs at 0")),
    ("colluding_operator", "market operator",
     "runs its own workers that return junk on every job and signs their tickets at 0 bps"),
    ("lazy_verifier", "verifier",
     ("posts pass on every audit without recomputing, saving its verification cost; canary "
      "jobs (known junk, disputed once passed) cost it its pass bond")),
    ("silent_verifier", "verifier",
     ("never posts the verdicts the draw assigns it, saving its verification cost; the verdict "
      "escalates to a second seat, which posts it and takes the fee")),
    ("appeal_seat_spares_cheater", "verifier coalition",
     ("holds coalition_bps of the seats' weight and a cheating worker: drawn as the appeal seat "
      "of the cheater's rightly failed job, it overturns the failure, and wins only if the draw "
      "also gives it the contest")),
    ("appeal_seat_robs_pass", "verifier coalition",
     ("holds coalition_bps of the seats' weight and a client: the client disputes an honest "
      "pass and the coalition, drawn as the appeal seat, overturns it to get the worker slashed "
      "and the passing verifier's bond, winning only if it also holds the contest")),
    ("escalating_cheater", "worker and verifier coalition",
     ("a cheating worker whose failure two honest seats upheld escalates it, hoping the draw "
      "gives its coalition (coalition_bps of the seats' weight) the third seat, whose "
      "disagreement voids the job and saves its collateral")),
    ("escalating_client", "client and verifier coalition",
     ("a client whose dispute of an honest pass was upheld escalates it, hoping the draw gives "
      "its coalition the third seat, whose disagreement voids the job: the reward and the "
      "bonds come back and the result is kept")),
)
"""The strategies of roles other than the worker: (name, role, description)."""

LAZY_VERIFIER_NOTE = (
    "Deterred by canaries: a pass locks ten rewards of the verifier's stake while the client "
    "may dispute it; a canary client disputes every pass of its known-junk jobs, and the "
    "overturned pass costs the verifier that bond and its fee. Lazy passing loses money once "
    "canaries are more than verify_cost / (audit_fee + bond) of the audits, and only as long "
    "as a verifier cannot tell canaries from other jobs. Among lazy seats: a canary's dispute "
    "may go to an appeal seat that upholds the pass unread; the canary then escalates, and an "
    "honest third seat voids the job (the passer loses its fee, the upholder its cover: "
    "reward + collateral + the pass bond). Laziness pays only above breakeven_lazy_share of "
    "the weight (if_half_the_weight_lazy: a lazy share of one half)."
)

SILENT_VERIFIER_NOTE = (
    "Silence forfeits the fee: halfway through the window the verdict escalates to a second "
    "seat, which posts it and earns the audit fee, so the silent seat gives up audit_fee - "
    "verify_cost per audit. If both assigned seats stay silent the job is void (the junk of a "
    "cheater is not paid, nor its collateral slashed) and each seat has reward + collateral of "
    "its registry deposit burned (the registry assigns a job only to seats whose weight covers "
    "that). Colluding silence to void a cheater's job thus burns 2 x (reward + collateral), "
    "more than the collateral it saves the cheater. Not modelled: a seat silent on many jobs "
    "at once risks each job's cover, but its deposit bounds what all of them burn."
)


@dataclass
class RoleResult:
    """One strategy of a role other than the worker, against honest play of the same role on
    the same jobs and draws. ``unit`` is what the profits are counted per ("job", or "audit"
    for a verifier); ``gain_vs_honest`` is the strategy's profit per unit minus the honest
    profit per unit."""

    strategy: str
    role: str
    description: str
    unit: str
    units: int
    profit_per_job: float
    honest_profit_per_job: float
    gain_vs_honest: float
    gain_vs_honest_stderr: float
    expected_gain_vs_honest: float
    """The same gain from the expected profit of each job given its audit rate (before the
    draw): an estimate with less variance than the realized one."""
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def deterred(self) -> bool:
        """The strategy earns strictly less than honest play of its role, in expectation (a
        short run's realized gain is noise around it: a few canaries more or less)."""
        return self.expected_gain_vs_honest < 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "description": self.description,
            "per": self.unit,
            "jobs": self.units,
            "profit_per_job": round(self.profit_per_job, 4),
            "honest_profit_per_job": round(self.honest_profit_per_job, 4),
            "gain_vs_honest": round(self.gain_vs_honest, 4),
            "gain_vs_honest_stderr": round(self.gain_vs_honest_stderr, 4),
            "expected_gain_vs_honest": round(self.expected_gain_vs_honest, 4),
            "deterred": self.deterred,
            **self.details,
        }
        if self.note is not None:
            out["note"] = self.note
        return out


def _paired(
    profits: list[int], honest: list[int], expected: list[float], honest_expected: list[float],
) -> dict[str, Any]:
    """Profit per unit of a strategy and of honest play over the same units (paired)."""
    n = len(profits)
    if n == 0:
        return {"units": 0, "profit_per_job": 0.0, "honest_profit_per_job": 0.0,
                "gain_vs_honest": 0.0, "gain_vs_honest_stderr": 0.0,
                "expected_gain_vs_honest": 0.0}
    diffs = [a - b for a, b in zip(profits, honest, strict=True)]
    gain = sum(diffs) / n
    var = sum((d - gain) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    expected_gain = (sum(expected) - sum(honest_expected)) / n
    return {"units": n, "profit_per_job": sum(profits) / n,
            "honest_profit_per_job": sum(honest) / n, "gain_vs_honest": gain,
            "gain_vs_honest_stderr": math.sqrt(var / n),
            "expected_gain_vs_honest": expected_gain}


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}


def _griefing_client(
    params: MarketParams, stream: list[_Job], providers: int,
    honest: StrategyResult, honest_out: list[JobOutcome],
) -> RoleResult:
    """A client posting unstable programs, served by honest workers (drawn jobs void, undrawn
    paid), against an honest client posting stable programs to honest workers. The griefer
    chooses the rate it escrows: the honest client's, or every job drawn (all void: the
    cheapest way to burn workers' compute). Its gain is the best of those choices."""
    worker = strategy_named("honest")
    honest_client = [o.client_profit(values_outputs=True) for o in honest_out]
    honest_expected = [-o.rate_bps / BPS * o.audit_fee for o in honest_out]
    variants: dict[str, dict[str, Any]] = {}
    for client_bps in sorted({params.client_audit_bps, BPS}):
        res, out = _run(params, worker, stream, providers, client_bps=client_bps, unstable=True)
        griefer = [o.client_profit(values_outputs=False) for o in out]
        expected = [-(o.rate_bps * o.audit_fee + (BPS - o.rate_bps) * o.reward) / BPS
                    for o in out]
        stats = _paired(griefer, honest_client, expected, honest_expected)
        void_cost = sum(params.compute_cost(o.reward) for o in out if o.verdict == "void")
        variants[f"client_audit_bps_{client_bps}"] = {
            "client_audit_bps": client_bps,
            **stats,
            "mean_audit_bps": res.rate_bps_sum / res.jobs,
            "void_jobs": res.voided,
            "paid_jobs": sum(o.verdict == "paid" for o in out),
            "honest_workers_slashed": sum(o.verdict == "slashed" for o in out),
            "honest_worker_loss_per_job": void_cost / res.jobs,
            "honest_worker_profit_per_job": res.profit_per_job,
            "griefer_cost_per_job": sum(o.client_paid() for o in out) / res.jobs,
        }
    best = max(variants.values(), key=lambda v: v["gain_vs_honest"])
    return _role_result(
        0, "job", best,
        details={
            "best_client_audit_bps": best["client_audit_bps"],
            "honest_workers_slashed": sum(v["honest_workers_slashed"] for v in variants.values()),
            "honest_worker_loss_per_job": round(
                max(v["honest_worker_loss_per_job"] for v in variants.values()), 4),
            "honest_worker_profit_per_job_serving_honest_clients": round(
                honest.profit_per_job, 4),
            "variants": {name: _rounded(v) for name, v in variants.items()},
        },
        note=("gain_vs_honest: the griefer's best choice of escrowed rate; "
              "honest_worker_loss_per_job: the compute cost of void jobs per job served, at "
              "the choice worst for the worker. No honest worker is slashed (drawn jobs are "
              "void), but a griefer escrowing every job for audit burns that compute for "
              "the audit fee alone."),
    )


def _colluding_operator(
    params: MarketParams, stream: list[_Job], providers: int, honest_out: list[JobOutcome],
) -> RoleResult:
    """The operator's own workers, junk on every job, tickets signed at 0 bps, against an
    honest worker (whose ticket carries the formula's rate: the flag does not change its
    rate). Run with the rate decided on chain and without (the old contract)."""
    junk = strategy_named("always_cheat")
    honest_profit = [o.worker_profit for o in honest_out]
    honest_expected = [o.worker_expected_profit for o in honest_out]
    by_rule: dict[bool, dict[str, Any]] = {}
    for onchain in (True, False):
        res, out = _run(replace(params, onchain_audit_rate=onchain), junk, stream, providers,
                        ticket_bps=0)
        stats = _paired([o.worker_profit for o in out], honest_profit,
                        [o.worker_expected_profit for o in out], honest_expected)
        by_rule[onchain] = {
            **stats,
            "mean_audit_bps": res.rate_bps_sum / res.jobs,
            "caught": res.caught,
            "junk_accepted": res.junk_accepted,
            "addresses_used": res.identities,
        }
    main = by_rule[params.onchain_audit_rate]
    return _role_result(
        1, "job", main,
        details={
            "onchain_audit_rate": params.onchain_audit_rate,
            "with_onchain_audit_rate": _rounded(by_rule[True]),
            "without_onchain_audit_rate": _rounded(by_rule[False]),
        },
    )


def _role_result(index: int, per: str, stats: dict[str, Any], *,
                 details: dict[str, Any], **extra: Any) -> RoleResult:
    """The RoleResult of ``ROLE_STRATEGIES[index]`` from its paired statistics."""
    name, role, description = ROLE_STRATEGIES[index]
    return RoleResult(
        name, role, description, per,
        units=stats["units"], profit_per_job=stats["profit_per_job"],
        honest_profit_per_job=stats["honest_profit_per_job"],
        gain_vs_honest=stats["gain_vs_honest"],
        gain_vs_honest_stderr=stats["gain_vs_honest_stderr"],
        expected_gain_vs_honest=stats["expected_gain_vs_honest"],
        details=details, **extra,
    )


def _lazy_verifier(
    params: MarketParams, stream: list[_Job], providers: int,
    honest: StrategyResult, honest_out: list[JobOutcome], seed: int = 0,
) -> RoleResult:
    """A verifier passing every audit unread against one recomputing each, over the audits of
    the honest market. What it does to deterrence: with every verifier lazy nothing is caught
    (``detection_bps`` 0), and junk on every job is compared with honest work."""
    audits = [o for o in honest_out if o.audited]
    rng = random.Random(f"canaries-{seed}")
    canary = [rng.randrange(BPS) < params.canary_bps for _ in audits]
    q = params.canary_bps / BPS
    # honest: recomputes every audit (a canary is failed, its fee earned from the slash)
    honest_v = [o.audit_fee - params.verify_cost(o.reward) for o in audits]
    # lazy: the fee of every pass that stands; a canary's pass is overturned: bond lost
    lazy_v = [-o.reward * params.pass_bond_rewards if c else o.audit_fee
              for o, c in zip(audits, canary, strict=True)]
    lazy_expected = [(1 - q) * o.audit_fee - q * o.reward * params.pass_bond_rewards
                     for o in audits]
    stats = _paired(lazy_v, honest_v, lazy_expected, [float(v) for v in honest_v])
    fee_share = params.audit_fee_bps / BPS
    breakeven = (params.verify_bps / BPS) / (fee_share + params.pass_bond_rewards) \
        if fee_share + params.pass_bond_rewards > 0 else 1.0
    blind, _ = _run(replace(params, detection_bps=0), strategy_named("always_cheat"), stream,
                    providers, outcomes=False)
    # Among lazy seats (a share L of the weight lazy, the rest honest): a canary's dispute
    # goes to an appeal seat; an honest one overturns the lazy pass (bond lost), a lazy one
    # upholds it unread, and the canary escalates: an honest third seat then disagrees (the
    # job is void: the lazy passer keeps its bond but not its fee, the lazy upholder forfeits
    # its cover: reward + collateral + the pass bond), a lazy one lets the pass stand. A lazy
    # seat is also the appeal seat of the canaries other lazy seats passed (q L per audit).
    half = 0.5
    draws = [(rng.random(), rng.random(), rng.random(), rng.random()) for _ in audits]

    def among_lazy(o: JobOutcome, c: bool, u: tuple[float, ...], lazy: float) -> tuple[int, int]:
        """(lazy, honest) profit of one audit slot and its share of appeal duties."""
        fee, bond = o.audit_fee, o.reward * params.pass_bond_rewards
        cover = o.reward + params.collateral(o.reward) + bond
        cost = params.verify_cost(o.reward)
        first = fee if not c else (-bond if u[0] >= lazy else fee if u[1] < lazy else 0)
        honest_first = fee - cost
        duty = u[2] < q * lazy  # a lazily passed canary's dispute drawn to this seat
        second = (fee if u[3] < lazy else -cover) if duty else 0
        honest_second = fee - cost if duty else 0
        return first + second, honest_first + honest_second

    pairs = [among_lazy(o, c, u, half) for o, c, u in zip(audits, canary, draws, strict=True)]

    def lazy_gain(lazy: float, fee: float, cost: float, bond: float, cover: float) -> float:
        """lazy - honest per audit, in expectation, at lazy share ``lazy``."""
        first = (1 - q) * fee + q * ((1 - lazy) * -bond + lazy * lazy * fee)
        second = q * lazy * ((1 - lazy) * -cover + lazy * fee)
        return first + second - (fee - cost) - q * lazy * (fee - cost)

    unit = (fee_share, params.verify_bps / BPS, float(params.pass_bond_rewards),
            1 + params.collateral_ratio + float(params.pass_bond_rewards))
    among_lazy_expected = [lazy_gain(half, *unit) * o.reward for o in audits]
    half_stats = _paired([p[0] for p in pairs], [p[1] for p in pairs], among_lazy_expected,
                         [0.0] * len(pairs))
    lazy_share_breakeven = _first_root(lambda lazy: lazy_gain(lazy, *unit))
    return _role_result(
        2, "audit", stats,
        details={
            "verify_cost_bps": params.verify_bps,
            "audit_fee_bps": params.audit_fee_bps,
            "mechanism_built": True,
            "mechanism": "canary jobs disputed by their client; pass bond "
                         f"{params.pass_bond_rewards} rewards",
            "canary_bps": params.canary_bps,
            "canaries_seen": sum(canary),
            "breakeven_canary_bps": math.ceil(breakeven * BPS),
            "honest_verifier_profit_per_audit": round(sum(honest_v) / len(honest_v), 4)
            if honest_v else 0.0,
            "breakeven_lazy_share": round(lazy_share_breakeven, 4),
            "if_half_the_weight_lazy": {
                "gain_vs_honest_per_audit": round(half_stats["gain_vs_honest"], 4),
                "gain_vs_honest_stderr": round(half_stats["gain_vs_honest_stderr"], 4),
                "expected_gain_vs_honest_per_audit": round(
                    half_stats["expected_gain_vs_honest"], 4),
            },
            "if_every_verifier_lazy": {
                "always_cheat_profit_per_job": round(blind.profit_per_job, 4),
                "always_cheat_gain_vs_honest": round(
                    blind.profit_per_job - honest.profit_per_job, 4),
            },
        },
        note=LAZY_VERIFIER_NOTE,
    )


def _first_root(f: Callable[[float], float], steps: int = 60) -> float:
    """The least x in [0, 1] with f(x) >= 0 for f negative at 0 (bisection after a scan); 0
    when f(0) >= 0, 1 when f stays negative."""
    if f(0.0) >= 0:
        return 0.0
    grid = [i / 1000 for i in range(1001)]
    hi = next((x for x in grid if f(x) >= 0), None)
    if hi is None:
        return 1.0
    lo = hi - 0.001
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if f(mid) >= 0 else (mid, hi)
    return hi


def _silent_verifier(params: MarketParams, honest_out: list[JobOutcome]) -> RoleResult:
    """A seat that never posts its assigned verdicts against one recomputing each, over the
    audits of the honest market. The escalated seat is honest: it posts and takes the fee, so
    the silent seat earns 0 and is not punished. Also reported: every seat silent, where the job
    is void and each of the two assigned seats loses :meth:`MarketParams.silence_penalty`."""
    audits = [o for o in honest_out if o.audited]
    honest_v = [o.audit_fee - params.verify_cost(o.reward) for o in audits]
    silent_v = [0] * len(audits)
    stats = _paired(silent_v, honest_v, [0.0] * len(audits), [float(v) for v in honest_v])
    penalties = [params.silence_penalty(o.reward) for o in audits]
    collaterals = [params.collateral(o.reward) for o in audits]
    both = _paired([-x for x in penalties], honest_v, [float(-x) for x in penalties],
                   [float(v) for v in honest_v])
    n = len(audits)
    # colluding silence: both seats burn their penalty to spare a cheater its collateral
    deterred = sum(2 * x > c for x, c in zip(penalties, collaterals, strict=True))
    return _role_result(
        3, "audit", stats,
        details={
            "verify_cost_bps": params.verify_bps,
            "audit_fee_bps": params.audit_fee_bps,
            "mechanism_built": True,
            "mechanism": "verdicts escalate to a second seat halfway through the window; a "
                         "verdict that never comes voids the job and burns reward + collateral "
                         "of both assigned seats' registry deposits (seats are assigned only "
                         "jobs their weight covers)",
            "honest_verifier_profit_per_audit": round(sum(honest_v) / n, 4) if n else 0.0,
            "if_escalation_also_silent": {
                "job_void": True,
                "junk_paid": False,
                "penalty_per_audit": round(sum(penalties) / n, 4) if n else 0.0,
                "profit_per_audit": round(both["profit_per_job"], 4),
                "gain_vs_honest": round(both["gain_vs_honest"], 4),
                "colluding_silence_burns_per_audit": round(2 * sum(penalties) / n, 4)
                if n else 0.0,
                "cheater_collateral_saved_per_audit": round(sum(collaterals) / n, 4)
                if n else 0.0,
                "colluding_silence_costs_more_than_collateral_share": round(deterred / n, 4)
                if n else 0.0,
            },
        },
        note=SILENT_VERIFIER_NOTE,
    )


APPEAL_COALITION_NOTE = (
    "No single seat overturns a verdict: an appeal verdict that overturns the first goes to a "
    "third seat, drawn excluding the worker, the client and both verifiers, and the seat in "
    "the minority pays. A seat is drawn for an appeal only if its deposit covers the job's "
    "reward and collateral plus the bond of the verdict under appeal, and an overturn that the "
    "contest finds wrong forfeits exactly that, which is at least what the overturn would have "
    "moved to the coalition. So the coalition loses money unless it holds the contest more "
    "than breakeven_coalition_share of the time, about half the seats' weight."
)


def _appeal_coalition(index: int, params: MarketParams, honest_out: list[JobOutcome],
                      seed: int) -> RoleResult:
    """A coalition holding ``coalition_bps`` of the seats' weight, drawn as the appeal seat of
    each audited job of the honest market (one attempt per audit), against giving the honest
    appeal verdict. The contest is the coalition's with probability ``coalition_bps``.

    Sparing a cheater (index 4): honest, the cheater loses its collateral and the appeal seat
    earns up to the audit fee from it, less its recomputation. Won, the cheater is paid and
    gets the failing verifier's bond less the contest fee, keeps its collateral, and the
    coalition earns the audit fee and the contest fee. Lost, the cheater is slashed anyway and
    the appeal seat forfeits reward + collateral + the failure's bond (one reward).

    Robbing an honest pass (index 5): honest, nothing happens (an honest client does not
    dispute a right pass). Won, the client gets the reward back (and keeps the result), the
    compensation from the worker's collateral, the pass bond less the contest fee; the
    coalition's seats earn the audit fee and the contest fee. Lost, the client's dispute bond
    (an audit fee) goes to the fee recipient and the appeal seat forfeits reward + collateral
    + the pass bond."""
    def outcomes(o: JobOutcome) -> tuple[int, int, int]:
        r, fee_a, c = o.reward, o.audit_fee, params.collateral(o.reward)
        contest_fee = min(fee_a, r)
        pay = r - math.ceil(r * params.fee_bps / BPS)
        if index == 4:
            honest = -c + min(fee_a, c - min(c, fee_a)) - params.verify_cost(r)
            won = pay + (r - contest_fee) + fee_a + contest_fee
            return honest, won, -c - (r + c + r)
        won = r + min(c, fee_a) + (params.pass_bond_rewards * r - contest_fee) + fee_a \
            + contest_fee
        return 0, won, -fee_a - (r + c + params.pass_bond_rewards * r)

    return _coalition_attempts(
        index, params, honest_out, random.Random(f"coalition-{index}-{seed}"), outcomes,
        mechanism="an overturning appeal verdict is contested by a third seat; the minority's "
                  "bond pays (the overturner's registry deposit: reward + collateral + the bond "
                  "of the verdict under appeal)",
        held="contest", note=APPEAL_COALITION_NOTE)


def _coalition_attempts(
    index: int, params: MarketParams, honest_out: list[JobOutcome], rng: random.Random,
    outcomes: Callable[[JobOutcome], tuple[int, int, int]], *, mechanism: str, held: str,
    note: str,
) -> RoleResult:
    """One attempt per audit of the honest market: ``outcomes(o)`` gives (honest, won, lost)
    profits, won when the coalition (``coalition_bps`` of the weight) holds the deciding seat,
    drawn with ``rng``. Reports the breakeven share at which the attempts break even."""
    audits = [o for o in honest_out if o.audited]
    share = params.coalition_bps / BPS
    won_v: list[float] = []
    lost_v: list[float] = []
    profits: list[int] = []
    honest_v: list[int] = []
    for o in audits:
        honest, won, lost = outcomes(o)
        won_v.append(won - honest)
        lost_v.append(lost - honest)
        profits.append(won if rng.random() < share else lost)
        honest_v.append(honest)
    expected = [share * w + (1 - share) * lo + h
                for w, lo, h in zip(won_v, lost_v, honest_v, strict=True)]
    stats = _paired(profits, honest_v, expected, [float(h) for h in honest_v])
    gain, loss = sum(won_v), -sum(lost_v)
    return _role_result(
        index, "attempt", stats,
        details={
            "coalition_share": round(share, 4),
            "mechanism_built": True,
            "mechanism": mechanism,
            f"gain_if_{held}_held_per_attempt": round(gain / len(audits), 4) if audits else 0.0,
            f"loss_if_{held}_lost_per_attempt": round(loss / len(audits), 4) if audits else 0.0,
            "breakeven_coalition_share": round(loss / (gain + loss), 4) if gain + loss else 1.0,
        },
        note=note,
    )


ESCALATION_NOTE = (
    "An appeal verdict that upholds the first may be escalated by the party it goes against; "
    "a third seat that disagrees with both voids the job (and the upholding seat forfeits its "
    "cover). The escalation's bond is what the void would move to the escalating party and a "
    "third seat of its coalition, at least (the worker: its collateral and the reward; the "
    "client: the reward and two audit fees), so escalating a true verdict gains the void's "
    "value when the coalition holds the third seat and loses at least as much otherwise: it "
    "loses below half the seats' weight."
)


def _escalation_coalition(index: int, params: MarketParams, honest_out: list[JobOutcome],
                          seed: int) -> RoleResult:
    """A coalition holding ``coalition_bps`` of the seats' weight escalates each true upheld
    verdict of the honest market's audits (one attempt per audit), against not escalating.

    A cheater (index 6): not escalating, it is slashed (its collateral). Won (the coalition
    holds the third seat), the job is void: its collateral comes back and the third seat earns
    the contest fee from the first verifier's fee. Lost, it is slashed and loses its bond
    (collateral + reward).

    A client (index 7): not escalating, the pass stands: it paid the reward for the result
    (valued at the reward), the audit fee and its lost dispute bond. Won, void: the reward
    comes back with the result kept, the audit fee comes back less the contest fee (which the
    coalition's third seat earns), the dispute bond comes back. Lost, the pass stands and the
    bond (reward + two audit fees) is lost."""
    def outcomes(o: JobOutcome) -> tuple[int, int, int]:
        r, fee_a, c = o.reward, o.audit_fee, params.collateral(o.reward)
        contest_fee = min(fee_a, r)
        if index == 6:
            return -c, contest_fee, -c - (c + r)
        return -2 * fee_a, r, -2 * fee_a - (r + 2 * fee_a)

    return _coalition_attempts(
        index, params, honest_out, random.Random(f"escalation-{index}-{seed}"), outcomes,
        mechanism="an escalated uphold is judged by a third seat; disagreeing, the job is void; "
                  "the escalation bonds what the void would move to the escalating party and "
                  "its third seat",
        held="third_seat", note=ESCALATION_NOTE)


def simulate_roles(
    params: MarketParams = MarketParams(),
    *,
    jobs: int = 10_000,
    providers: int = 10,
    seed: int = 0,
) -> dict[str, RoleResult]:
    """The strategies of :data:`ROLE_STRATEGIES`, each against honest play of its role on the
    job stream and draws :func:`simulate_market` uses for the same ``jobs`` and ``seed``."""
    if jobs < 1 or providers < 1:
        raise BadInput("simulate_roles needs jobs >= 1 and providers >= 1")
    stream = _job_stream(params, jobs, seed)
    honest, honest_out = _run(params, strategy_named("honest"), stream, providers)
    return {
        "griefing_client": _griefing_client(params, stream, providers, honest, honest_out),
        "colluding_operator": _colluding_operator(params, stream, providers, honest_out),
        "lazy_verifier": _lazy_verifier(params, stream, providers, honest, honest_out, seed),
        "silent_verifier": _silent_verifier(params, honest_out),
        "appeal_seat_spares_cheater": _appeal_coalition(4, params, honest_out, seed),
        "appeal_seat_robs_pass": _appeal_coalition(5, params, honest_out, seed),
        "escalating_cheater": _escalation_coalition(6, params, honest_out, seed),
        "escalating_client": _escalation_coalition(7, params, honest_out, seed),
    }


def catch_probabilities(
    params: MarketParams,
    strategy: Strategy,
    *,
    within: tuple[int, ...] = (1, 10, 50, 100),
    trials: int = 1_000,
    seed: int = 0,
    max_jobs: int = 5_000,
) -> dict[int, float] | None:
    """Probability that a fresh provider following ``strategy`` is caught within N jobs of its
    first junk result, for each N in ``within`` (Monte Carlo over ``trials`` lifetimes).
    None when the strategy returned no junk in ``max_jobs`` jobs of any trial."""
    if trials < 1 or not within or min(within) < 1:
        raise BadInput("catch_probabilities needs trials >= 1 and positive horizons")
    horizon = max(within)
    rng = random.Random(seed)
    lo, hi = math.log(params.reward_min), math.log(params.reward_max)
    caught_at: list[int | None] = []
    cheated_ever = False
    for _ in range(trials):
        provider = _Provider(params, strategy, StrategyResult(strategy.name))
        first_junk: int | None = None
        when: int | None = None
        for n in range(max_jobs):
            reward = min(params.reward_max,
                         max(params.reward_min, round(math.exp(rng.uniform(lo, hi)))))
            job = _Job(reward, rng.randrange(BPS), rng.randrange(BPS), rng.random())
            junk_before = provider.result.junk
            caught = provider.take(job)
            if first_junk is None and provider.result.junk > junk_before:
                first_junk = n
            if caught:
                when = n - first_junk + 1 if first_junk is not None else None
                break
            if first_junk is not None and n - first_junk + 1 >= horizon:
                break
        cheated_ever |= first_junk is not None
        caught_at.append(when)
    if not cheated_ever:
        return None
    return {
        n: sum(1 for w in caught_at if w is not None and w <= n) / trials for n in within
    }


def junk_expected_value(params: MarketParams, *, reward: int, bps: int,
                        segment_cheat: SegmentCheat | None = None) -> float:
    """Expected profit of one junk result at audit rate ``bps``:
    ``(1 - p q) (R - fee - junk_cost) - p q (C + junk_cost)``, with q the detection rate.
    ``segment_cheat``: a training result with those segments skipped instead, so the cost is
    :meth:`SegmentCheat.cost` and q is also multiplied by :attr:`SegmentCheat.detection`."""
    pay, _ = split_reward(reward, params.fee_bps)
    pq = bps / BPS * params.detection_bps / BPS
    junk = params.junk_cost(reward)
    if segment_cheat is not None:
        pq *= float(segment_cheat.detection)
        junk = segment_cheat.cost(params.compute_cost(reward), junk)
    return (1 - pq) * (pay - junk) - pq * (params.collateral(reward) + junk)
