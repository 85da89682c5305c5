"""``mesh bench``: every benchmark prints one JSON object with ``--json``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON figures).")
bench_app = app
console = Console(stderr=True)


def emit(result: dict, as_json: bool) -> None:
    """Print a benchmark result: one JSON line, or a readable key/value listing."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        console.print(f"{key:<40} {value}")


@bench_app.command("gas")
def bench_gas(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch: Annotated[int, typer.Option(help="Shards in the batched lifecycle.")] = 100,
) -> None:
    """Gas per job for full lifecycles on anvil (single and batched)."""
    from meshcompute.mesh.bench.gas import run_gas_bench

    emit(run_gas_bench(batch), as_json)




@bench_app.command("sandbox")
def bench_sandbox(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rows: Annotated[int, typer.Option(help="Batch rows of the MLP job.")] = 32_768,
    threads: Annotated[int, typer.Option(help="Torch threads (bare and in the job).")] = 2,
) -> None:
    """Job sandbox: startup overhead, and run_job (cold and warm) vs. bare torch time."""
    from meshcompute.mesh.bench.sandbox import run_sandbox_bench

    emit(run_sandbox_bench(rows=rows, threads=threads), as_json)


@bench_app.command("overhead")
def bench_overhead(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rows: Annotated[int, typer.Option(help="Batch rows (sets the bare compute time).")] = 16_384,
) -> None:
    """Post -> output through the market, one worker, vs. the bare torch time."""
    from meshcompute.mesh.bench.stack_bench import run_overhead_bench

    emit(run_overhead_bench(rows=rows), as_json)


@bench_app.command("e2e")
def bench_e2e(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 4,
    duration: Annotated[float, typer.Option(help="Seconds of posting.")] = 30.0,
) -> None:
    """Settled jobs per second and post->final latency on the whole process stack."""
    from meshcompute.mesh.bench.stack_bench import run_e2e_bench

    emit(run_e2e_bench(workers=workers, duration_s=duration), as_json)


@bench_app.command("sustained")
def bench_sustained(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    windows: Annotated[int, typer.Option(min=1, help="Windows measured, one after another.")] = 8,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of each window.")] = 25.0,
    outstanding: Annotated[int, typer.Option(
        min=50, help="Jobs the client keeps posted and not final.")] = 600,
) -> None:
    """The e2e stack held under load for minutes: jobs paid, audits drawn and judged, and a
    record's read cost, window by window."""
    from meshcompute.mesh.bench.sustained import run_sustained_bench

    emit(run_sustained_bench(windows=windows, window_s=duration, outstanding=outstanding),
         as_json)


@bench_app.command("dashboard")
def bench_dashboard(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="Jobs posted and indexed.")] = 100_000,
    provider_jobs: Annotated[int, typer.Option(
        min=1, help="Of them, jobs the measured provider takes and is paid for.")] = 2_000,
    loads: Annotated[int, typer.Option(min=1, help="Browser loads of each page.")] = 20,
    dashboards: Annotated[int, typer.Option(
        min=0, help="Open dashboards during the settlement run (0: skip that part).")] = 10,
    duration: Annotated[float, typer.Option(help="Seconds of each settlement window.")] = 30.0,
    pairs: Annotated[int, typer.Option(min=1, help="Settlement windows with dashboards, on one warm stack (A B A ... A; each against the two around it).")] = 4,
    outstanding: Annotated[int, typer.Option(
        min=50, help="Jobs the settlement run's client keeps posted and not final.")] = 600,
    pages: Annotated[bool, typer.Option(
        "--pages/--no-pages", help="Measure the pages (--no-pages: settlement only).")] = True,
) -> None:
    """Dashboard pages drawn in Chromium with many jobs indexed, the market's CPU per page
    view, and settlement with dashboards open against without."""
    from meshcompute.mesh.bench.dashboard import run_dashboard_bench

    emit(run_dashboard_bench(jobs=jobs, provider_jobs=provider_jobs, loads=loads,
                             dashboards=dashboards, duration_s=duration, pairs=pairs,
                             outstanding=outstanding, pages=pages),
         as_json)


@bench_app.command("match")
def bench_match(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker offers in the fleet.")] = 10_000,
    jobs: Annotated[int, typer.Option(min=1, help="Queued jobs in the backlog.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic market.")] = 0,
    scenario: Annotated[str, typer.Option(
        help="realistic (a plausible market mix) or adversarial (defeats the shortcuts).")
    ] = "realistic",
) -> None:
    """Matching in the pure core: time per assignment for a backlog against a fleet."""
    from meshcompute.mesh.bench.match import run_match_bench

    emit(run_match_bench(workers, jobs, seed, scenario), as_json)


@bench_app.command("abuse")
def bench_abuse(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    duration: Annotated[float, typer.Option(min=5, help="Seconds of each phase.")] = 20.0,
    attackers: Annotated[int, typer.Option(min=1, help="Attacker threads.")] = 4,
    rate: Annotated[list[float] | None, typer.Option(
        min=1, help="Requests a second the attackers offer in one phase (repeat for more "
                    "phases; a flood as fast as they can always follows).")] = None,
    api_workers: Annotated[int, typer.Option(
        min=1, help="Processes of the market API (MESH_MARKET_API_WORKERS).")] = 2,
) -> None:
    """The market under attack (oversized bodies, blob floods from fresh keys, group-output
    downloads, replays, malformed JSON) while an honest client and workers run jobs."""
    from meshcompute.mesh.bench.abuse import run_abuse_bench

    emit(run_abuse_bench(duration_s=duration, attackers=attackers,
                         rates=tuple(rate) if rate else (200.0, 400.0),
                         api_workers=api_workers), as_json)


@bench_app.command("train-verify")
def bench_train_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Training jobs checked by segments: honest drift, cheats caught, the verifier's cost."""
    from meshcompute.mesh.bench.train_verify import run_train_verify_bench

    emit(run_train_verify_bench(), as_json)


@bench_app.command("train")
def bench_train(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """A training run across four workers of the dev stack against one machine's."""
    from meshcompute.mesh.bench.train import run_train_bench

    emit(run_train_bench(), as_json)


@bench_app.command("yield")
def bench_yield(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cycles: Annotated[int, typer.Option(min=1, help="Times the owner comes and goes.")] = 6,
) -> None:
    """A worker that yields to its owner: pause and resume latency, the owner's CPU share,
    a hand-back that loses no step."""
    from meshcompute.mesh.bench.yielding import run_yield_bench

    emit(run_yield_bench(cycles=cycles), as_json)


@bench_app.command("cuda")
def bench_cuda(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of each job process.")] = 4,
    verify: Annotated[bool, typer.Option(
        help="Also run the verification bench and the grief set with a CUDA worker.")] = True,
    inference: Annotated[bool, typer.Option(
        help="Run the inference part (each model family's job on cuda and cpu).")] = True,
    training: Annotated[bool, typer.Option(
        help="Run the training part (a GPU training run, every segment audited on the CPU).")
    ] = True,
) -> None:
    """The worker's CUDA jobs against the CPU verifier's recomputation (needs a GPU)."""
    from meshcompute.mesh.bench.cuda import run_cuda_bench

    emit(run_cuda_bench(threads=threads, verify=verify, inference=inference,
                        training=training), as_json)


@bench_app.command("verify")
def bench_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    policy: Annotated[
        str | None, typer.Option(help="Tolerance policy, e.g. allclose:rtol=1e-4,atol=1e-5.")
    ] = None,
    cases: Annotated[int | None, typer.Option(min=1, help="Use only the first N cases.")] = None,
) -> None:
    """False accusations of honest recomputations and detection of cheats, per policy."""
    from meshcompute.core.tolerance import parse_policy
    from meshcompute.mesh.bench.verify import run_verify_bench

    chosen = parse_policy(policy) if policy else None
    emit(run_verify_bench(cases=cases, policy=chosen), as_json)
