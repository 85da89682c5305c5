"""The economics of cheating: a simulated market of honest and cheating providers.

Every job follows the contract's money flows (``contracts/JobMarket.sol``):

- the client escrows ``reward + audit_fee``; the market's ticket carries
  :func:`meshcompute.core.audit_rate.audit_bps`, floored at the deployment's ``min_audit_bps``;
- the draw after the commit audits the job with that probability;
- not audited, or audited and passed: the worker is paid ``reward - fee`` (fee rounded up,
  :func:`meshcompute.core.payout.split_reward`); the verifier earns the audit fee when the job
  was audited, otherwise it goes back to the client;
- audited and caught: the worker's collateral is slashed and it is paid nothing; the client
  gets its reward back and, from the collateral, the audit fee it spent (never more than it
  paid: :func:`meshcompute.core.payout.slash_split`), the rest goes to the protocol; the
  verifier still earns the audit fee.

A provider pays ``compute_cost`` for an honest result and ``junk_cost`` for junk. Junk is
caught at an audit with probability ``detection_bps`` (1 at the defaults: ``mesh bench
verify`` measured every cheat type caught at every audit). Providers do not compete on
price, so the market decomposes into independent providers; each strategy's providers get
the same job stream and the same audit draws (common random numbers), which makes the
comparison between strategies sharp.

A caught provider walks away from its ruined record and comes back under a fresh address with
a fresh stake (``new_identity_after_slash``): the strongest thing a cheater can do, since a
slashed address is audited on every job.

Pure: the standard library and the core only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshcompute.core.audit_rate import BPS, audit_bps
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.errors import BadInput


@dataclass(frozen=True)
class MarketParams:
    """The default market. Amounts are in whole credits; bps are basis points of the reward."""

    reward_min: int = 10
    """Smallest job reward; rewards are drawn log-uniformly in [reward_min, reward_max]."""
    reward_max: int = 1_000
    audit_fee_bps: int = 1_000
    """Audit fee the client escrows, as a share of the reward (paid to the verifier if drawn)."""
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

    def __post_init__(self) -> None:
        if not 0 < self.reward_min <= self.reward_max:
            raise BadInput("market needs 0 < reward_min <= reward_max")
        for name in ("audit_fee_bps", "compute_cost_bps", "junk_cost_bps", "fee_bps",
                     "min_audit_bps", "detection_bps"):
            if not 0 <= getattr(self, name) <= BPS:
                raise BadInput(f"market {name} must be within 0..{BPS}, got {getattr(self, name)}")
        if self.collateral_ratio < 0 or self.initial_stake < 0:
            raise BadInput("market collateral_ratio and initial_stake must be >= 0")

    def collateral(self, reward: int) -> int:
        return self.collateral_ratio * reward

    def audit_fee(self, reward: int) -> int:
        return reward * self.audit_fee_bps // BPS

    def compute_cost(self, reward: int) -> int:
        return reward * self.compute_cost_bps // BPS

    def junk_cost(self, reward: int) -> int:
        return reward * self.junk_cost_bps // BPS


@dataclass(frozen=True)
class WorkerView:
    """What a strategy knows when it decides: its current address's record and the job."""

    jobs_taken: int
    completed: int
    audits_passed: int
    reward: int


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    cheats: Callable[[WorkerView, float], bool]
    """Decides whether to return junk for this job; the float is a uniform draw in [0, 1)."""


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


def strategy_named(name: str) -> Strategy:
    for strategy in STRATEGIES:
        if strategy.name == name:
            return strategy
    raise BadInput(f"unknown strategy {name!r}; choose one of {[s.name for s in STRATEGIES]}")


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
    profit: int = 0
    profit_sq: int = 0
    junk_profit: int = 0
    """Profit on the junk jobs alone."""
    gain_vs_honest: int = 0
    """Profit on the junk jobs minus what honest work on those same jobs would have earned."""
    slashed: int = 0
    client_compensation: int = 0
    verifier_fees: int = 0
    protocol_income: int = 0

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


@dataclass(frozen=True)
class _Job:
    reward: int
    audit_draw: int
    detect_draw: int
    choice: float


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
        p, ident, res = self.params, self.identity, self.result
        reward = job.reward
        collateral = p.collateral(reward)
        if ident.stake < collateral:
            ident.stake = max(p.initial_stake, collateral)  # the owner tops the stake up
        view = WorkerView(ident.jobs_taken, ident.completed, ident.audits_passed, reward)
        junk = self.strategy.cheats(view, job.choice)
        rate = audit_bps(
            reward=reward, collateral=collateral, free_stake=ident.stake,
            completed=ident.completed, audits_passed=ident.audits_passed,
            slashed=ident.slashed, min_bps=p.min_audit_bps,
        )
        audited = job.audit_draw < rate
        caught = junk and audited and job.detect_draw < p.detection_bps
        audit_fee = p.audit_fee(reward)
        pay, fee = split_reward(reward, p.fee_bps)
        honest_profit = pay - p.compute_cost(reward)
        ident.jobs_taken += 1
        res.jobs += 1
        res.audited += audited
        if audited:
            res.verifier_fees += audit_fee
        if caught:
            profit = -collateral - p.junk_cost(reward)
            compensation, remainder = slash_split(collateral, audit_fee)
            res.caught += 1
            res.slashed += collateral
            res.client_compensation += compensation
            res.protocol_income += remainder
            ident.stake -= collateral
            ident.slashed += 1
        else:
            profit = pay - (p.junk_cost(reward) if junk else p.compute_cost(reward))
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
        return caught


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
    results: dict[str, StrategyResult] = {}
    for strategy in strategies:
        result = StrategyResult(strategy.name)
        workers = [_Provider(params, strategy, result) for _ in range(providers)]
        for i, job in enumerate(stream):
            workers[i % providers].take(job)
        results[strategy.name] = result
    return results


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


def junk_expected_value(params: MarketParams, *, reward: int, bps: int) -> float:
    """Expected profit of one junk result at audit rate ``bps``:
    ``(1 - p q) (R - fee - junk_cost) - p q (C + junk_cost)``, with q the detection rate."""
    pay, _ = split_reward(reward, params.fee_bps)
    pq = bps / BPS * params.detection_bps / BPS
    junk = params.junk_cost(reward)
    return (1 - pq) * (pay - junk) - pq * (params.collateral(reward) + junk)
