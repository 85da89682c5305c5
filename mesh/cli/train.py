"""``mesh train``: a training run across machines (:meth:`meshcompute.client.Client.train`).

    mesh train model.pt2 --data data.safetensors --workers 4 --rounds 5 \\
        --steps-per-round 16 --batch-size 16 --optimizer '{"name": "adamw", "lr": 3e-3}' \\
        --run-dir runs/first --pay 1

The program is the model's forward pass with its loss (as for ``mesh job submit --train``);
the data a safetensors file of tensors ``args.0``, ``args.1``, ... with one row per sample.
The run lives in ``--run-dir``: the same command run again resumes it. A progress bar shows
rounds, the shards back, the loss and the credits spent; at the end ``weights.safetensors`` and
``loss.png`` are in the run's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from meshcompute.errors import BadInput

console = Console(stderr=True)


def train(
    program: Annotated[Path, typer.Argument(help="The model with its loss, a .pt2 archive.")],
    data: Annotated[Path, typer.Option("--data", help="The dataset: safetensors args.0, ...")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run's folder (resumed).")],
    workers: Annotated[int, typer.Option(help="Shards, one job each per round.")] = 4,
    rounds: Annotated[int, typer.Option(help="Rounds of training.")] = 5,
    steps_per_round: Annotated[int, typer.Option(help="Inner steps per job.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Rows per inner step.")] = 16,
    optimizer: Annotated[str, typer.Option(help="The inner optimizer, JSON.")] = (
        '{"name": "adamw", "lr": 0.003}'),
    outer_lr: Annotated[float, typer.Option(help="The outer Nesterov step's rate.")] = 0.7,
    outer_momentum: Annotated[float, typer.Option(help="Its momentum.")] = 0.9,
    pay: Annotated[str, typer.Option(help="MESH per job.")] = "1",
    round_timeout: Annotated[float, typer.Option(
        help="Seconds a round waits for its shards (each job's deadline).")] = 1800.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train a model across workers in rounds, combining their results (DiLoCo style)."""
    from meshcompute.client import Client
    from meshcompute.execution.programs import load_tensors
    from meshcompute.units import TOKEN

    try:
        inner = json.loads(optimizer)
    except ValueError as exc:
        raise BadInput(f"--optimizer: not JSON ({exc})") from None
    if not program.is_file() or not data.is_file():
        raise BadInput(f"{program if not program.is_file() else data}: no such file")
    tensors = load_tensors(data.read_bytes(), "args")
    client = Client.from_wallet()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, disable=as_json) as bar:
        task = bar.add_task("rounds", total=rounds, info="")

        def show(state: dict[str, Any]) -> None:
            loss = state.get("loss")
            bar.update(task, completed=min(state["round"], rounds), info=(
                f"round {state['round'] + 1 if state['round'] < rounds else rounds}/{rounds}  "
                f"shards back {state['returned']}/{state['shards']}  "
                f"loss {loss:.4f}  spent {state['spent_wei'] / TOKEN:g} MESH"
                if loss is not None else ""))

        result = client.train(program.read_bytes(), tensors, optimizer=inner, workers=workers,
                              rounds=rounds, steps_per_round=steps_per_round,
                              batch_size=batch_size, run_dir=run_dir, outer_lr=outer_lr,
                              outer_momentum=outer_momentum, pay=pay,
                              round_timeout_s=round_timeout, progress=show)
    summary = {
        "rounds": len(result.rounds), "losses": result.losses,
        "jobs": sum(len(r.jobs) for r in result.rounds),
        "skipped": {r.round: r.skipped for r in result.rounds if r.skipped},
        "spent_mesh": result.spent_wei / TOKEN, "weights": str(result.weights_path),
        "curve": str(result.curve_path) if result.curve_path else None,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for report in result.rounds:
        note = f"  (left out: {report.skipped})" if report.skipped else ""
        console.print(f"round {report.round + 1}: loss {report.loss:.4f}, "
                      f"{len(report.jobs)} jobs{note}")
    console.print(f"weights: {result.weights_path}")
    if result.curve_path:
        console.print(f"loss curve: {result.curve_path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
