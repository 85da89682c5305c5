"""``mesh sim``: does cheating pay at the default parameters?"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Simulate honest and cheating providers (economics of audits).")
sim_app = app


@sim_app.callback(invoke_without_command=True)
def sim(
    jobs: Annotated[int, typer.Option(min=1, help="Jobs per strategy.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (the run is reproducible).")] = 0,
    trials: Annotated[int, typer.Option(min=1, help="Lifetimes per catch probability.")] = 1_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Expected profit per job of each strategy and the chance of catching a cheater."""
    from meshcompute.mesh.bench.sim import CATCH_WITHIN, run_sim

    result = run_sim(jobs, seed, trials=trials)
    if as_json:
        print(json.dumps(result))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    table = Table(title=f"{jobs:,} jobs per strategy, seed {seed}, audit rates from audit_bps")
    table.add_column("strategy")
    table.add_column("profit/job", justify="right")
    table.add_column("vs honest", justify="right")
    table.add_column("per junk", justify="right")
    table.add_column("junk", justify="right")
    table.add_column("caught", justify="right")
    for n in CATCH_WITHIN:
        table.add_column(f"P(caught)\n<={n} jobs", justify="right")
    for name, row in result["strategies"].items():
        catch = row.get("p_caught_within_jobs") or {}
        per_junk = row["profit_per_junk_result"]
        table.add_row(
            name,
            f"{row['profit_per_job']:.2f}",
            f"{row['profit_per_job_vs_honest']:+.2f}",
            "-" if per_junk is None else f"{per_junk:.2f}",
            str(row["junk_results"]),
            str(row["caught"]),
            *[f"{catch[str(n)]:.3f}" if str(n) in catch else "-" for n in CATCH_WITHIN],
        )
    console.print(table)
    training = result.get("training")
    if training:
        console.print(_training_table(training))
    rates = result["audit_bps_reward_100"]
    console.print(
        f"audit rate for a reward-100 job: new worker {rates['new_worker']} bps, "
        f"record of 1000 jobs {rates['after_1000_jobs_200_audits']} bps, "
        f"ever slashed {rates['ever_slashed']} bps"
    )
    verdict = "negative" if result["cheating_has_negative_ev"] else "NOT negative"
    console.print(f"cheating has {verdict} expected value for every strategy")
    roles = result.get("roles") or {}
    if roles:
        console.print()
        console.print(_roles_table(roles))
        console.print(_roles_summary(result))


def _training_table(training: dict) -> Table:
    """Workers that skip some segments of every training job: the share of compute saved, the
    exact chance that a drawn audit recomputes a skipped segment (and how often the sim's
    audits did), and the gain over honest work on the same jobs."""
    from meshcompute.mesh.bench.sim import CATCH_WITHIN

    table = Table(title=(f"training jobs: {training['segments']} segments, "
                         f"{training['audited_segments']} recomputed per audit"))
    table.add_column("strategy", no_wrap=True)
    table.add_column("saves", justify="right")
    table.add_column("P(audit\ndraws a\nskipped)", justify="right")
    table.add_column("in\nsim", justify="right")
    table.add_column("profit\n/job", justify="right")
    table.add_column("vs\nhonest", justify="right")
    for n in CATCH_WITHIN:
        table.add_column(f"P(caught\n<={n}\njobs)", justify="right")
    for name, row in training["strategies"].items():
        catch = row.get("p_caught_within_jobs") or {}
        hit = row.get("audit_draws_hit_in_sim")
        vs = f"{row['profit_per_job_vs_honest']:+.2f}"
        table.add_row(
            name,
            f"{row['segments_cheated']}/{training['segments']}",
            f"{row['p_audit_draws_cheated_segment_exact']}",
            "-" if hit is None else f"{hit:.3f}",
            f"{row['profit_per_job']:.2f}",
            vs if row["loses_to_honest"] else f"[bold red]{vs}[/]",
            *[f"{catch[str(n)]:.3f}" if str(n) in catch else "-" for n in CATCH_WITHIN],
        )
    return table


def _roles_table(roles: dict) -> Table:
    """The other roles (client, market operator, verifiers lazy and silent): what one gains
    per job or audit by deviating instead of acting honestly, and whether that is deterred. A
    silent verifier's row adds the case where the escalated seat is silent too."""
    table = Table(title="other roles: gain from deviating instead of acting honestly")
    table.add_column("role")
    table.add_column("deviation", ratio=2)
    table.add_column("per")
    table.add_column("gain vs honest", justify="right", no_wrap=True)
    table.add_column("deterred")
    table.add_column("note", ratio=3)
    for name, row in roles.items():
        stderr = row.get("gain_vs_honest_stderr")
        gain = f"{row['gain_vs_honest']:+.2f}" + ("" if stderr is None else f" ±{stderr:.2f}")
        all_silent = row.get("if_escalation_also_silent")
        if all_silent:
            gain += f"\nall silent: {all_silent['gain_vs_honest']:+.2f}"
        who = row.get("role")
        table.add_row(
            name if who is None else f"{name}\n({who})",
            row.get("description", ""),
            row["per"],
            gain,
            "yes" if row["deterred"] else "[bold red]NO[/]",
            row.get("note") or "",
        )
    return table


def _roles_summary(result: dict) -> str:
    """``3 of 4 other roles lose by deviating; not deterred: lazy_verifier (no mechanism
    built yet)``."""
    roles = result["roles"]
    losing = result.get("role_strategies_losing", sum(1 for r in roles.values() if r["deterred"]))
    total = result.get("role_strategies", len(roles))
    line = f"{losing} of {total} other roles lose by deviating"
    not_losing = result.get("role_strategies_not_losing",
                            [n for n, r in roles.items() if not r["deterred"]])
    if not_losing:
        named = [
            f"{name} (no mechanism built yet)"
            if roles.get(name, {}).get("mechanism_built") is False else name
            for name in not_losing
        ]
        line += "; not deterred: " + ", ".join(named)
    return line
