"""``mesh worker``: run this machine as a provider's worker node, or check that one is alive."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated

import typer

from meshcompute.core.availability import Schedule
from meshcompute.errors import BadInput, SandboxUnavailable

app = typer.Typer(no_args_is_help=True, help="Run a worker node that earns credits for jobs.")
worker_app = app

STAKE_HINT = "stake first with `mesh provider stake AMOUNT`"


def _when_idle(when: str | None) -> bool | None:
    if when is None:
        return None
    if when != "idle":
        raise BadInput(f"--when takes 'idle', got {when!r}")
    return True


@worker_app.command("start")
def worker_start(
    market: Annotated[str | None, typer.Option(help="Market URL (default MESH_MARKET_URL).")] = None,
    slots: Annotated[int | None, typer.Option(help="Jobs run at the same time.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per job.")] = None,
    price: Annotated[str | None, typer.Option(help="Asking price per job, MESH.")] = None,
    allow_unsandboxed: Annotated[
        bool, typer.Option(help="Run jobs without OS isolation when none works (unsafe).")
    ] = False,
    json_logs: Annotated[
        bool, typer.Option(help="One JSON object per event instead of the live table.")
    ] = False,
    grace: Annotated[
        float | None, typer.Option(help="Seconds running jobs get to finish on SIGTERM.")
    ] = None,
    probe_stability: Annotated[
        bool, typer.Option(help="Before committing, probe each new program as an audit would "
                                "(about two extra runs per program) and hand back, unpaid and "
                                "without penalty, jobs unstable under their tolerance.")
    ] = False,
    when: Annotated[
        str | None, typer.Option(help="'idle': work only while the owner is not using the "
                                      "machine (other programs' load, keyboard and mouse, other "
                                      "GPU processes, battery); running jobs are frozen "
                                      "meanwhile.")
    ] = None,
    hours: Annotated[
        str | None, typer.Option(help="Work only within these daily hours, local time "
                                      "(23:00-07:00).")
    ] = None,
    idle_load: Annotated[
        float | None, typer.Option(help="With --when idle: load from other programs, in CPUs, "
                                        "above which the machine counts as in use (0.5).")
    ] = None,
) -> None:
    """Register with the market and run jobs until SIGTERM or Ctrl-C."""
    from meshcompute.chain.connect import actor_for, connect
    from meshcompute.execution.sandbox import sandbox_available
    from meshcompute.mesh.adversary import adversary_from_env
    from meshcompute.settings import get_settings
    from meshcompute.wallet import unlock
    from meshcompute.wire.market_client import MarketClient
    from meshcompute.worker.hardware import detect_hardware
    from meshcompute.worker.node import WorkerConfig, WorkerNode, parse_price
    from meshcompute.worker.policy import HONEST
    from meshcompute.worker.status import JsonLogSink, LiveStatus

    settings = get_settings()
    config = WorkerConfig.from_settings(
        settings,
        market_url=market,
        slots=slots,
        threads=threads,
        price_wei=parse_price(price) if price is not None else None,
        allow_unsandboxed=allow_unsandboxed or None,
        json_logs=json_logs or None,
        grace_s=grace,
        probe_stability=probe_stability or None,
        when_idle=_when_idle(when),
        hours=Schedule.parse(hours) if hours is not None else None,
        idle_load_cpus=idle_load,
    )
    if not config.allow_unsandboxed and not sandbox_available():
        raise SandboxUnavailable(
            "no OS-level sandbox (bubblewrap with user namespaces) works on this machine, so "
            "jobs from strangers cannot run safely: install bubblewrap, or pass "
            "--allow-unsandboxed to run without isolation (trusted jobs only)"
        )
    account = unlock(settings, prompt=sys.stdin.isatty())
    conn = connect(settings)
    position = conn.contracts.stake_of(account.address)
    if position.free + position.locked == 0:
        raise BadInput(f"{account.address} has no stake on chain {conn.chain_id}: {STAKE_HINT}")
    cheater = adversary_from_env(conn.chain_id)  # test-only, dev chain only
    client = MarketClient(config.market_url, account, conn.chain_id,
                          contract=conn.deployment.address("JobMarket"),
                          max_download_bytes=settings.max_download_bytes)
    client.require_deployment(conn.chain_id, conn.deployment.address("JobMarket"))
    node = WorkerNode(config, account, client, actor_for(conn, account),
                      hardware=detect_hardware(), policy=cheater or HONEST)
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if config.json_logs or not sys.stdout.isatty():
            node.set_event_sink(JsonLogSink(sys.stdout))
            node.run(stop)
        else:
            with LiveStatus() as live:
                node.set_event_sink(live)
                node.run(stop)
    finally:
        client.close()


@worker_app.command("health")
def worker_health() -> None:
    """Exit 0 when this machine's worker heartbeated recently (for container health checks)."""
    from meshcompute.settings import get_settings
    from meshcompute.worker.status import check_health

    ok, message = check_health(get_settings().data_dir / "worker-health.json")
    typer.echo(message)
    if not ok:
        raise typer.Exit(1)


@worker_app.command("pause")
def worker_pause() -> None:
    """Pause this machine's worker now, as if you were using the machine: its running jobs are
    frozen (stopped, not killed) and it takes no new one until `mesh worker resume`. A frozen
    job whose lease would run out is handed back, its finished checkpoints paid for."""
    from meshcompute.settings import get_settings
    from meshcompute.worker.config import PAUSE_FILE

    path = get_settings().data_dir / PAUSE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    typer.echo(f"paused: the worker freezes its jobs within two seconds ({path} exists; "
               "`mesh worker resume` removes it)")


@worker_app.command("resume")
def worker_resume() -> None:
    """Let this machine's worker work again after `mesh worker pause`."""
    from meshcompute.settings import get_settings
    from meshcompute.worker.config import PAUSE_FILE

    path = get_settings().data_dir / PAUSE_FILE
    if not path.exists():
        typer.echo("the worker was not paused")
        return
    path.unlink()
    typer.echo("resumed: the worker thaws its jobs and takes work again (unless --when idle "
               "or --hours say otherwise)")
