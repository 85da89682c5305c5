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
    from meshcompute.bench.gas import run_gas_bench

    emit(run_gas_bench(batch), as_json)


