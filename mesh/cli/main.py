"""The ``mesh`` command line: one CLI for every role.

Each role's commands live in their own module under :mod:`meshcompute.mesh.cli` and are mounted
here; heavy imports (web3, torch, FastAPI) happen inside the commands, so ``mesh --help`` is fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from meshcompute.errors import MeshError

app = typer.Typer(no_args_is_help=True, help="meshcompute: a verified compute marketplace.")
console = Console(stderr=True)

#: (module under meshcompute.mesh.cli, command group name); each module exposes ``app``.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("chain", "chain"),
    ("bench", "bench"),
    ("market", "market"),
    ("job", "job"),
    ("worker", "worker"),
    ("wallet", "wallet"),
    ("provider", "provider"),
    ("sim", "sim"),
    ("verifier", "verifier"),
    ("canary", "canary"),
)

for _module, _name in SUBCOMMANDS:
    app.add_typer(importlib.import_module(f"meshcompute.mesh.cli.{_module}").app, name=_name)
app.command("verify")(importlib.import_module("meshcompute.mesh.cli.verifier").verify)
importlib.import_module("meshcompute.mesh.cli.earnings").register(app)  # `mesh earnings`, `mesh withdraw`
importlib.import_module("meshcompute.mesh.cli.doctor").register(app)  # `mesh doctor`
importlib.import_module("meshcompute.mesh.cli.train").register(app)  # `mesh train`


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(
        "--keep", help="Leave the demo's network running afterwards and print the "
        "dashboard's address; Ctrl-C stops every process.")] = False,
) -> None:
    """Run the marketplace on one machine and reconcile every balance with the chain."""
    from meshcompute.mesh.demo import hold_until_interrupted, run_demo

    console = Console()
    run_demo(console, keep=(lambda stack, pages: hold_until_interrupted(console, stack))
             if keep else None)



def main() -> None:
    """Entry point: readable one-line errors unless --debug."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except MeshError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the exception holds
        console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
