"""Economics of cheating: at the default parameters no cheating strategy pays."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.economics import (
    STRATEGIES,
    MarketParams,
    catch_probabilities,
    junk_expected_value,
    simulate_market,
    strategy_named,
)
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.errors import BadInput
from meshcompute.mesh.bench.sim import run_sim

DEFAULTS = MarketParams()


@pytest.fixture(scope="module")
def market() -> dict:
    return simulate_market(DEFAULTS, STRATEGIES, jobs=10_000, providers=10, seed=20_240_601)


def test_default_market_covers_honest_and_cheating_strategies(market: dict) -> None:
    assert "honest" in market and len(market) >= 8
    assert all(result.jobs == 10_000 for result in market.values())
    assert market["honest"].junk == 0 and market["honest"].caught == 0
    assert market["honest"].profit_per_job > 0


def test_every_cheating_strategy_earns_less_than_honest_work(market: dict) -> None:
    honest = market["honest"].profit_per_job
    for name, result in market.items():
        if name == "honest":
            continue
        assert result.junk > 0, f"{name} never cheated: the test would be vacuous"
        assert result.profit_per_job < honest, name
        assert result.gain_vs_honest < 0, name
        assert result.junk_profit < 0, f"{name}: junk results had positive value"


def test_always_cheating_loses_money_outright(market: dict) -> None:
    assert market["always_cheat"].profit < 0
    assert market["always_cheat"].caught > 0


def test_junk_has_negative_expected_value_at_every_rate_the_rule_gives() -> None:
    for reward in (DEFAULTS.reward_min, 100, DEFAULTS.reward_max):
        for record in ((0, 0), (1_000, 200), (10**9, 10**8)):
            bps = audit_bps(reward=reward, collateral=DEFAULTS.collateral(reward),
                            free_stake=DEFAULTS.initial_stake, completed=record[0],
                            audits_passed=record[1], slashed=0, min_bps=DEFAULTS.min_audit_bps)
            assert junk_expected_value(DEFAULTS, reward=reward, bps=bps) < 0


def test_without_detection_cheating_would_pay() -> None:
    """The simulation responds to its parameters: if audits never caught junk, it would pay."""
    blind = MarketParams(detection_bps=0)
    results = simulate_market(blind, (strategy_named("honest"), strategy_named("always_cheat")),
                              jobs=2_000, seed=5)
    assert results["always_cheat"].profit_per_job > results["honest"].profit_per_job
    assert results["always_cheat"].caught == 0


def test_slash_flows_mirror_the_contract() -> None:
    params = MarketParams(min_audit_bps=10_000, reward_min=50, reward_max=50, collateral_ratio=1)
    result = simulate_market(params, (strategy_named("always_cheat"),), jobs=100, seed=1)[
        "always_cheat"]
    collateral, audit_fee = 50, params.audit_fee(50)
    compensation, remainder = slash_split(collateral, audit_fee)
    assert result.caught == 100 and result.junk_accepted == 0
    assert result.profit == -100 * collateral
    assert result.client_compensation == 100 * compensation
    assert result.protocol_income == 100 * remainder
    assert result.verifier_fees == 100 * audit_fee
    assert result.identities == 10 + 100  # ten providers, a fresh address after each slash


def test_honest_pay_mirrors_the_contract() -> None:
    params = MarketParams(reward_min=333, reward_max=333, min_audit_bps=0)
    result = simulate_market(params, (strategy_named("honest"),), jobs=50, seed=3)["honest"]
    pay, fee = split_reward(333, params.fee_bps)
    assert result.profit == 50 * (pay - params.compute_cost(333))
    assert result.protocol_income == 50 * fee
    assert result.verifier_fees == result.audited * params.audit_fee(333)


def test_simulation_is_reproducible_from_its_seed() -> None:
    a = simulate_market(jobs=500, seed=9)
    b = simulate_market(jobs=500, seed=9)
    assert {k: v.to_json() for k, v in a.items()} == {k: v.to_json() for k, v in b.items()}


def test_catch_probability_grows_with_jobs_and_honest_is_never_caught() -> None:
    catch = catch_probabilities(DEFAULTS, strategy_named("always_cheat"), trials=300, seed=4)
    assert catch is not None
    values = [catch[n] for n in (1, 10, 50, 100)]
    assert values == sorted(values)
    assert 0.2 < catch[1] < 0.6  # a new worker's rate is about 36%
    assert catch[100] == 1.0
    assert catch_probabilities(DEFAULTS, strategy_named("honest"), trials=5, max_jobs=50) is None


def test_market_params_and_strategies_refuse_bad_input() -> None:
    with pytest.raises(BadInput, match="reward_min"):
        MarketParams(reward_min=0)
    with pytest.raises(BadInput, match="fee_bps"):
        MarketParams(fee_bps=10_001)
    with pytest.raises(BadInput, match="unknown strategy"):
        strategy_named("cheat_sometimes")
    with pytest.raises(BadInput):
        simulate_market(jobs=0)


def test_sim_report_and_cli() -> None:
    report = run_sim(jobs=10_000, seed=11, trials=100)
    assert report["cheating_has_negative_ev"] is True
    assert report["cheating_strategies_losing"] == report["cheating_strategies"] >= 8
    always = report["strategies"]["always_cheat"]["p_caught_within_jobs"]
    assert set(always) == {"1", "10", "50", "100"}
    assert report["audit_bps_reward_100"]["ever_slashed"] == 10_000

    from meshcompute.mesh.cli.main import app

    out = CliRunner().invoke(app, ["sim", "--jobs", "1000", "--trials", "20", "--seed", "2",
                                   "--json"])
    assert out.exit_code == 0, out.output
    parsed = json.loads(out.output)
    assert parsed["jobs_per_strategy"] == 1000 and parsed["seed"] == 2
    table = CliRunner().invoke(app, ["sim", "--jobs", "500", "--trials", "10"])
    assert table.exit_code == 0 and "always_cheat" in table.output
