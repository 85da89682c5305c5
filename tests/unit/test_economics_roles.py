"""Economics of the other roles: a griefing client, a colluding operator, a lazy verifier,
a silent verifier, a coalition of verifier seats overturning right verdicts on appeal.

Each strategy is compared with honest play of its own role on the same jobs and draws; the
contract rules modelled: the audit rate decided on chain (a ticket only raises it), void audits
for programs that cannot be judged, slash compensation limited to the audit fee.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshcompute.core.audit_rate import BPS
from meshcompute.core.economics import (
    ROLE_STRATEGIES,
    MarketParams,
    job_audit_bps,
    junk_expected_value,
    simulate_market,
    simulate_roles,
    strategy_named,
)
from meshcompute.core.payout import split_reward
from meshcompute.errors import BadInput
from meshcompute.mesh.bench.sim import run_sim

DEFAULTS = MarketParams()
JOBS, SEED = 10_000, 20_240_601


@pytest.fixture(scope="module")
def roles() -> dict:
    return simulate_roles(DEFAULTS, jobs=JOBS, providers=10, seed=SEED)


def test_every_role_strategy_is_simulated_and_reports_its_gain(roles: dict) -> None:
    assert set(roles) == {name for name, _, _ in ROLE_STRATEGIES}
    for name, result in roles.items():
        entry = result.to_json()
        assert isinstance(entry["gain_vs_honest"], float), name
        assert entry["jobs"] > 0, name
        assert entry["gain_vs_honest"] == pytest.approx(
            entry["profit_per_job"] - entry["honest_profit_per_job"], abs=1e-3), name


# ------------------------------------------------------------------ the on-chain audit rate


def test_onchain_rate_is_the_largest_and_a_ticket_can_only_raise_it() -> None:
    p = MarketParams(min_audit_bps=500, client_audit_bps=0)
    assert job_audit_bps(p, formula_bps=3_637, ticket_bps=0) == 3_637
    assert job_audit_bps(p, formula_bps=3_637, ticket_bps=5_000) == 5_000
    assert job_audit_bps(p, formula_bps=1_364, ticket_bps=0, client_bps=2_000) == 2_000
    assert job_audit_bps(MarketParams(min_audit_bps=4_000), formula_bps=1_364, ticket_bps=0) \
        == 4_000
    old = dataclasses.replace(p, onchain_audit_rate=False)
    assert job_audit_bps(old, formula_bps=3_637, ticket_bps=0) == 500  # max(client, floor)
    assert job_audit_bps(old, formula_bps=3_637, ticket_bps=0, client_bps=900) == 900
    assert job_audit_bps(old, formula_bps=3_637, ticket_bps=3_637) == 3_637


def test_the_flag_changes_nothing_for_workers_of_an_honest_market() -> None:
    """An honest market signs the formula's rate, so the worker strategies are unchanged."""
    new = simulate_market(DEFAULTS, jobs=2_000, seed=7)
    old = simulate_market(MarketParams(onchain_audit_rate=False), jobs=2_000, seed=7)
    assert {k: v.to_json() for k, v in new.items()} == {k: v.to_json() for k, v in old.items()}


# ------------------------------------------------------------------ griefing client


def test_griefing_client_loses_and_no_honest_worker_is_slashed(roles: dict) -> None:
    grief = roles["griefing_client"]
    entry = grief.to_json()
    assert grief.gain_vs_honest < 0 and entry["deterred"] is True
    assert entry["honest_workers_slashed"] == 0
    for name, variant in entry["variants"].items():
        assert variant["honest_workers_slashed"] == 0, name
        assert variant["void_jobs"] > 0, f"{name}: no drawn job, the test would be vacuous"
        assert variant["void_jobs"] + variant["paid_jobs"] == JOBS, name
        assert variant["gain_vs_honest"] < 0, name
    # every choice of escrowed rate loses; at the default audit fee (the reward) a drawn,
    # void job costs the griefer as much as a paid one, so asking for more audits buys nothing
    assert entry["best_client_audit_bps"] == 0
    assert entry["variants"][f"client_audit_bps_{BPS}"]["paid_jobs"] == 0
    # the honest client pays its audit fees and nothing more: a small negative profit
    assert -0.1 * 1_000 < grief.honest_profit_per_job < 0
    # serving a griefer costs an honest worker the compute of the void jobs
    assert entry["honest_worker_loss_per_job"] > 0
    assert entry["honest_worker_profit_per_job_serving_honest_clients"] > 0


def test_void_and_paid_flows_of_unstable_jobs_mirror_the_contract() -> None:
    """Fixed reward: drawn (void) jobs cost the client only the audit fee (reward back) and the
    worker its compute (paid nothing, not slashed); undrawn ones are paid normally."""
    reward = 200
    params = MarketParams(reward_min=reward, reward_max=reward)
    fee, compute = params.audit_fee(reward), params.compute_cost(reward)
    pay, _ = split_reward(reward, params.fee_bps)
    variants = simulate_roles(params, jobs=2_000, seed=3)["griefing_client"].details["variants"]
    drawn_all = variants[f"client_audit_bps_{BPS}"]
    assert drawn_all["void_jobs"] == 2_000 and drawn_all["honest_workers_slashed"] == 0
    assert drawn_all["profit_per_job"] == -fee
    assert drawn_all["honest_worker_profit_per_job"] == -compute
    assert drawn_all["honest_worker_loss_per_job"] == compute
    mixed = variants["client_audit_bps_0"]
    void, paid = mixed["void_jobs"], mixed["paid_jobs"]
    assert void > 0 and paid > 0
    assert mixed["griefer_cost_per_job"] * 2_000 == pytest.approx(void * fee + paid * reward)
    assert mixed["honest_worker_profit_per_job"] * 2_000 == pytest.approx(
        paid * (pay - compute) - void * compute)


def test_griefing_gains_nothing_when_every_job_is_audited_anyway() -> None:
    """With every job drawn for everyone, the griefer pays exactly what an honest client pays
    (the audit fee): griefing then costs nothing extra, but still harms no worker's stake."""
    params = MarketParams(reward_min=100, reward_max=100, min_audit_bps=BPS)
    grief = simulate_roles(params, jobs=500, seed=1)["griefing_client"]
    assert grief.gain_vs_honest == 0 and not grief.deterred
    assert grief.details["honest_workers_slashed"] == 0


# ------------------------------------------------------------------ colluding operator


def test_colluding_operator_loses_with_the_onchain_rate_and_wins_without(roles: dict) -> None:
    col = roles["colluding_operator"]
    entry = col.to_json()
    assert entry["onchain_audit_rate"] is True
    onchain, old = entry["with_onchain_audit_rate"], entry["without_onchain_audit_rate"]
    assert col.gain_vs_honest == pytest.approx(onchain["gain_vs_honest"], abs=1e-3)
    assert col.gain_vs_honest < 0 and entry["deterred"] is True
    assert onchain["expected_gain_vs_honest"] < 0 and onchain["caught"] > 0
    # the old contract: a ticket at 0 leaves the floor, and junk on every job pays
    assert old["mean_audit_bps"] == DEFAULTS.min_audit_bps
    assert old["expected_gain_vs_honest"] > 0
    # the realized gain is noisy (a slash costs 10 rewards at a 5% rate); it agrees with the
    # expected one within its standard error
    assert abs(old["gain_vs_honest"] - old["expected_gain_vs_honest"]) < 4 * old[
        "gain_vs_honest_stderr"]


def test_colluding_operator_with_onchain_rate_is_just_a_cheating_worker(roles: dict) -> None:
    """A ticket signed at 0 changes nothing when the chain decides the rate: the operator's
    workers are audited exactly like any worker returning junk on every job."""
    market = simulate_market(DEFAULTS, (strategy_named("honest"), strategy_named("always_cheat")),
                             jobs=JOBS, providers=10, seed=SEED)
    col = roles["colluding_operator"]
    assert col.profit_per_job == pytest.approx(market["always_cheat"].profit_per_job)
    assert col.honest_profit_per_job == pytest.approx(market["honest"].profit_per_job)


def test_colluding_operator_gain_without_onchain_rate_matches_the_junk_value() -> None:
    reward = 100
    params = MarketParams(reward_min=reward, reward_max=reward)
    pay, _ = split_reward(reward, params.fee_bps)
    honest = pay - params.compute_cost(reward)
    at_floor = junk_expected_value(params, reward=reward, bps=params.min_audit_bps)
    col = simulate_roles(params, jobs=1_000, seed=2)["colluding_operator"].details
    assert col["without_onchain_audit_rate"]["expected_gain_vs_honest"] == pytest.approx(
        at_floor - honest, abs=1e-3)
    assert at_floor - honest > 0
    assert col["with_onchain_audit_rate"]["expected_gain_vs_honest"] < 0
    # the client's own rate still binds under the old contract
    strict = dataclasses.replace(params, client_audit_bps=3_000)
    col = simulate_roles(strict, jobs=1_000, seed=2)["colluding_operator"].details
    assert col["without_onchain_audit_rate"]["mean_audit_bps"] == 3_000
    assert col["without_onchain_audit_rate"]["expected_gain_vs_honest"] < 0


# ------------------------------------------------------------------ lazy verifier


def test_lazy_verifier_loses_to_canaries(roles: dict) -> None:
    """Canaries (known junk, disputed once passed) on 8 % of audits, ten rewards of stake
    behind each pass: passing unread loses money in expectation and in the run."""
    lazy = roles["lazy_verifier"]
    entry = lazy.to_json()
    assert lazy.expected_gain_vs_honest < 0 and lazy.gain_vs_honest < 0
    assert entry["deterred"] is True and entry["mechanism_built"] is True
    assert entry["per"] == "audit"
    assert entry["verify_cost_bps"] == DEFAULTS.compute_cost_bps
    assert entry["canaries_seen"] > 0
    # break-even share: verify cost / (audit fee + bond) = 0.6 / (1 + 10)
    assert entry["breakeven_canary_bps"] == 546 < DEFAULTS.canary_bps
    # the default audit fee (the reward) pays an honest verifier more than its recomputation
    assert entry["honest_verifier_profit_per_audit"] > 0
    # with every verifier lazy nothing is caught and junk pays more than honest work
    assert entry["if_every_verifier_lazy"]["always_cheat_gain_vs_honest"] > 0


def test_lazy_seats_shielding_each_other_lose_while_most_of_the_weight_recomputes(
        roles: dict) -> None:
    """A canary's dispute may go to a lazy appeal seat that upholds the lazy pass unread; the
    canary escalates and an honest third seat voids the job, so the upholder forfeits its
    cover (reward + collateral + the pass bond). With half the weight lazy, laziness still
    loses; it pays only above about 70 % (without the escalation it paid above 32 %:
    1 - 0.6 / (0.08 x 11))."""
    entry = roles["lazy_verifier"].to_json()
    assert 1 - 0.6 / (0.08 * 11) < 0.5 < entry["breakeven_lazy_share"] < 1
    half = entry["if_half_the_weight_lazy"]
    assert half["expected_gain_vs_honest_per_audit"] < 0
    assert half["gain_vs_honest_per_audit"] < 0


def test_lazy_verifier_gains_without_canaries_and_saves_exactly_its_cost() -> None:
    reward = 300
    params = MarketParams(reward_min=reward, reward_max=reward, verify_cost_bps=2_500,
                          canary_bps=0)
    lazy = simulate_roles(params, jobs=1_000, seed=4)["lazy_verifier"]
    assert lazy.units > 0
    assert lazy.profit_per_job == params.audit_fee(reward)
    assert lazy.honest_profit_per_job == params.audit_fee(reward) - reward * 2_500 // BPS
    assert lazy.gain_vs_honest == reward * 2_500 // BPS
    assert not lazy.deterred
    free = dataclasses.replace(params, verify_cost_bps=0)
    assert simulate_roles(free, jobs=200, seed=4)["lazy_verifier"].gain_vs_honest == 0


def test_each_caught_canary_costs_the_lazy_verifier_its_bond() -> None:
    reward = 300
    params = MarketParams(reward_min=reward, reward_max=reward, canary_bps=BPS)
    lazy = simulate_roles(params, jobs=500, seed=1)["lazy_verifier"]
    assert lazy.profit_per_job == -reward * params.pass_bond_rewards


# ------------------------------------------------------------------ silent verifier


def test_silent_verifier_loses_at_the_defaults(roles: dict) -> None:
    """Honest verifying pays (fee = the reward > cost = 0.6 reward), so staying silent, which
    hands the verdict and its fee to the escalated seat, loses; every seat silent loses more."""
    silent = roles["silent_verifier"]
    entry = silent.to_json()
    assert entry["per"] == "audit" and entry["role"] == "verifier"
    assert entry["honest_verifier_profit_per_audit"] > 0
    assert silent.gain_vs_honest < 0 and silent.expected_gain_vs_honest < 0
    assert entry["deterred"] is True and entry["mechanism_built"] is True
    both = entry["if_escalation_also_silent"]
    assert both["job_void"] is True and both["junk_paid"] is False
    assert both["gain_vs_honest"] < silent.gain_vs_honest
    assert "escalat" in entry["note"] and "burned" in entry["note"]


def test_silent_verifier_forfeits_exactly_the_honest_profit_per_audit() -> None:
    reward = 300
    params = MarketParams(reward_min=reward, reward_max=reward, verify_cost_bps=2_500)
    silent = simulate_roles(params, jobs=1_000, seed=4)["silent_verifier"]
    honest = params.audit_fee(reward) - params.verify_cost(reward)
    assert silent.units > 0
    assert silent.profit_per_job == 0  # the escalated seat posts and takes the fee
    assert silent.honest_profit_per_job == honest == 225
    assert silent.gain_vs_honest == silent.expected_gain_vs_honest == -honest
    assert silent.gain_vs_honest_stderr == 0
    # with verifying unprofitable (fee <= cost) silence is not deterred: nothing to forfeit
    free_fee = dataclasses.replace(params, audit_fee_bps=2_500)
    assert simulate_roles(free_fee, jobs=200, seed=4)["silent_verifier"].gain_vs_honest == 0


def test_every_seat_silent_burns_reward_plus_collateral_more_than_collusion_saves() -> None:
    reward = 300
    params = MarketParams(reward_min=reward, reward_max=reward)
    penalty = reward + params.collateral(reward)
    assert params.silence_penalty(reward) == penalty
    silent = simulate_roles(params, jobs=1_000, seed=5)["silent_verifier"]
    both = silent.details["if_escalation_also_silent"]
    honest = params.audit_fee(reward) - params.verify_cost(reward)
    assert both["penalty_per_audit"] == penalty
    assert both["profit_per_audit"] == -penalty
    assert both["gain_vs_honest"] == -penalty - honest
    # colluding silence burns both seats' penalties to spare the cheater its collateral
    assert both["colluding_silence_burns_per_audit"] == 2 * penalty
    assert both["cheater_collateral_saved_per_audit"] == params.collateral(reward)
    assert both["colluding_silence_costs_more_than_collateral_share"] == 1.0


# ------------------------------------------------------------------ params and report


def test_new_market_params_refuse_bad_input() -> None:
    with pytest.raises(BadInput, match="client_audit_bps"):
        MarketParams(client_audit_bps=BPS + 1)
    with pytest.raises(BadInput, match="verify_cost_bps"):
        MarketParams(verify_cost_bps=-1)
    assert MarketParams().verify_bps == MarketParams().compute_cost_bps
    assert MarketParams(compute_cost_bps=4_000).verify_bps == 4_000
    with pytest.raises(BadInput):
        simulate_roles(jobs=0)


def test_sim_report_has_roles_beside_the_worker_strategies() -> None:
    report = run_sim(jobs=3_000, seed=11, trials=20)
    # the worker summary keeps counting the worker strategies only
    assert report["cheating_strategies"] == len(report["strategies"]) - 1
    assert report["cheating_has_negative_ev"] == (
        report["cheating_strategies_losing"] == report["cheating_strategies"])
    roles = report["roles"]
    assert set(roles) == {"griefing_client", "colluding_operator", "lazy_verifier",
                          "silent_verifier", "appeal_seat_spares_cheater",
                          "appeal_seat_robs_pass", "escalating_cheater",
                          "escalating_client"}
    assert all("gain_vs_honest" in entry for entry in roles.values())
    assert report["role_strategies"] == 8
    assert report["role_strategies_losing"] == 8
    assert report["role_strategies_not_losing"] == []
    assert roles["lazy_verifier"]["deterred"] is True
    assert roles["silent_verifier"]["deterred"] is True
    assert roles["griefing_client"]["honest_workers_slashed"] == 0


# ------------------------------------------------------------------ a coalition of verifier seats
@pytest.mark.parametrize("name", ["appeal_seat_spares_cheater", "appeal_seat_robs_pass"])
def test_a_coalition_of_a_third_of_the_seats_loses_by_overturning_right_verdicts(
        roles: dict, name: str) -> None:
    """Open admission: anyone may take seats, so a coalition may be drawn as the appeal seat.
    Its overturn is contested by a third seat and the forfeit (what the seat was drawn to
    cover) is at least what the overturn would move to it: below about half the weight it loses."""
    coalition = roles[name]
    assert coalition.units > 0
    assert coalition.deterred and coalition.gain_vs_honest < 0
    details = coalition.details
    assert details["coalition_share"] == pytest.approx(DEFAULTS.coalition_bps / BPS, abs=1e-4)
    assert details["loss_if_contest_lost_per_attempt"] >= 0.95 * details[
        "gain_if_contest_held_per_attempt"]
    assert details["breakeven_coalition_share"] > 0.45


@pytest.mark.parametrize("name", ["appeal_seat_spares_cheater", "appeal_seat_robs_pass"])
def test_a_coalition_holding_most_of_the_weight_wins(name: str) -> None:
    """The limit of the mechanism, shown so the check above can fail: a coalition that holds
    the contest nine times in ten profits from overturning right verdicts."""
    params = MarketParams(coalition_bps=9_000)
    coalition = simulate_roles(params, jobs=1_000, seed=5)[name]
    assert not coalition.deterred and coalition.expected_gain_vs_honest > 0


# ------------------------------------------------------------------ escalating an upheld verdict
@pytest.mark.parametrize("name", ["escalating_cheater", "escalating_client"])
def test_escalating_a_true_upheld_verdict_loses_below_half_the_weight(
        roles: dict, name: str) -> None:
    """The escalation of an upheld verdict: a third seat that disagrees voids the job. Its bond
    is what the void would move to the escalating party and a third seat of its coalition, so
    the breakeven share is one half, and a third of the weight loses."""
    coalition = roles[name]
    assert coalition.units > 0
    assert coalition.deterred and coalition.gain_vs_honest < 0
    assert coalition.expected_gain_vs_honest < 0
    details = coalition.details
    assert details["breakeven_coalition_share"] == 0.5
    assert details["loss_if_third_seat_lost_per_attempt"] == \
        details["gain_if_third_seat_held_per_attempt"]


@pytest.mark.parametrize("name", ["escalating_cheater", "escalating_client"])
def test_escalating_with_most_of_the_weight_wins(name: str) -> None:
    params = MarketParams(coalition_bps=6_000)
    coalition = simulate_roles(params, jobs=1_000, seed=5)[name]
    assert not coalition.deterred and coalition.expected_gain_vs_honest > 0
