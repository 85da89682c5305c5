"""``mesh job``: submit a program with its inputs, follow it, fetch the result, reclaim.

Every submission is remembered in ``<data_dir>/submissions/<name>.json`` (its job ids and
specs; nothing secret), so ``status``/``result``/``list`` work from any later shell. The state
shown is always read from the chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from meshcompute.errors import BadInput, JobFailed, NotFound

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


#: After this long with nothing moving and every open shard still posted, say why that may be.
HINT_AFTER_S = 120.0
_SUBMITTING = ("uploading", "posting", "posted")


class _Watch:
    """Shows the SubmissionStatus snapshots of ``submit`` and ``wait``: on a terminal, a live
    display updated in place (a bar of the shards paid, the shards per phase, the workers'
    failure reasons deduplicated); elsewhere (a pipe, a log, a test), one line per change,
    never one per poll. Either way a stuck diagnosis is printed once, and a hint once when
    nothing has moved for ``hint_after_s`` while every open shard is still posted.
    ``quiet`` (``--json``) prints nothing and only keeps the last snapshot."""

    def __init__(self, out: Console, total: int, *, live: bool | None = None,
                 quiet: bool = False, clock: Callable[[], float] = time.monotonic,
                 hint_after_s: float = HINT_AFTER_S) -> None:
        self.out = out
        self.total = total
        self.live = out.is_terminal if live is None else live
        self.quiet = quiet
        self.clock = clock
        self.hint_after_s = hint_after_s
        self.submission: Submission | None = None
        """Set once posted: the waiting hint names its device, memory and reward."""
        self.last: SubmissionStatus | None = None
        self._started = clock()
        self._changed = self._started
        self._key: object = None
        self._failures: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._stuck: object = None
        self._hinted = False
        self._display: Live | None = None

    def __enter__(self) -> Self:
        if self.live and not self.quiet:
            self._display = Live(console=self.out, get_renderable=self._render,
                                 refresh_per_second=4)
            self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def __call__(self, status: SubmissionStatus) -> None:
        self.last = status
        now = self.clock()
        key = _change_key(status)
        if key != self._key:
            self._key, self._changed = key, now
            self._line(Text(f"[{_clock(now - self._started)}] {progress_line(status)}"))
        for failure in status.failures:
            seen = (failure.workers, failure.shards)
            if self._failures.get(failure.reason) != seen:
                self._failures[failure.reason] = seen
                self._line(Text(f"  failure: {_failure_text(failure)}"))
        if status.stuck is not None:
            stuck_key = (status.stuck.cause, status.stuck.shards)
            if stuck_key != self._stuck:
                self._stuck = stuck_key
                self._print_once(status.stuck.lines(),
                                 "stuck" if status.stuck.permanent else "no worker fits")
        elif not self._hinted:
            hint = waiting_hint(status, now - self._changed, self.submission,
                                after_s=self.hint_after_s)
            if hint is not None:
                self._hinted = True
                self._print_once([hint], "waiting")

    def _line(self, text: Text) -> None:
        """A change, printed only where there is no live display."""
        if not self.quiet and self._display is None:
            self.out.print(text, soft_wrap=True)

    def _print_once(self, lines: list[str], title: str) -> None:
        if self.quiet:
            return
        if self._display is not None:
            style = "red" if title == "stuck" else "yellow"
            self.out.print(Panel(Text("\n".join(lines)), title=title, border_style=style,
                                 title_align="left"))
        else:
            self.out.print(Text(f"{title}: {lines[0]}"), soft_wrap=True)
            for line in lines[1:]:
                self.out.print(Text(f"  {line}"), soft_wrap=True)

    def _render(self) -> RenderableType:
        status = self.last
        elapsed = _clock(self.clock() - self._started)
        if status is None:
            return Text(f"starting  {elapsed}")
        if status.phase in _SUBMITTING:
            done = status.counts.get("uploaded", status.counts.get("posted", 0))
        else:
            done = status.phases.get("paid", 0)
        top = Table.grid(padding=(0, 1))
        top.add_row(Text(f"{status.phase:<9}"),
                    ProgressBar(total=max(1, status.total), completed=done, width=40),
                    Text(f"{done}/{status.total} {'paid' if status.phases else 'done'}"),
                    Text(elapsed, style="dim"))
        parts: list[RenderableType] = [top, Text(progress_line(status, all_phases=True))]
        if status.failures:
            parts.append(Text("worker failures:"))
            parts += [Text(f"  {_failure_text(f)}") for f in status.failures[:5]]
            if len(status.failures) > 5:
                parts.append(Text(f"  ... and {len(status.failures) - 5} more reasons"))
        return Group(*parts)


def progress_line(status: SubmissionStatus, *, all_phases: bool = False) -> str:
    """``running: posted 3, leased 1 (of 4)``; while submitting, what is being uploaded or
    posted. ``all_phases``: every phase, zeros included."""
    if status.phase in _SUBMITTING or not status.phases:
        what = status.detail or ", ".join(f"{k} {v}" for k, v in status.counts.items())
        return f"{status.phase}: {what}" if what else status.phase
    shown = [(k, v) for k, v in status.phases.items() if v or all_phases]
    counts = (" · " if all_phases else ", ").join(f"{k} {v}" for k, v in shown)
    return counts if all_phases else f"{status.phase}: {counts} (of {status.total})"


def waiting_hint(status: SubmissionStatus, idle_s: float, submission: Submission | None,
                 *, after_s: float = HINT_AFTER_S) -> str | None:
    """Why nothing may be happening, once ``idle_s`` passed ``after_s`` with every open
    shard still posted and none given up: the workers that tried refused (the market may
    still find others), or no worker took any although some live worker fits its device,
    memory and price (or the market publishes no capacity): stake and free slots are not
    published, so this cannot tell which."""
    from meshcompute.core.lease import MAX_FAILURES

    phases = status.phases
    if (status.phase != "running" or idle_s < after_s or not phases.get("posted")
            or any(phases.get(p) for p in ("leased", "committed", "audited"))):
        return None
    waited = _clock(idle_s)
    deadline = ("; `mesh job reclaim JOB` cancels a shard no worker holds and returns its "
                "escrow at once")
    tried = [f for f in status.failures if f.workers]
    if tried:
        same = "the same reason" if len(tried) == 1 else f"{len(tried)} different reasons"
        return (f"no shard has moved for {waited}: the workers that tried refused them for "
                f"{same} (above). The market offers them to other workers that fit, if "
                f"there are any, and gives up on a job after {MAX_FAILURES} workers failed "
                f"it{deadline}")
    if submission is not None and submission.shards:
        from meshcompute.units import format_mesh

        spec = submission.shards[0].spec
        fit = (f"device {spec.device}, {spec.memory_limit_mb} MB of memory, a price of at "
               f"most {format_mesh(submission.reward_per_shard)} MESH per shard, free stake "
               f"for {format_mesh(submission.collateral_per_shard)} MESH of collateral")
    else:
        fit = "device, memory, price, free stake for the collateral"
    return (f"no worker has taken a shard for {waited}: the market offers a job only to a "
            f"registered, heartbeating worker that fits it ({fit}). The market does not "
            f"publish its workers' free stake or slots, so this cannot tell whether one is "
            f"only busy{deadline}")


def _failure_text(failure: Any) -> str:
    from meshcompute.client import describe_failure

    return describe_failure(failure)


def _change_key(status: SubmissionStatus) -> object:
    if status.phase in _SUBMITTING or not status.phases:
        return (status.phase, tuple(status.counts.items()), status.detail)
    return (status.phase, tuple(status.phases.items()))


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _status_json(status: SubmissionStatus | None, total: int) -> dict[str, Any]:
    """The phase counts, failures and stuck diagnosis of ``--json`` (all shards posted when
    no snapshot after posting was taken)."""
    from meshcompute.client import PHASES

    if status is None or not status.phases:
        phases = dict.fromkeys(PHASES, 0)
        phases["posted"] = total
        return {"phase": "posted", "phases": phases, "failures": [], "stuck": None}
    data = status.to_json()
    return {k: data[k] for k in ("phase", "phases", "failures", "stuck")}


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


def _read_plan(path: Path) -> dict[str, Any]:
    from meshcompute.core.training import validate_plan

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"--train {path}: not a JSON file ({exc})") from None
    return validate_plan(doc).to_json()


def _write_training(result: Any, target: Path) -> dict[str, str]:
    """The final state at ``target`` and the loss curve beside it (``.losses.json``)."""
    target.write_bytes(result.state)
    losses = target.with_name(target.name.removesuffix(".safetensors") + ".losses.json")
    losses.write_text(json.dumps(result.losses))
    return {"output": str(target), "losses": str(losses)}


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
        help="Audit every shard (--audit-bps 10000). Costs: the audit fee (by default each "
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
    train: Annotated[Path | None, typer.Option(
        help="A training job: this JSON file is the plan (optimizer, schedule, steps, "
             "batch_size, seed, checkpoint_every); the program returns the loss and --inputs "
             "is the data shard. The verified final state and the loss curve are written "
             "next to --out.", exists=True)] = None,
) -> None:
    """Upload, escrow payment, and (by default) wait through running and verification."""
    from meshcompute.client import TrainingResult
    from meshcompute.execution.programs import save_tensors

    min_audit_bps = audit_rate(audit_bps, audit_all=audit_all)
    if train is not None and shards != 1:
        raise BadInput("a training job is one job: --shards must be 1 with --train")
    plan = _read_plan(train) if train is not None else None
    client = _client()
    outputs = None
    with _Watch(console, shards, quiet=as_json) as watch:
        if plan is not None:
            submission = client.submit_training(
                program, inputs, plan, pay=pay, deadline=deadline, audit_bps=min_audit_bps,
                progress=watch)
        else:
            submission = client.submit(
                program, inputs, shards=shards, pay=pay, tolerance=tolerance, device=device,
                deadline=deadline, audit_bps=min_audit_bps, progress=watch,
                check_stability=stability_check,
            )
        watch.submission = submission
        save_submission(submission)
        if wait:
            try:
                outputs = client.wait(submission, progress=watch)
            except JobFailed as exc:
                save_submission(submission)  # re-posted shards changed the job ids
                if as_json:
                    print(json.dumps({"name": submission.name, "job_ids": submission.job_ids,
                                      "group": submission.group,
                                      **_status_json(watch.last, shards),
                                      "error": " ".join(str(exc).split())}))
                raise
            save_submission(submission)  # re-posted shards changed the job ids
    result = {"name": submission.name, "job_ids": submission.job_ids, "group": submission.group,
              **_status_json(watch.last, shards)}
    if isinstance(outputs, TrainingResult):
        result.update(_write_training(outputs, out or Path(f"{submission.name}.state.safetensors")))
    elif outputs is not None:
        target = out or Path(f"{submission.name}.out.safetensors")
        target.write_bytes(save_tensors(outputs, prefix="out"))
        result["output"] = str(target)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"submission [bold]{submission.name}[/]: jobs {submission.job_ids}")
        if "output" in result:
            console.print(f"verified output written to {result['output']}")
        if "losses" in result:
            console.print(f"loss curve written to {result['losses']}")


@app.command("status")
def status(
    name: Annotated[str, typer.Argument(help="Group id or job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """State of every shard of a submission: on chain, its phase (posted, leased, committed,
    audited, paid, refunded, slashed), why workers could not run it, and whether it is stuck."""
    submission = load_submission(name)
    client = _client()
    snapshot = client.status(submission)
    verified = client.verification(submission)
    rows = [
        {"shard": s.index, "job_id": shard.job_id, "state": shard.state.name.lower(),
         "phase": shard.phase, "verification": verified[s.index], "attempts": s.attempts,
         "lease_holder": shard.leased_by,
         "failures": [{"worker": w, "reason": r} for w, r in shard.failures]
         + ([{"worker": None, "reason": shard.note}] if shard.note else [])}
        for s, shard in zip(submission.shards, snapshot.shards, strict=True)
    ]
    if as_json:
        print(json.dumps({"name": submission.name, "shards": rows,
                          **_status_json(snapshot, len(rows))}))
        return
    table = Table("shard", "job", "state", "phase", "verification", "attempts")
    for row in rows:
        table.add_row(str(row["shard"]), str(row["job_id"]), row["state"], row["phase"],
                      row["verification"], str(row["attempts"]))
    out = Console()
    out.print(table)
    out.print(Text(progress_line(snapshot)))
    for failure in snapshot.failures:
        out.print(Text(f"  failure: {_failure_text(failure)}"), soft_wrap=True)
    if snapshot.stuck is not None:
        permanent = snapshot.stuck.permanent
        out.print(Panel(Text("\n".join(snapshot.stuck.lines())),
                        title="stuck" if permanent else "no worker fits",
                        border_style="red" if permanent else "yellow", title_align="left"))


@app.command("result")
def result(
    name: Annotated[str, typer.Argument(help="Group id or job id.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the safetensors.")] = None,
) -> None:
    """Fetch the assembled output, each shard checked against its on-chain result hash."""
    from meshcompute.execution.programs import save_tensors

    submission = load_submission(name)
    client = _client()
    if submission.shards[0].spec.is_training:
        written = _write_training(client.training_result(submission),
                                  out or Path(f"{submission.name}.state.safetensors"))
        console.print(f"final state written to {written['output']}, loss curve to "
                      f"{written['losses']}")
    else:
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
        counts = client.status(sub, market=False).counts
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


@app.command("dispute")
def dispute(
    job_id: Annotated[int, typer.Argument(help="The on-chain job id.")],
) -> None:
    """Dispute a passed audit of your job (within its appeal window): another verifier
    recomputes it; a bond of the audit fee comes back if the pass is overturned. A pass that
    verifier upheld is escalated the same way (within an appeal window after the uphold; a
    bond of the reward and two audit fees): a third verifier judges, and if it disagrees the
    job is void and every bond comes back."""
    if job_id < 0:
        raise BadInput("job id must be non-negative")
    if _client().dispute(job_id):
        console.print(f"job {job_id}: upheld pass escalated; a third verifier recomputes it")
    else:
        console.print(f"job {job_id}: pass disputed; an appeal verifier recomputes it")


@app.command("reclaim")
def reclaim(
    job_id: Annotated[int, typer.Argument(help="The on-chain job id.")],
) -> None:
    """Take back a job's escrow: at once while no worker holds it (a cancel), or after its
    deadline when a worker took it without committing a result."""
    if job_id < 0:
        raise BadInput("job id must be non-negative")
    _client().reclaim(job_id)
    console.print(f"job {job_id}: escrow returned to your wallet")
