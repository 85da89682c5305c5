"""``mesh market``: run the market's HTTP API and its Celery worker (with beat).

Both are restartable at any time: everything they hold lives in Redis, on chain and in the
blob store. Without ``REDIS_URL`` they share an embedded Valkey recorded in the data dir.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Run the market service (API and background tasks).")
console = Console(stderr=True)


def _prepare():  # type: ignore[no-untyped-def]
    """Settings with a Redis URL (starting an embedded Valkey if none is configured)."""
    from meshcompute.logs import configure_logging
    from meshcompute.market.embedded_redis import EmbeddedRedis
    from meshcompute.settings import get_settings

    settings = get_settings()
    configure_logging("market", json_lines=settings.market_json_logs)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir).start()
        os.environ["REDIS_URL"] = embedded.url
        get_settings.cache_clear()
        settings = get_settings()
        console.print(f"embedded Valkey at {embedded.url}")
    return settings, embedded


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MESH_MARKET_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (MESH_MARKET_PORT).")] = None,
) -> None:
    """Run the market's HTTP API (uvicorn) until Ctrl-C or SIGTERM."""
    import uvicorn

    from meshcompute.market.api.app import create_app
    from meshcompute.market.api.connections import GuardedH11Protocol

    settings, embedded = _prepare()
    workers = settings.market_api_workers
    try:
        uvicorn.run(
            "meshcompute.market.api.app:app_from_settings" if workers > 1 else create_app(settings),
            factory=workers > 1,
            workers=workers if workers > 1 else None,
            host=host or settings.market_host,
            port=port or settings.market_port,
            log_config=None,
            access_log=False,
            limit_concurrency=settings.market_max_connections,
            h11_max_incomplete_event_size=settings.market_max_header_bytes,
            http=GuardedH11Protocol,  # deadlines on request heads, connections per client
        )
    finally:
        if embedded is not None:
            embedded.stop()


@app.command("tasks")
def tasks(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run the Celery worker with embedded beat (index, match, expire, settle): one round at a
    time, or side by side with ``MESH_TASK_THREADS`` > 1 (never two runs of one round)."""
    import logging

    settings, embedded = _prepare()
    from meshcompute.market import tasks as market_tasks

    # one line per task run (several a second) drowns the market's own logs
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(name).setLevel(logging.WARNING)

    celery_app = market_tasks.configure(settings.redis_url)
    schedule = settings.data_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    try:
        worker = celery_app.Worker(
            pool="solo" if settings.task_threads == 1 else "threads",
            concurrency=settings.task_threads,
            beat=True,
            schedule_filename=str(schedule),
            loglevel=loglevel,
            hostname=f"market@{os.uname().nodename}",
        )
        worker.start()
        raise typer.Exit(worker.exitcode or 0)
    finally:
        if embedded is not None:
            embedded.stop()
