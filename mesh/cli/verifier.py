"""``mesh verifier join|top-up|leave|withdraw|seat`` (a seat in the verifier registry), ``mesh verifier
start|health`` (run a verifier) and ``mesh verify JOB_ID`` (re-check one)."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from meshcompute.errors import SandboxUnavailable

if TYPE_CHECKING:
    from meshcompute.verifier.recheck import RecheckReport

app = typer.Typer(no_args_is_help=True, help="Audit sampled results and judge appeals.")
verifier_app = app
console = Console(soft_wrap=True)

#: Exit status of ``mesh verify`` when our recomputation disagrees with the verdict on chain.
EXIT_DISAGREES = 3


@verifier_app.command("start")
def verifier_start(
    market: Annotated[str | None, typer.Option(help="Market URL (default MESH_MARKET_URL).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads per recomputation.", min=1)
    ] = None,
    allow_unsandboxed: Annotated[
        bool, typer.Option(help="Recompute without OS isolation when none works (unsafe).")
    ] = False,
    json_logs: Annotated[bool, typer.Option(help="One JSON object per log line.")] = False,
) -> None:
    """Follow the chain; audit the drawn jobs and judge the appeals and disputes the draw
    assigns to this verifier (and those a silent verifier leaves halfway through their window),
    until SIGTERM."""
    from meshcompute.chain.connect import actor_for, connect
    from meshcompute.chain.draws import draw_seed
    from meshcompute.core.tolerance import evidence_hash
    from meshcompute.logs import configure_logging
    from meshcompute.mesh.lazy_verifier import LazyAuditor, lazy_verifier_from_env
    from meshcompute.settings import get_settings
    from meshcompute.verifier.audit import Auditor
    from meshcompute.verifier.journal import Journal, journal_path
    from meshcompute.verifier.outputs import compare_outputs
    from meshcompute.verifier.recompute import Recomputer
    from meshcompute.verifier.service import ServiceConfig, VerifierService, require_verifier_seat
    from meshcompute.verifier.training_audit import (
        TrainingJudge,
        sandboxed_links_run,
        sandboxed_segment_run,
    )
    from meshcompute.wallet import unlock
    from meshcompute.wire.market_client import MarketClient

    settings = get_settings()
    configure_logging("verifier", json_lines=json_logs or settings.verifier_json_logs,
                      logger="meshcompute.verifier", stream=sys.stdout)
    unsandboxed = allow_unsandboxed or settings.verifier_allow_unsandboxed
    _require_sandbox(unsandboxed)
    account = unlock(settings, prompt=sys.stdin.isatty())
    conn = connect(settings)
    actor = actor_for(conn, account)
    require_verifier_seat(actor)
    _require_stake(actor, settings.verifier_min_stake)
    market_url = market or settings.market_url
    client = MarketClient(market_url, account, conn.chain_id,
                          contract=conn.deployment.address("JobMarket"),
                          max_download_bytes=settings.max_download_bytes)
    client.require_deployment(conn.chain_id, conn.deployment.address("JobMarket"))
    journal = Journal(journal_path(settings.data_dir, conn.chain_id, account.address))
    recompute = Recomputer(
        threads=threads or settings.verifier_threads,
        allow_unsandboxed=unsandboxed,
        scratch_root=settings.verifier_scratch_dir,
    )
    confirm = recompute.alternate_setup()
    training = TrainingJudge(run=sandboxed_segment_run(recompute),
                             seed_of=functools.partial(draw_seed, conn.w3),
                             links=sandboxed_links_run(recompute))
    auditor_type = LazyAuditor if lazy_verifier_from_env(conn.chain_id) else Auditor  # test-only
    auditor = auditor_type(
        client, recompute, compare_outputs, evidence_hash, journal,
        verifier=account.address, chain_id=conn.chain_id,
        job_market=conn.deployment.address("JobMarket"), confirm=confirm, training=training,
    )
    service = VerifierService(
        actor, auditor, journal,
        ServiceConfig(
            poll_interval_s=settings.verifier_poll_interval_s,
            final_margin_s=settings.verifier_final_margin_s,
        ),
        health_path=settings.data_dir / "verifier-health.json",
    )
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.run(stop)
    finally:
        recompute.close()
        confirm.close()
        client.close()


AmountArg = Annotated[str, typer.Argument(help="MESH, up to 18 decimals (e.g. 100).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@verifier_app.command("join")
def verifier_join(amount: AmountArg, as_json: JsonOption = False) -> None:
    """Take a seat in the verifier registry with a deposit of AMOUNT MESH from the wallet.

    Anyone may: nobody admits or vouches. The seat is a candidate for the verdicts of jobs
    committed from the next block on. The draw assigns each verdict to a seat, weighted by its
    deposit; a verdict assigned and never given burns part of it, and so does an appeal verdict
    that overturns another verifier's and that a third seat finds wrong."""
    from meshcompute.chain.connect import actor_for
    from meshcompute.errors import BadInput
    from meshcompute.mesh.cli import onchain
    from meshcompute.units import parse_mesh

    wei = parse_mesh(amount)
    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    minimum, _exit = conn.contracts.registry_terms()
    if wei < minimum:
        raise BadInput(f"a seat needs a deposit of at least {onchain.mesh(minimum)}; "
                       f"{onchain.mesh(wei)} was offered")
    if conn.contracts.verifier_seat(who) is not None:
        raise BadInput(f"{who} already holds a seat (see `mesh verifier seat`)")
    onchain.require_balance(conn, who, wei, f"a verifier deposit of {onchain.mesh(wei)}")
    onchain.require_gas(conn, who)
    actor_for(conn, onchain.unlock_wallet(cfg)).join_verifiers(wei)
    _print_seat(conn, who, as_json, f"joined with {onchain.mesh(wei)}")


@verifier_app.command("top-up")
def verifier_top_up(amount: AmountArg, as_json: JsonOption = False) -> None:
    """Add AMOUNT MESH from the wallet to this seat's deposit. The weight stays as joined; the
    deposit answers for more overturns at once (each reserves what it would forfeit until its
    contest ends, and one the unreserved deposit cannot cover is refused). The verifier service
    tops up by itself when its wallet holds the shortfall."""
    from meshcompute.chain.connect import actor_for
    from meshcompute.mesh.cli import onchain
    from meshcompute.units import parse_mesh

    wei = parse_mesh(amount)  # refuses zero and negatives
    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    _require_seat(conn, who)
    onchain.require_balance(conn, who, wei, f"a top-up of {onchain.mesh(wei)}")
    onchain.require_gas(conn, who)
    actor_for(conn, onchain.unlock_wallet(cfg)).top_up_verifier_deposit(wei)
    _print_seat(conn, who, as_json, f"topped up {onchain.mesh(wei)}")


@verifier_app.command("leave")
def verifier_leave(as_json: JsonOption = False) -> None:
    """Stop being a candidate for jobs committed from the next block on; the deposit comes back
    with `mesh verifier withdraw` once the exit delay has passed."""
    from meshcompute.chain.connect import actor_for
    from meshcompute.errors import BadInput
    from meshcompute.mesh.cli import onchain

    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    if _require_seat(conn, who).leaving:  # type: ignore[attr-defined]
        raise BadInput("the seat is already leaving (see `mesh verifier seat`)")
    onchain.require_gas(conn, who)
    actor_for(conn, onchain.unlock_wallet(cfg)).leave_verifiers()
    _print_seat(conn, who, as_json, "leaving")


@verifier_app.command("withdraw")
def verifier_withdraw(as_json: JsonOption = False) -> None:
    """Take the deposit back after leaving and the exit delay (giving up the seat)."""
    from meshcompute.chain.connect import actor_for
    from meshcompute.errors import BadInput
    from meshcompute.mesh.cli import onchain

    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    seat = _require_seat(conn, who)
    if not seat.leaving:
        raise BadInput("the seat is still a candidate: `mesh verifier leave` first")
    if conn.w3.eth.get_block("latest")["timestamp"] < seat.release_at:
        raise BadInput(f"the deposit is bound until {onchain.when(seat.release_at)}")
    reserved = conn.contracts.verifier_reserved(who)
    if reserved:
        raise BadInput(f"{onchain.mesh(reserved)} of the deposit answers for overturns whose "
                       "contests have not ended; it is released once they are settled "
                       "(the market settles each once its window has closed)")
    onchain.require_gas(conn, who)
    actor_for(conn, onchain.unlock_wallet(cfg)).withdraw_verifier_deposit()
    _print_seat(conn, who, as_json, f"withdrew {onchain.mesh(seat.deposit)}")


@verifier_app.command("seat")
def verifier_seat(as_json: JsonOption = False) -> None:
    """This wallet's seat in the verifier registry: deposit, weight, and the jobs it is a
    candidate for."""
    from meshcompute.mesh.cli import onchain

    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    _print_seat(conn, onchain.my_address(cfg), as_json, "")


def _require_seat(conn: object, who: str) -> object:
    from meshcompute.errors import BadInput

    seat = conn.contracts.verifier_seat(who)  # type: ignore[attr-defined]
    if seat is None:
        raise BadInput(f"{who} holds no seat in the verifier registry "
                       "(`mesh verifier join AMOUNT` takes one)")
    return seat


def _print_seat(conn: object, who: str, as_json: bool, action: str) -> None:
    from meshcompute.mesh.cli import onchain

    seat = conn.contracts.verifier_seat(who)  # type: ignore[attr-defined]
    data: dict[str, object] = {"address": who, "seat": seat is not None}
    if seat is not None:
        reserved = conn.contracts.verifier_reserved(who)  # type: ignore[attr-defined]
        data |= {"deposit": onchain.money(seat.deposit), "reserved": onchain.money(reserved),
                 "units": seat.units,
                 "from_block": seat.from_block,
                 "until_block": seat.until_block if seat.leaving else None,
                 "release_at": seat.release_at or None}
    if action:
        data["action"] = action
    if as_json:
        onchain.emit_json(data)
        return
    if seat is None:
        console.print(f"{who}: no seat in the verifier registry" + (f" ({action})" if action else ""))
        return
    span = (f"for jobs committed in blocks {seat.from_block} to {seat.until_block - 1}; deposit "
            f"released {onchain.when(seat.release_at)}" if seat.leaving
            else f"for jobs committed from block {seat.from_block} on")
    held = (f" ({onchain.mesh(reserved)} reserved behind overturns in contest)"
            if reserved else "")
    console.print(f"{who}: {action + '; ' if action else ''}deposit {onchain.mesh(seat.deposit)}"
                  f"{held}, weight {seat.units}, a candidate {span}")


@verifier_app.command("health")
def verifier_health() -> None:
    """Exit 0 when this machine's verifier polled the chain recently (container health)."""
    from meshcompute.settings import get_settings
    from meshcompute.verifier.service import check_health

    settings = get_settings()
    ok, message = check_health(settings.data_dir / "verifier-health.json",
                               max_age_s=max(30.0, 10 * settings.verifier_poll_interval_s))
    typer.echo(message)
    if not ok:
        raise typer.Exit(1)


def verify(
    job_id: Annotated[int, typer.Argument(help="The on-chain job id.", min=1)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    market: Annotated[str | None, typer.Option(help="Market URL (default MESH_MARKET_URL).")] = None,
    threads: Annotated[int, typer.Option(help="torch threads for the recomputation.", min=1)] = 1,
    allow_unsandboxed: Annotated[
        bool, typer.Option(help="Recompute without OS isolation when none works (unsafe).")
    ] = False,
) -> None:
    """Re-check a job's verdict: recompute it here from the blob store and say whether the
    verdict on chain agrees (exit 0), disagrees (exit 3), or there is none (exit 0)."""
    from meshcompute.chain.connect import connect
    from meshcompute.core.tolerance import evidence_hash
    from meshcompute.settings import get_settings
    from meshcompute.verifier.outputs import compare_outputs
    from meshcompute.verifier.recheck import recheck_job
    from meshcompute.verifier.recompute import Recomputer
    from meshcompute.wire.market_client import MarketClient

    settings = get_settings()
    _require_sandbox(allow_unsandboxed)
    conn = connect(settings)
    with MarketClient(market or settings.market_url, None, conn.chain_id) as client:
        report = recheck_job(
            conn.contracts, client,
            Recomputer(threads=threads, allow_unsandboxed=allow_unsandboxed, warm=False),
            compare_outputs, evidence_hash, job_id,
        )
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        _print_report(report)
    if report.agrees is False:
        raise typer.Exit(EXIT_DISAGREES)


def _require_sandbox(allow_unsandboxed: bool) -> None:
    from meshcompute.execution.sandbox import sandbox_available

    if not allow_unsandboxed and not sandbox_available():
        raise SandboxUnavailable(
            "no OS-level sandbox (bubblewrap with user namespaces) works on this machine, so "
            "jobs from strangers cannot be recomputed safely: install bubblewrap, or pass "
            "--allow-unsandboxed to run without isolation (trusted jobs only)"
        )


def _print_report(report: RecheckReport) -> None:
    view = {True: "acceptable", False: "NOT acceptable", None: "undetermined"}
    console.print(f"job {report.job_id}: {report.state}")
    console.print(f"  worker output  {report.worker_output}")
    console.print(f"  our output     {report.our_output or '-'}")
    console.print(f"  our view       worker output {view[report.worker_acceptable]}: "
                  f"{report.reason}")
    if not report.checks:
        console.print("  no verdict on chain for this job")
        return
    for check in report.checks:
        said = ("passed" if check.verdict else "failed") if check.kind == "audit" else (
            "worker wins" if check.verdict else "worker loses")
        mark = "[green]agrees[/]" if check.agrees else "[red]DISAGREES[/]"
        console.print(f"  {check.kind} verdict by {check.verifier}: {said} -> {mark}")
        if check.evidence_ok:
            console.print(f"    evidence {check.evidence_hash} checked: outputs "
                          f"{', '.join(check.output_hashes)}")
            for entry in check.verifier_outputs_vs_ours:
                console.print(f"    verifier output {entry['output']}: agrees with ours = "
                              f"{entry['agrees_with_ours']} ({entry['reason']})")
        else:
            console.print(f"    [yellow]evidence not checkable[/]: {check.evidence_problem}")
    final = "[green]agrees[/]" if report.agrees else "[red]DISAGREES[/]"
    console.print(f"the deciding verdict {final} with our recomputation")


def _require_stake(actor: object, minimum: str) -> None:
    """A verifier must have stake on chain (its skin in the game); one line otherwise."""
    from meshcompute.errors import BadInput
    from meshcompute.units import TOKEN, parse_mesh

    needed = parse_mesh(minimum, what="minimum stake") if minimum not in ("", "0") else 0
    position = actor.stake_of(actor.address)  # type: ignore[attr-defined]
    have = position.free + position.locked
    if have < max(needed, 1):
        raise BadInput(
            f"verifier {actor.address} has {have / TOKEN:g} MESH staked; a verifier needs at "  # type: ignore[attr-defined]
            f"least {max(needed, 1) / TOKEN:g}: stake first with `mesh provider stake AMOUNT`"
        )
