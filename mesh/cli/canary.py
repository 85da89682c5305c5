"""``mesh canary start``: plant canary jobs (real programs, junk outputs) and dispute every
pass of them, so a verifier that passes without recomputing loses its bond
(:mod:`meshcompute.verifier.canary`; README, "Trust model, honestly")."""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True,
                  help="Canary jobs: known junk among ordinary jobs, so lazy verifiers pay.")
canary_app = app
log = logging.getLogger("meshcompute.canary")

#: The example model families canaries are drawn from (each canary: a fresh model and inputs).
FAMILIES = ("mlp", "convnet", "transformer")


def program_maker(family: str, rng: random.Random):  # type: ignore[no-untyped-def]
    """Makes one canary's ``(program, inputs)``: a model of ``family`` with fresh random
    weights, exported, on fresh random inputs (nothing a verifier could have seen before)."""

    def make() -> tuple[bytes, bytes]:
        import torch

        from meshcompute.execution.programs import export_program, save_tensors
        from meshcompute.mesh.models import build_model, example_inputs

        model = build_model(family, seed=rng.randrange(2**31))
        x = example_inputs(family, batch=rng.choice((2, 4, 8)), seed=rng.randrange(2**31))
        with torch.no_grad():
            program = export_program(model, x)
        return program, save_tensors(list(x), "args")

    return make


@canary_app.command("start")
def canary_start(
    every: Annotated[float, typer.Option(
        min=1, help="Mean seconds between canaries (the gaps are random).")] = 600.0,
    reward: Annotated[str, typer.Option(help="Reward of each canary job (MESH).")] = "0.02",
    audit_fee: Annotated[str, typer.Option(
        help="Audit fee of each canary (MESH): pays the verifier that fails it.")] = "0.004",
    collateral: Annotated[str, typer.Option(
        help="Collateral the canary worker bonds per canary (MESH).")] = "0.08",
    max_open: Annotated[int, typer.Option(
        min=1, help="Most canaries not yet ended at once.")] = 4,
    total: Annotated[int | None, typer.Option(
        min=0, help="Plant this many, then stop once they have ended (default: no end).")
    ] = None,
    families: Annotated[str, typer.Option(
        help="Comma-separated example model families to draw canaries from.")
    ] = ",".join(FAMILIES),
    market: Annotated[str | None, typer.Option(help="Market URL (default MESH_MARKET_URL).")] = None,
    allow_unsandboxed: Annotated[
        bool, typer.Option(help="Compute the honest outputs without OS isolation (unsafe).")
    ] = False,
    json_logs: Annotated[bool, typer.Option(help="One JSON object per log line.")] = False,
) -> None:
    """Plant canaries until SIGTERM: this wallet is the canary client, MESH_CANARY_WORKER_KEY
    the staked canary worker, MESH_ASSIGNER_KEY signs their tickets (so only the market's
    operator can run it). Every canary a verifier passes is disputed at once."""
    from meshcompute.chain.connect import actor_for, connect
    from meshcompute.chain.deploy import ASSIGNER_ROLE
    from meshcompute.errors import BadInput, ConfigError
    from meshcompute.logs import configure_logging
    from meshcompute.market.runtime import assigner_account
    from meshcompute.settings import get_settings
    from meshcompute.units import parse_mesh
    from meshcompute.verifier.canary import (
        CanaryPlan,
        CanaryRunner,
        canary_journal_path,
        run_canaries,
    )
    from meshcompute.verifier.recompute import Recomputer
    from meshcompute.wallet import unlock
    from meshcompute.wire.market_client import MarketClient

    settings = get_settings()
    configure_logging("canary", json_lines=json_logs, logger="meshcompute.canary",
                      stream=sys.stdout)
    chosen = [name.strip() for name in families.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if not chosen or unknown:
        raise BadInput(f"--families: choose among {', '.join(FAMILIES)} (got {families!r})")
    plan = CanaryPlan(every_s=every, reward=parse_mesh(reward, what="--reward"),
                      audit_fee=parse_mesh(audit_fee, what="--audit-fee"),
                      collateral=parse_mesh(collateral, what="--collateral"),
                      max_open=max_open, total=total)
    if settings.canary_worker_key is None:
        raise ConfigError("MESH_CANARY_WORKER_KEY: the private key of the canary worker (a "
                          "staked address of the operator's, not this wallet's) is required")
    from eth_account import Account

    conn = connect(settings)
    client = actor_for(conn, unlock(settings, prompt=sys.stdin.isatty()))
    worker = actor_for(conn, Account.from_key(
        settings.canary_worker_key.get_secret_value()))
    assigner = assigner_account(settings, conn.chain_id)
    if not client.market.functions.hasRole(ASSIGNER_ROLE, assigner.address).call():
        raise ConfigError(f"{assigner.address} (MESH_ASSIGNER_KEY) does not hold ASSIGNER_ROLE "
                          "on the JobMarket: canary tickets would be refused")
    free = conn.contracts.stake_of(worker.address).free
    if free < plan.collateral:
        raise BadInput(f"the canary worker {worker.address} has {free} wei of free stake, less "
                       f"than one canary's collateral ({plan.collateral}): stake first")
    market_url = market or settings.market_url
    contract = conn.deployment.address("JobMarket")

    def market_for(account) -> MarketClient:  # type: ignore[no-untyped-def]
        return MarketClient(market_url, account, conn.chain_id, contract=contract,
                            max_download_bytes=settings.max_download_bytes)

    client_market, worker_market = market_for(client.account), market_for(worker.account)
    client_market.require_deployment(conn.chain_id, contract)
    recompute = Recomputer(threads=settings.verifier_threads,
                           allow_unsandboxed=allow_unsandboxed
                           or settings.verifier_allow_unsandboxed)
    rng = random.SystemRandom()
    runner = CanaryRunner(client, worker, assigner, client_market, worker_market, recompute)
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def emit(event: str, **fields: object) -> None:
        level = logging.WARNING if event == "warning" else logging.INFO
        log.log(level, str(fields.get("message", event)), extra={"event": event,
                                                                  "fields": fields})

    log.info("canary service started", extra={"fields": {
        "client": client.address, "worker": worker.address, "every_s": every,
        "max_open": max_open, "total": total}})
    try:
        final = run_canaries(
            runner, [program_maker(family, rng) for family in chosen], plan,
            journal=canary_journal_path(settings.data_dir, conn.chain_id, contract,
                                        client.address),
            stop=stop, rng=rng, emit=emit)
    finally:
        recompute.close()
        client_market.close()
        worker_market.close()
    log.info("canary service stopped", extra={"fields": {"canaries": final}})
