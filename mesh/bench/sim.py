"""Economics of cheating at the default parameters (``mesh sim``).

Simulates each strategy's providers over the same job stream (:mod:`meshcompute.core.economics`)
and reports profit per job, the value of a junk result, and the probability that a cheater is
caught within N jobs of its first junk result. ``roles``: the strategies of the other roles (a
griefing client, a colluding market operator, a lazy verifier, a silent verifier) on the same
job stream, each with ``gain_vs_honest`` against honest play of its role
(:func:`meshcompute.core.economics.simulate_roles`). ``training``: workers that skip some
segments of every training job (:data:`meshcompute.core.economics.TRAINING_STRATEGIES`) on the
same job stream, with the exact chance that a drawn audit recomputes a skipped segment and
the share of the sim's audits whose real ``audit_segments`` draw did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.economics import (
    STRATEGIES,
    TRAINING_SEGMENTS,
    TRAINING_STRATEGIES,
    MarketParams,
    catch_probabilities,
    junk_expected_value,
    simulate_market,
    simulate_roles,
)
from meshcompute.core.payout import split_reward
from meshcompute.core.training import DEFAULT_AUDITED_SEGMENTS

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
    training = _training(params, jobs, seed, providers, trials, honest, rates)
    training_not_losing = [name for name, entry in training["strategies"].items()
                           if not entry["loses_to_honest"]]
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
        "cheating_has_negative_ev": len(losing) == len(cheaters) and not training_not_losing,
        "training": training,
        "training_strategies_losing": len(training["strategies"]) - len(training_not_losing),
        "training_strategies": len(training["strategies"]),
        "training_strategies_not_losing": training_not_losing,
        "roles": roles,
        "role_strategies_losing": len(roles) - len(roles_not_losing),
        "role_strategies": len(roles),
        "role_strategies_not_losing": roles_not_losing,
    }


def _training(
    params: MarketParams, jobs: int, seed: int, providers: int, trials: int, honest: float,
    rates: dict[str, int],
) -> dict[str, Any]:
    """The segment cheaters on the job stream of the worker strategies (so honest play earns
    ``honest`` per job on it too). A segment cheater still does the rest of the work, so its
    profit per junk result can be positive: it loses when its gain over honest work on the
    same jobs is negative."""
    results = simulate_market(params, TRAINING_STRATEGIES, jobs=jobs, providers=providers,
                              seed=seed)
    typical = 100
    pay, _ = split_reward(typical, params.fee_bps)
    honest_ev = pay - params.compute_cost(typical)
    rates = {**rates, "long_record": audit_bps(
        reward=typical, collateral=params.collateral(typical), free_stake=params.initial_stake,
        completed=10**9, audits_passed=10**8, slashed=0, min_bps=params.min_audit_bps)}
    out: dict[str, Any] = {}
    for i, strategy in enumerate(TRAINING_STRATEGIES):
        cheat = strategy.segment_cheat
        assert cheat is not None
        result = results[strategy.name]
        entry = result.to_json()
        gain_per_junk = entry["gain_per_junk_result_vs_honest"]
        catch = catch_probabilities(params, strategy, within=CATCH_WITHIN, trials=trials,
                                    seed=seed * 1_000 + 500 + i)
        out[strategy.name] = {
            "description": strategy.description,
            "segments_cheated": len(cheat.cheated),
            "cheats_last_segment": cheat.segments - 1 in cheat.cheated,
            "compute_saved": round(float(cheat.saved_share), 4),
            "p_audit_draws_cheated_segment": round(float(cheat.detection), 6),
            "p_audit_draws_cheated_segment_exact": str(cheat.detection),
            "audit_draws_hit_in_sim": (
                round(result.segment_audits_drawn / result.segment_audits, 4)
                if result.segment_audits else None),
            "audits_in_sim": result.segment_audits,
            "p_caught_per_audit": round(float(cheat.detection) * params.detection_bps / 10_000,
                                        6),
            **entry,
            "profit_per_job_vs_honest": round(entry["profit_per_job"] - honest, 4),
            "expected_gain_vs_honest_reward_100": {
                who: round(junk_expected_value(params, reward=typical, bps=bps,
                                               segment_cheat=cheat) - honest_ev, 4)
                for who, bps in rates.items()
            },
            "loses_to_honest": entry["profit_per_job"] < honest and (gain_per_junk or 0) < 0,
            "p_caught_within_jobs": (
                None if catch is None else {str(n): p for n, p in catch.items()}),
        }
    return {"segments": TRAINING_SEGMENTS, "audited_segments": DEFAULT_AUDITED_SEGMENTS,
            "strategies": out}
