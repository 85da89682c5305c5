"""Economics of cheating at the default parameters (``mesh sim``).

Simulates each strategy's providers over the same job stream (:mod:`meshcompute.core.economics`)
and reports profit per job, the value of a junk result, and the probability that a cheater is
caught within N jobs of its first junk result. ``roles``: the strategies of the other roles (a
griefing client, a colluding market operator, a lazy verifier) on the same job stream, each with
``gain_vs_honest`` against honest play of its role
(:func:`meshcompute.core.economics.simulate_roles`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.economics import (
    STRATEGIES,
    MarketParams,
    catch_probabilities,
    junk_expected_value,
    simulate_market,
    simulate_roles,
)

CATCH_WITHIN = (1, 10, 50, 100)


def run_sim(
    jobs: int = 10_000,
    seed: int = 0,
    *,
    providers: int = 10,
    trials: int = 1_000,
    params: MarketParams | None = None,
) -> dict[str, Any]:
    """Simulate ``jobs`` jobs per strategy; a JSON-able dict of the figures."""
    params = params or MarketParams()
    results = simulate_market(params, STRATEGIES, jobs=jobs, providers=providers, seed=seed)
    honest = results["honest"].profit_per_job
    strategies: dict[str, Any] = {}
    for i, strategy in enumerate(STRATEGIES):
        entry = results[strategy.name].to_json()
        entry["description"] = strategy.description
        entry["profit_per_job_vs_honest"] = round(entry["profit_per_job"] - honest, 4)
        if strategy.name != "honest":
            catch = catch_probabilities(
                params, strategy, within=CATCH_WITHIN, trials=trials, seed=seed * 1_000 + i
            )
            entry["p_caught_within_jobs"] = (
                None if catch is None else {str(n): p for n, p in catch.items()}
            )
        strategies[strategy.name] = entry
    cheaters = [name for name in strategies if name != "honest"]
    losing = [
        name for name in cheaters
        if strategies[name]["profit_per_job"] < honest
        and (strategies[name]["profit_per_junk_result"] or 0) < 0
    ]
    roles = {
        name: result.to_json()
        for name, result in simulate_roles(params, jobs=jobs, providers=providers,
                                           seed=seed).items()
    }
    roles_not_losing = [name for name, entry in roles.items() if not entry["deterred"]]
    typical = 100
    rates = {
        "new_worker": audit_bps(
            reward=typical, collateral=params.collateral(typical), free_stake=params.initial_stake,
            completed=0, audits_passed=0, slashed=0, min_bps=params.min_audit_bps,
        ),
        "after_1000_jobs_200_audits": audit_bps(
            reward=typical, collateral=params.collateral(typical), free_stake=params.initial_stake,
            completed=1_000, audits_passed=200, slashed=0, min_bps=params.min_audit_bps,
        ),
        "ever_slashed": audit_bps(
            reward=typical, collateral=params.collateral(typical), free_stake=params.initial_stake,
            completed=1_000, audits_passed=200, slashed=1, min_bps=params.min_audit_bps,
        ),
    }
    return {
        "jobs_per_strategy": jobs,
        "providers_per_strategy": providers,
        "seed": seed,
        "catch_trials": trials,
        "params": dataclasses.asdict(params),
        "audit_bps_reward_100": rates,
        "junk_ev_reward_100": {
            who: round(junk_expected_value(params, reward=typical, bps=bps), 4)
            for who, bps in rates.items()
        },
        "honest_profit_per_job": round(honest, 4),
        "strategies": strategies,
        "cheating_strategies_losing": len(losing),
        "cheating_strategies": len(cheaters),
        "cheating_has_negative_ev": len(losing) == len(cheaters),
        "roles": roles,
        "role_strategies_losing": len(roles) - len(roles_not_losing),
        "role_strategies": len(roles),
        "role_strategies_not_losing": roles_not_losing,
    }
