"""Economics of cheating on training jobs: a worker that skips some of a job's checkpoint
segments saves that share of the compute and is caught only when a drawn audit recomputes a
skipped segment. The chance is exact (checked against the real ``audit_segments``), and at the
default parameters no segment cheater out-earns honest work."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
from typer.testing import CliRunner

from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.economics import (
    TRAINING_SEGMENTS,
    TRAINING_STRATEGIES,
    MarketParams,
    SegmentCheat,
    junk_expected_value,
    segment_cheater,
    segment_detection,
    simulate_market,
    strategy_named,
)
from meshcompute.core.payout import split_reward
from meshcompute.core.training import DEFAULT_AUDITED_SEGMENTS, audit_segments, validate_plan
from meshcompute.errors import BadInput
from meshcompute.mesh.bench.__main__ import render_sim
from meshcompute.mesh.bench.sim import run_sim

DEFAULTS = MarketParams()
SEEDS = 3_000


def _plan(segments: int):
    return validate_plan({"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 4 * segments,
                          "batch_size": 2, "seed": 7, "checkpoint_every": 4})


def _within(freq: float, p: Fraction, draws: int) -> bool:
    if p in (0, 1):
        return freq == p  # never / always: no sampling error allowed
    return abs(freq - float(p)) <= 5 * math.sqrt(float(p * (1 - p)) / draws)


@pytest.fixture(scope="module")
def market() -> dict:
    return simulate_market(
        DEFAULTS, (strategy_named("honest"), strategy_named("always_cheat"), *TRAINING_STRATEGIES),
        jobs=10_000, providers=10, seed=20_240_601)


def test_segment_detection_matches_a_count_over_audit_segments() -> None:
    """Every cheated set of every small plan, for 1 to 4 audited segments: the closed form is
    the share of real audit draws that recompute a cheated segment."""
    for segments in range(1, 7):
        plan = _plan(segments)
        for audited in range(1, 5):
            draws = [frozenset(audit_segments(plan, f"s{i}".encode(), audited))
                     for i in range(SEEDS)]
            assert all(segments - 1 in d and len(d) == min(audited, segments) for d in draws)
            for size in range(1, segments + 1):
                for cheated in itertools.combinations(range(segments), size):
                    hits = sum(1 for d in draws if not d.isdisjoint(cheated))
                    exact = segment_detection(segments, cheated, audited)
                    assert _within(hits / SEEDS, exact, SEEDS), (segments, audited, cheated)


def test_segment_cheat_draws_use_audit_segments_at_the_simulated_size() -> None:
    for strategy in TRAINING_STRATEGIES:
        cheat = strategy.segment_cheat
        assert cheat is not None
        hits = sum(cheat.drawn(f"x{i}".encode()) for i in range(SEEDS))
        assert _within(hits / SEEDS, cheat.detection, SEEDS), strategy.name


def test_cheater_avoids_the_last_segment_and_detection_outgrows_the_saving() -> None:
    n = TRAINING_SEGMENTS
    assert DEFAULT_AUDITED_SEGMENTS == 2  # the figures below are for one drawn segment
    cheated = [len(s.segment_cheat.cheated) for s in TRAINING_STRATEGIES]
    assert cheated == [1, n // 4, n // 2, n - 1, n]
    for strategy in TRAINING_STRATEGIES:
        cheat = strategy.segment_cheat
        m = len(cheat.cheated)
        assert (n - 1 in cheat.cheated) == (m == n)  # the last only when it skips them all
        assert cheat.detection == (1 if m == n else Fraction(m, n - 1))
        assert cheat.detection >= cheat.saved_share == Fraction(m, n)
        with_last = frozenset(range(n - m, n))
        assert cheat.detection <= segment_detection(n, with_last)


def test_no_segment_cheater_out_earns_honest_work_at_the_defaults(market: dict) -> None:
    honest = market["honest"].profit_per_job
    for strategy in TRAINING_STRATEGIES:
        result = market[strategy.name]
        assert result.junk == result.jobs and result.caught > 0, strategy.name
        assert result.profit_per_job < honest, strategy.name
        assert result.gain_vs_honest < 0, strategy.name
        assert result.profit_per_job + 3 * result.profit_per_job_stderr < honest, strategy.name
        share = result.segment_audits_drawn / result.segment_audits
        assert _within(share, strategy.segment_cheat.detection, result.segment_audits)
    gains = [market[s.name].profit_per_job - honest for s in TRAINING_STRATEGIES]
    assert gains[:4] == sorted(gains[:4], reverse=True)  # more skipped, more lost


def test_skipping_every_segment_is_full_junk(market: dict) -> None:
    n = TRAINING_SEGMENTS
    every = market[f"segment_cheat_{n}_of_{n}"].to_json()
    assert every == market["always_cheat"].to_json()
    # one drawn segment besides the last: all but the last is caught at every detecting audit
    assert market[f"segment_cheat_{n - 1}_of_{n}"].caught == market["always_cheat"].caught


def test_expected_gain_is_negative_at_every_rate_and_scales_with_the_share() -> None:
    for reward in (10, 37, 100, 160, 555, 1_000):
        pay, _ = split_reward(reward, DEFAULTS.fee_bps)
        honest = pay - DEFAULTS.compute_cost(reward)
        for record in ((0, 0), (1_000, 200), (10**9, 10**8)):
            bps = audit_bps(reward=reward, collateral=DEFAULTS.collateral(reward),
                            free_stake=DEFAULTS.initial_stake, completed=record[0],
                            audits_passed=record[1], slashed=0, min_bps=DEFAULTS.min_audit_bps)
            gains = {len(s.segment_cheat.cheated): junk_expected_value(
                DEFAULTS, reward=reward, bps=bps, segment_cheat=s.segment_cheat) - honest
                for s in TRAINING_STRATEGIES}
            assert all(g < 0 for g in gains.values()), (reward, record, gains)
            if DEFAULTS.compute_cost(reward) % TRAINING_SEGMENTS == 0:  # no rounding
                full = gains[TRAINING_SEGMENTS]
                for m, g in gains.items():
                    assert g <= m / TRAINING_SEGMENTS * full + 1e-9, (reward, m)


def test_without_detection_a_segment_cheater_would_pay() -> None:
    """The tests have teeth: with nothing caught, skipping segments pays."""
    one = strategy_named(f"segment_cheat_1_of_{TRAINING_SEGMENTS}")
    blind = simulate_market(MarketParams(detection_bps=0), (strategy_named("honest"), one),
                            jobs=2_000, seed=5)
    assert blind[one.name].caught == 0
    assert blind[one.name].profit_per_job > blind["honest"].profit_per_job


def test_auditing_only_the_last_segment_would_let_a_segment_cheater_profit() -> None:
    """Why an audit recomputes a drawn segment besides the last: without it, a worker that
    skips every segment but the last is never caught."""
    cheater = segment_cheater(TRAINING_SEGMENTS - 1, audited=1)
    assert cheater.segment_cheat.detection == 0
    results = simulate_market(DEFAULTS, (strategy_named("honest"), cheater), jobs=2_000, seed=5)
    assert results[cheater.name].caught == 0
    assert results[cheater.name].audited > 0
    assert results[cheater.name].profit_per_job > results["honest"].profit_per_job


def test_segment_strategies_refuse_bad_input() -> None:
    with pytest.raises(BadInput):
        segment_cheater(0)
    with pytest.raises(BadInput):
        segment_cheater(TRAINING_SEGMENTS + 1)
    with pytest.raises(BadInput):
        segment_detection(4, [4])
    with pytest.raises(BadInput):
        segment_detection(0, [])
    with pytest.raises(BadInput):
        SegmentCheat(4, frozenset())
    assert segment_detection(4, []) == 0


def test_sim_report_bench_section_and_cli_show_the_training_strategies() -> None:
    report = run_sim(jobs=5_000, seed=11, trials=50)
    training = report["training"]
    assert training["segments"] == TRAINING_SEGMENTS
    assert set(training["strategies"]) == {s.name for s in TRAINING_STRATEGIES}
    assert report["training_strategies_losing"] == report["training_strategies"] == 5
    assert report["training_strategies_not_losing"] == []
    one = training["strategies"][f"segment_cheat_1_of_{TRAINING_SEGMENTS}"]
    assert one["p_audit_draws_cheated_segment_exact"] == f"1/{TRAINING_SEGMENTS - 1}"
    assert one["profit_per_job_vs_honest"] < 0 and one["loses_to_honest"]
    assert all(v < 0 for v in one["expected_gain_vs_honest_reward_100"].values())
    section = "\n".join(render_sim(report))
    assert "| training strategy |" in section and "Training strategies that lose" in section

    from meshcompute.mesh.cli.main import app

    out = CliRunner().invoke(app, ["sim", "--jobs", "500", "--trials", "10", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["training"]["segments"] == TRAINING_SEGMENTS
    table = CliRunner().invoke(app, ["sim", "--jobs", "500", "--trials", "10"])
    assert table.exit_code == 0 and "training jobs" in table.output
    assert f"segment_cheat_1_of_{TRAINING_SEGMENTS}" in table.output
