"""``python -m meshcompute.mesh.bench`` (``make bench``): run every benchmark and rewrite
BENCHMARKS.md with the machine, the date and each figure.

``python -m meshcompute.mesh.bench gas match`` runs only those and keeps the other sections of the
existing file. A benchmark that fails is written down as failed (with its error) and makes the
command exit non-zero; nothing is left looking measured when it was not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = Path("BENCHMARKS.md")
GAS_TARGETS = {"per_job_gas_single": 200_000, "per_job_gas_batched_100": 60_000}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, "
            f"Python {platform.python_version()}")


def _json_block(data: Any) -> list[str]:
    return ["```json", json.dumps(data, indent=1, default=str), "```", ""]


def render_gas(gas: dict[str, Any]) -> list[str]:
    lines = [
        "Full lifecycle = post + assign + commit + finalize. Steady state: the accounts already",
        "hold balances, as in a running market. Single uses `postJob`, `assignAndCommit` (one",
        "ticket, one id) and `finalize`; batched uses `postJobs`, one `assignAndCommit` ticket for",
        "all shards and `finalizeBatch`, divided by the shard count.",
        "",
        "| figure | gas | target |",
        "|---|---:|---:|",
    ]
    for key, value in gas.items():
        if isinstance(value, int):
            target = GAS_TARGETS.get(key)
            verdict = "" if target is None else (
                f"<= {target:,} ({'met' if value <= target else 'missed'})")
            lines.append(f"| `{key}` | {value:,} | {verdict} |")
    lines += ["", "Breakdown (gas per transaction):", ""]
    return lines + _json_block({k: v for k, v in gas.items() if isinstance(v, dict)})


def render_plain(result: dict[str, Any]) -> list[str]:
    lines = ["| figure | value |", "|---|---:|"]
    nested = {}
    for key, value in result.items():
        if isinstance(value, dict | list):
            nested[key] = value
        else:
            lines.append(f"| `{key}` | {value} |")
    lines.append("")
    return lines + (_json_block(nested) if nested else [])


def render_sim(sim: dict[str, Any]) -> list[str]:
    """Two tables (the workers' strategies, then the other roles'), then the full JSON."""
    lines = [
        (f"{sim.get('jobs_per_strategy')} jobs per strategy; profit per job in credits. A "
         "strategy deters when its gain over honest play of the same role is negative."),
        "",
        "| worker strategy | profit/job | gain vs honest | profit per junk result |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in sim.get("strategies", {}).items():
        lines.append(f"| `{name}` | {entry.get('profit_per_job')} | "
                     f"{entry.get('profit_per_job_vs_honest')} | "
                     f"{entry.get('profit_per_junk_result')} |")
    losing = (f"Cheating worker strategies that lose: {sim.get('cheating_strategies_losing')}"
              f" of {sim.get('cheating_strategies')}.")
    lines += ["", losing, "", *_render_training(sim.get("training")),
              "| other role | per | gain vs honest (± stderr) | deterred | note |",
              "|---|---|---:|---|---|"]
    for name, entry in sim.get("roles", {}).items():
        note = _role_figures(entry) + str(entry.get("note", "")).replace("|", "/")
        lines.append(f"| `{name}` ({entry.get('role')}) | {entry.get('per')} | "
                     f"{entry.get('gain_vs_honest')} (± {entry.get('gain_vs_honest_stderr')}) | "
                     f"{entry.get('deterred')} | {note} |")
    roles = (f"Other roles that lose by deviating: {sim.get('role_strategies_losing')} of "
             f"{sim.get('role_strategies')}; not deterred: "
             f"{', '.join(sim.get('role_strategies_not_losing', [])) or 'none'}.")
    lines += ["", roles, "", "Full output:", ""]
    return lines + _json_block(sim)


def _role_figures(entry: dict[str, Any]) -> str:
    """The breakevens a role's row leads with, where the sim reports them."""
    figures = []
    if "breakeven_coalition_share" in entry:
        figures.append(f"coalition share {entry.get('coalition_share')}; breakeven share "
                       f"{entry['breakeven_coalition_share']}")
    if "breakeven_lazy_share" in entry:
        half = entry.get("if_half_the_weight_lazy") or {}
        figures.append(f"breakeven lazy share {entry['breakeven_lazy_share']}; with half the "
                       f"weight lazy it gains {half.get('gain_vs_honest_per_audit')} (± "
                       f"{half.get('gain_vs_honest_stderr')}) per audit")
    return "".join(f"{f}. " for f in figures)


def _render_training(training: dict[str, Any] | None) -> list[str]:
    """The segment cheaters on training jobs: compute saved, exact chance that an audit
    recomputes a skipped segment (and the sim's share), gain over honest work."""
    if not training:
        return []
    lines = [
        (f"Training jobs of {training.get('segments')} segments, {training.get('audited_segments')}"
         " recomputed per audit (the last and one drawn): a worker skips some segments of every"
         " job and computes the rest from its own checkpoints; it is caught only when the audit"
         " draws a skipped segment."),
        "",
        ("| training strategy | compute saved | P(audit draws a skipped segment) | drawn in sim |"
         " profit/job | gain vs honest |"),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in training.get("strategies", {}).items():
        lines.append(f"| `{name}` | {entry.get('compute_saved')} | "
                     f"{entry.get('p_audit_draws_cheated_segment_exact')} | "
                     f"{entry.get('audit_draws_hit_in_sim')} | {entry.get('profit_per_job')} | "
                     f"{entry.get('profit_per_job_vs_honest')} |")
    losing = sum(1 for e in training.get("strategies", {}).values() if e.get("loses_to_honest"))
    return [*lines, "", (f"Training strategies that lose to honest work: {losing} of "
                         f"{len(training.get('strategies', {}))}."), ""]


def _gas() -> dict[str, Any]:
    from meshcompute.mesh.bench.gas import run_gas_bench

    return run_gas_bench()


def _match() -> dict[str, Any]:
    from meshcompute.mesh.bench.match import run_match_bench

    return run_match_bench()


def _verify() -> dict[str, Any]:
    from meshcompute.mesh.bench.verify import run_verify_bench

    return run_verify_bench()


def _sim() -> dict[str, Any]:
    from meshcompute.mesh.bench.sim import run_sim

    return run_sim()


def _overhead() -> dict[str, Any]:
    from meshcompute.mesh.bench.stack_bench import run_overhead_bench

    return run_overhead_bench()


def _e2e() -> dict[str, Any]:
    from meshcompute.mesh.bench.stack_bench import run_e2e_bench

    return run_e2e_bench()


def _dashboard() -> dict[str, Any]:
    from meshcompute.mesh.bench.dashboard import run_dashboard_bench

    return run_dashboard_bench()


def _abuse() -> dict[str, Any]:
    from meshcompute.mesh.bench.abuse import run_abuse_bench

    return run_abuse_bench()


def _train_verify() -> dict[str, Any]:
    from meshcompute.mesh.bench.train_verify import run_train_verify_bench

    return run_train_verify_bench()


def _train() -> dict[str, Any]:
    from meshcompute.mesh.bench.train import run_train_bench

    return run_train_bench()


def render_train(result: dict[str, Any]) -> list[str]:
    """The figures, then the loss curve (the picture the run drew), then the full JSON."""
    lines = [
        ("`final_loss_*` is the loss over the held-out half of the sources, `train_loss_*` over "
         "the half the run trained on; `*_local` is one machine trained here on the same half "
         "for the same samples seen (one run of rounds x workers x steps_per_round steps, the "
         "same inner optimizer and batch). Each round's four jobs start from the same global "
         "parameters, so the distributed run takes a quarter of the sequential steps: it "
         "trails on the training half and nearly matches held out. The outer momentum is 0.5, "
         "not DiLoCo's 0.9, which did a little worse held out (2.79 against 2.72) in a trial of "
         "the same run on a stand-in market. "
         "`mesh_spent` is each job's reward and audit fee (every job of a new worker is "
         "audited)."),
        "",
        *render_plain({k: v for k, v in result.items() if k != "curve"}),
    ]
    if result.get("curve"):
        lines += ["", f"![loss per round of the distributed run]({result['curve']})", ""]
    return lines


def _yield() -> dict[str, Any]:
    from meshcompute.mesh.bench.yielding import run_yield_bench

    return run_yield_bench()


def render_yield(result: dict[str, Any]) -> list[str]:
    """How the figures are taken, then the figures."""
    return [("The owner is a CPU-bound shell loop run as `nobody`, on for `owner_on_s` and off for `owner_off_s`, `cycles` times, beside the whole dev stack on the same machine (hence `--idle-load 0.7`: the stack's own services are other programs too). Latencies are read from the job processes' states in `/proc` every 10 ms, not from the worker (with `cycles` samples, the p95 is the slowest). The owner's share is its CPU seconds per second while it ran beside the worker (the freeze included), over the same with no job running. Then the owner stays past the lease: the worker hands the job back stopped after its step under way (`steps_run_by_frozen_worker`), is paid for those steps by a job reserved for it (`steps_paid_to_frozen_worker`), and the second worker finishes the rest; `steps_match_local`: the losses and final state equal a local run's bit for bit."), "", *render_plain(result)]


def _cuda() -> dict[str, Any]:
    from meshcompute.mesh.bench.cuda import run_cuda_bench

    return run_cuda_bench()


#: name -> (section title, runner, renderer)
SECTIONS: dict[str, tuple[str, Callable[[], dict[str, Any]], Callable[[dict], list[str]]]] = {
    "gas": (("Gas per job (`mesh bench gas --json`, anvil 1.7.1, solc 0.8.37, cancun, via IR, "
             "optimizer 500)"), _gas, render_gas),
    "match": (("Matching in the pure core (`mesh bench match --json`; target median <= 1 ms "
              "per assignment)"), _match, render_plain),
    "verify": ("Verification: false positives and detection (`mesh bench verify --json`)",
               _verify, render_plain),
    "sim": (("Economics: honest vs. cheating providers, clients, operators and verifiers "
             "(`mesh sim --json`)"), _sim, render_sim),
    "overhead": (("Worker overhead: post -> output vs. bare torch (`mesh bench overhead --json`; "
                 "target e2e <= 1.2 x bare + 1 s)"), _overhead, render_plain),
    "e2e": (("End to end on the process stack (`mesh bench e2e --json`; target >= 50 settled "
            "jobs/s)"), _e2e, render_plain),
    "abuse": (("The market under attack (`mesh bench abuse --json`; targets: no 5xx, RSS < 2x "
               "idle, attackers within quota, honest p95 within 2x)"), _abuse, render_plain),
    "train_verify": (("Training verification by segments (`mesh bench train-verify --json`; "
                      "targets: no false positive, every cheat caught, verify_cost_ratio <= "
                      "0.25)"), _train_verify, render_plain),
    "train": (("A training run across machines (`mesh bench train --json`; four workers on the "
               "dev stack, five rounds; target loss_ratio <= 1.10)"), _train, render_train),
    "yield": (("A worker that yields to its owner (`mesh bench yield --json`; targets: pause "
               "p95 <= 2 s, owner CPU share >= 0.90, at least 1 hand-off, 0 lost steps, 0 "
               "slashed)"), _yield, render_yield),
    "dashboard": (("The dashboard (`mesh bench dashboard --json`; targets: overview and provider "
                   "page p95 < 1,000 ms with 100,000 jobs indexed, settlement within 5 % with "
                   "10 dashboards open)"), _dashboard, render_plain),
    "cuda": (("On a GPU: the worker's CUDA jobs audited by a CPU verifier (`mesh bench cuda "
              "--json`; needs a CUDA device)"), _cuda, render_plain),
}
#: Run only when named: they need hardware a plain machine lacks.
ON_REQUEST = frozenset({"cuda"})


def _existing_sections() -> dict[str, str]:
    if not BENCHMARKS.exists():
        return {}
    text = BENCHMARKS.read_text()
    found = {}
    for match in re.finditer(r"<!-- section:(\w+) -->\n(.*?)<!-- /section -->", text, re.DOTALL):
        found[match.group(1)] = match.group(2)
    return found


def main(argv: list[str]) -> int:
    wanted = argv or [name for name in SECTIONS if name not in ON_REQUEST]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"unknown benchmarks: {sorted(unknown)}; choose from {list(SECTIONS)}")
        return 2
    today = dt.date.today().isoformat()
    bodies = _existing_sections()
    results: dict[str, Any] = {}
    failed = False
    for name in wanted:
        title, runner, renderer = SECTIONS[name]
        try:
            result = runner()
            results[name] = result
            lines = [f"## {title}", "", f"Measured {today} on {machine()}.", "",
                     *renderer(result)]
        except Exception as exc:  # noqa: BLE001 - recorded as a failed benchmark, then exit 1
            failed = True
            traceback.print_exc()
            lines = [f"## {title}", "", f"**Failed** on {today}: `{type(exc).__name__}: {exc}`", ""]
        bodies[name] = "\n".join(lines) + "\n"
    out = ["# Benchmarks", "",
           (f"Regenerate with `make bench` (or `python -m meshcompute.mesh.bench NAME...`). "
           f"Last run: {today}, {machine()}."), ""]
    for name in SECTIONS:
        if name in bodies:
            out += [f"<!-- section:{name} -->", bodies[name].rstrip("\n"), "<!-- /section -->", ""]
    BENCHMARKS.write_text("\n".join(out))
    print(json.dumps(results, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
