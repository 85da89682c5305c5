"""``mesh job``: submit a program with its inputs, follow it, fetch the result, reclaim.

Every submission is remembered in ``<data_dir>/submissions/<name>.json`` (its job ids and
specs; nothing secret), so ``status``/``result``/``list`` work from any later shell. The state
shown is always read from the chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshcompute.errors import BadInput, NotFound

if TYPE_CHECKING:
    from meshcompute.client import Client, Submission, SubmissionStatus

app = typer.Typer(no_args_is_help=True, help="Submit and follow jobs (as a client).")
console = Console(stderr=True)


def _store() -> Path:
    from meshcompute.settings import get_settings

    path = get_settings().data_dir / "submissions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_submission(submission: Submission) -> Path:
    path = _store() / f"{submission.name}.json"
    path.write_text(json.dumps(submission.to_json(), indent=1))
    return path


def load_submission(name: str) -> Submission:
    from meshcompute.client import Submission

    path = _store() / f"{name}.json"
    if not path.exists():
        for candidate in _store().glob("*.json"):
            data = json.loads(candidate.read_text())
            if any(name == str(a) for s in data["shards"] for a in s["attempts"]):
                path = candidate
                break
        else:
            raise NotFound(f"no submission {name!r} in {_store()}; see `mesh job list`")
    return Submission.from_json(json.loads(path.read_text()))


def _client() -> Client:
    from meshcompute.client import Client

    return Client.from_wallet()


class _Bar:
    """A rich progress bar fed with SubmissionStatus snapshots."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=total)

    def __call__(self, status: SubmissionStatus) -> None:
        done = status.counts.get("finalized", 0) if status.phase in ("running", "done") else (
            status.counts.get("uploaded", status.counts.get("posted", 0))
        )
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items()))
        self.progress.update(
            self.task, completed=done, description=f"{status.phase:<9} {counts} {status.detail}"
        )


def audit_rate(audit_bps: int | None, *, audit_all: bool = False) -> int:
    """The minimum audit rate (bps) ``mesh job submit`` posts with: ``--audit-bps`` (0..10000,
    default 0), or 10000 for ``--audit-all``, which a lower explicit ``--audit-bps`` contradicts."""
    from meshcompute.units import BPS

    if audit_bps is not None and not 0 <= audit_bps <= BPS:
        raise BadInput(f"--audit-bps must be between 0 and {BPS} (basis points; {BPS} audits "
                       f"every shard, as --audit-all does), got {audit_bps}")
    if audit_all:
        if audit_bps is not None and audit_bps < BPS:
            raise BadInput(f"--audit-all audits every shard ({BPS} bps) but --audit-bps asks "
                           f"for {audit_bps}; give one of --audit-all and --audit-bps")
        return BPS
    return 0 if audit_bps is None else audit_bps


@app.command("submit")
def submit(
    program: Annotated[Path, typer.Argument(help="The torch.export program (.pt2).", exists=True)],
    inputs: Annotated[Path, typer.Option(help="Inputs as safetensors (args.0, args.1, ...).",
                                         exists=True)],
    shards: Annotated[int, typer.Option(help="Split the batch into N jobs.")] = 1,
    pay: Annotated[str, typer.Option(help="Total reward in MESH, split over the shards.")] = "1",
    tolerance: Annotated[str, typer.Option(
        help="exact | allclose[:rtol=..,atol=..] | argmax:FRACTION | topk:K:FRACTION")] = "allclose",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    deadline: Annotated[str, typer.Option(help="Time until you may reclaim (e.g. 30m, 2h).")] = "1h",
    audit_bps: Annotated[int | None, typer.Option(
        help="Minimum audit probability per shard, basis points, 0..10000 (default 0: the "
             "market's rate for the worker applies). 10000 is --audit-all.")] = None,
    audit_all: Annotated[bool, typer.Option(
        "--audit-all",
        help="Audit every shard (--audit-bps 10000). Costs: the audit fee (a tenth of each "
             "shard's reward) is paid on every shard. Buys: no shard is accepted without a "
             "verifier's recomputation; a shard whose verdict never comes is void (escrow "
             "refunded, re-posted while --wait follows it), never paid.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the verified output.")] = True,
    out: Annotated[Path | None, typer.Option(help="Write the output safetensors here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    stability_check: Annotated[bool, typer.Option(
        "--stability-check/--no-stability-check",
        help="Before paying, run the program on shard 0 as an audit would: refuse a tolerance "
             "no honest worker can meet, warn when the program is unstable under it.")] = True,
) -> None:
    """Upload, escrow payment, and (by default) wait through running and verification."""
    from meshcompute.execution.programs import save_tensors

    min_audit_bps = audit_rate(audit_bps, audit_all=audit_all)
    client = _client()
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=as_json) as progress:
        bar = _Bar(progress, shards)
        submission = client.submit(
            program, inputs, shards=shards, pay=pay, tolerance=tolerance, device=device,
            deadline=deadline, audit_bps=min_audit_bps, progress=bar,
            check_stability=stability_check,
        )
        save_submission(submission)
        outputs = client.wait(submission, progress=bar) if wait else None
        if outputs is not None:
            save_submission(submission)  # re-posted shards changed the job ids
    result = {"name": submission.name, "job_ids": submission.job_ids, "group": submission.group}
    if outputs is not None:
        target = out or Path(f"{submission.name}.out.safetensors")
        target.write_bytes(save_tensors(outputs, prefix="out"))
        result["output"] = str(target)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"submission [bold]{submission.name}[/]: jobs {submission.job_ids}")
        if "output" in result:
            console.print(f"verified output written to {result['output']}")


@app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="Group id or job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """On-chain state of every shard of a submission."""
    submission = load_submission(name)
    client = _client()
    states = client.states(submission)
    verified = client.verification(submission)
    rows = [
        {"shard": s.index, "job_id": s.job_id, "state": states[s.job_id].name.lower(),
         "verification": verified[s.index], "attempts": s.attempts}
        for s in submission.shards
    ]
    if as_json:
        print(json.dumps({"name": submission.name, "shards": rows}))
        return
    table = Table("shard", "job", "state", "verification", "attempts")
    for row in rows:
        table.add_row(str(row["shard"]), str(row["job_id"]), row["state"],
                      row["verification"], str(row["attempts"]))
    Console().print(table)


@app.command("result")
def result(
    name: Annotated[str, typer.Argument(help="Group id or job id.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the safetensors.")] = None,
) -> None:
    """Fetch the assembled output, each shard checked against its on-chain result hash."""
    from meshcompute.execution.programs import save_tensors

    submission = load_submission(name)
    client = _client()
    outputs = client.result(submission)
    target = out or Path(f"{submission.name}.out.safetensors")
    target.write_bytes(save_tensors(outputs, prefix="out"))
    console.print(f"output written to {target}")
    verified = client.verification(submission)
    for how, label in (("audited", "audited and passed"),
                       ("undrawn", "accepted undrawn (not recomputed)")):
        shards = ", ".join(str(i) for i, got in sorted(verified.items()) if got == how)
        console.print(f"{label}: {'shards ' + shards if shards else 'none'}", markup=False)


@app.command("list")
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Submissions made from this machine (states read from the chain)."""
    from meshcompute.client import Submission

    subs = [Submission.from_json(json.loads(p.read_text()))
            for p in sorted(_store().glob("*.json"))]
    client = _client() if subs else None
    rows = []
    for sub in subs:
        assert client is not None
        counts = client.status(sub).counts
        rows.append({"name": sub.name, "shards": len(sub.shards), "job_ids": sub.job_ids,
                     "states": counts})
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "shards", "jobs", "states")
    for row in rows:
        table.add_row(row["name"][:16], str(row["shards"]), str(row["job_ids"]),
                      ", ".join(f"{k} {v}" for k, v in row["states"].items()))
    Console().print(table)


@app.command("reclaim")
def reclaim(
    job_id: Annotated[int, typer.Argument(help="The on-chain job id.")],
) -> None:
    """Take back the escrow of a job that passed its deadline without a result."""
    if job_id < 0:
        raise BadInput("job id must be non-negative")
    _client().reclaim(job_id)
    console.print(f"job {job_id}: escrow returned to your wallet")
