"""``mesh demo``: the whole marketplace on one machine, for real.

It starts anvil (contracts deployed), an embedded Valkey (or uses ``REDIS_URL``), the market
API and its Celery worker and beat, two verifiers (the draw assigns each verdict to one
of them, so a failed worker always has someone else to appeal to) and three workers, one of
which is the test-only cheater, all as separate processes (:mod:`meshcompute.mesh.devstack`). A
client then exports
an MLP built in code, splits a batch into shards, uploads it, escrows payment with one permit
transaction and waits while workers run the shards in their sandboxes, the assigned verifier
recomputes each one blind and posts verdicts, and the market settles. The cheater's shards fail
their audits: its collateral is slashed, the client refunded and compensated, and the client
re-posts those shards so the output is complete. The demo then checks the assembled output against a
local computation, prints the earnings read from the chain and reconciles every balance; it
exits non-zero if anything does not add up.

Every shard is audited here (``min_audit_bps = 10000``) so the cheater is caught with
certainty in one run; in production the audit rate per job comes from
:mod:`meshcompute.core.audit_rate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshcompute.core.job import JobState
from meshcompute.core.payout import slash_split
from meshcompute.errors import MeshError
from meshcompute.mesh.devstack import (
    FAST_PARAMS,
    VERIFIER,
    DevStack,
    StackConfig,
    running_stack,
)
from meshcompute.units import BPS, TOKEN

SHARDS = 6
ROWS_PER_SHARD = 256
PAY = "60"  # MESH, split over the shards


class DemoFailed(MeshError):
    """Something in the demo did not reconcile."""


def run_demo(console: Console | None = None, *, timeout_s: float = 150.0,
             keep: Callable[[DevStack, dict[str, str]], None] | None = None) -> None:
    """``keep`` (``mesh demo --keep``): once everything reconciled, called with the running
    stack and the dashboard's pages of this run (:func:`dashboard_pages`); the network stays
    up until it returns, then every process is stopped as without it."""
    import torch

    from meshcompute.chain.connect import ChainConnection
    from meshcompute.chain.contracts import MeshContracts
    from meshcompute.client import Client
    from meshcompute.core.tolerance import compare
    from meshcompute.mesh.models import build_model, example_inputs
    from meshcompute.settings import load_settings
    from meshcompute.wire.market_client import MarketClient

    console = console or Console()
    started = time.monotonic()
    # Lease batches of two shards, so the six shards spread over the three workers (one
    # worker slot each) and the cheater gets some of them.
    config = StackConfig(workers=3, cheaters=1, params=replace(FAST_PARAMS, min_audit_bps=BPS),
                         extra_env={"MESH_MAX_LEASE_BATCH": "2"})
    console.print("[bold]starting[/] anvil, Valkey, market API + Celery, 2 verifiers (each "
                  "verdict assigned by the draw), 3 workers (worker-2 is the test-only cheater)")
    with running_stack(config) as stack:
        assert stack.deployment is not None
        w3 = stack.chain.w3()
        contracts = MeshContracts(w3, stack.deployment)
        if not stack.sandboxed:
            console.print("[yellow]bubblewrap is not usable here: workers run the demo's own "
                          "model without OS isolation (--allow-unsandboxed)[/]")
        console.print(f"  chain {stack.chain.rpc_url}  market {stack.market_url}  "
                      f"redis {stack.redis_url}")
        account = stack.client_account
        connection = ChainConnection(w3, stack.deployment, contracts, stack.chain.rpc_url)
        market = MarketClient(stack.market_url, account, stack.deployment.chain_id,
                          contract=stack.deployment.address("JobMarket"))
        settings = load_settings(market_url=stack.market_url)
        client = Client(account, connection=connection, market=market, settings=settings)

        model = build_model("mlp", seed=7)
        (x,) = example_inputs("mlp", batch=SHARDS * ROWS_PER_SHARD, seed=11)
        with torch.no_grad():
            expected = model(x)
        client_before = contracts.balance_of(account.address)

        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("submitting", total=SHARDS)

            def show(status) -> None:
                stack.check_alive()
                counts = ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items()))
                progress.update(task, completed=status.counts.get("finalized", 0),
                                description=f"{status.phase:<9} {counts}")

            submission = client.submit(model, (x,), shards=SHARDS, pay=PAY, progress=show)
            console.print(f"[bold]client[/] posted {SHARDS} shards as jobs {submission.job_ids}"
                          " with one permit transaction")
            outputs = client.wait(submission, timeout_s=timeout_s, progress=show)

        verdict = compare([expected.numpy()], [outputs[0].numpy()], submission.shards[0].spec.tolerance)
        if not verdict.agree:
            raise DemoFailed(f"assembled output differs from the local computation: {verdict.reason}")
        console.print(f"[bold green]output[/] {tuple(outputs[0].shape)} matches the local "
                      f"computation (max abs diff {verdict.max_abs:.2e})")
        _report(console, stack, contracts, submission, client_before)
        if keep is not None:
            pages = dashboard_pages(stack, submission)
            table = Table(title=f"dashboard (chain id {stack.deployment.chain_id}, "
                                f"rpc {stack.chain.rpc_url})")
            table.add_column("page")
            table.add_column("address")
            for name, url in pages.items():
                table.add_row(name, url)
            console.print(table)
            keep(stack, pages)
    console.print(f"[bold green]demo finished[/] in {time.monotonic() - started:.0f} s; "
                  "every process stopped")


def hold_until_interrupted(console: Console, stack: DevStack) -> None:
    """Keep the demo's network up until Ctrl-C (or SIGTERM), watching that it stays alive."""
    console.print("[bold]the network keeps running[/]: open the dashboard above; press "
                  "Ctrl-C to stop every process")
    try:
        while True:
            stack.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")


def dashboard_pages(stack: DevStack, submission) -> dict[str, str]:
    """The dashboard's pages of a demo run: the overview, the submission's group, the first
    cheater's provider page and the first verifier's page."""
    base = f"{stack.market_url}/dashboard#"
    pages = {"overview": f"{base}/"}
    if submission.group:
        pages["this run's shards"] = f"{base}/group/{submission.group}"
    cheaters = sorted(stack.cheater_addresses())
    if cheaters:
        pages["the cheater"] = f"{base}/provider/{cheaters[0]}"
    pages["a verifier"] = f"{base}/verifier/{stack.accounts[VERIFIER].address}"
    return pages


def _report(console: Console, stack, contracts, submission, client_before: int) -> None:
    from meshcompute.chain.earnings import earnings_report
    from meshcompute.chain.reconcile import check_solvency

    all_ids = [job_id for shard in submission.shards for job_id in shard.attempts]
    records = contracts.job_records(all_ids)
    cheaters = stack.cheater_addresses()
    jobs = Table(title="jobs (on chain)")
    for column in ("shard", "job", "worker", "state"):
        jobs.add_column(column)
    for shard in submission.shards:
        for job_id in shard.attempts:
            record = records[job_id]
            who = record.worker[:10] + (" (cheater)" if record.worker in cheaters else "")
            jobs.add_row(str(shard.index), str(job_id), who, record.state.name.lower())
    console.print(jobs)

    slashed = [r for r in records.values() if r.state == JobState.SLASHED]
    # void: drawn for audit, no verdict in time (a loaded machine); nobody paid, escrow back
    voided = [r for r in records.values() if r.state == JobState.REFUNDED]
    for job_id, record in records.items():
        if record.worker in cheaters and record.state not in (JobState.SLASHED, JobState.REFUNDED):
            raise DemoFailed(f"cheater's job {job_id} ended {record.state.name}, not slashed")
        if record.worker not in cheaters and record.state not in (JobState.FINALIZED,
                                                                   JobState.REFUNDED):
            raise DemoFailed(f"honest job {job_id} ended {record.state.name}, not paid")
    if cheaters and not slashed:
        raise DemoFailed("the cheater took no job, so nothing was caught; run the demo again")
    if voided:
        console.print(f"[yellow]{len(voided)} jobs void[/]: their verdict did not come in time, "
                      "so nobody was paid and the client re-posted them")

    client = stack.client_account.address
    owed = (sum(r.reward + slash_split(r.collateral, r.audit_fee)[0] for r in slashed)
            + sum(r.reward + r.audit_fee for r in voided))
    withdrawable = contracts.account_of(client).withdrawable
    if withdrawable != owed:
        raise DemoFailed(f"client credited {withdrawable} wei after slashes, expected {owed}")
    console.print(f"[bold red]cheater caught[/]: {len(slashed)} jobs slashed; the client got "
                  f"{owed / TOKEN:.2f} MESH back (escrow + its audit fee from the collateral), "
                  "and re-posted those shards")

    table = Table(title="earnings (read from the chain)")
    for column in ("worker", "paid jobs", "earned", "withdrawable", "slashed", "free stake"):
        table.add_column(column, justify="right")
    for account in stack.worker_accounts():
        report = earnings_report(contracts, account.address)
        state = contracts.account_of(account.address)
        if report.rows_total != state.earned or report.earned != state.earned:
            raise DemoFailed(f"{account.address}: JobPaid events sum to {report.rows_total}, "
                             f"contract says {state.earned}")
        name = account.address[:10] + (" (cheater)" if account.address in cheaters else "")
        table.add_row(name, str(len(report.final_rows)), f"{state.earned / TOKEN:.2f}",
                      f"{state.withdrawable / TOKEN:.2f}", f"{report.slashed / TOKEN:.2f}",
                      f"{contracts.stake_of(account.address).free / TOKEN:.2f}")
    console.print(table)

    solvency = check_solvency(contracts)
    if not solvency.ok:
        raise DemoFailed("books do not reconcile: " + "; ".join(solvency.problems))
    spent = client_before - contracts.balance_of(client)
    console.print(f"[bold green]reconciled[/]: JobMarket holds {solvency.market_balance / TOKEN:.2f}"
                  f" MESH = escrow {solvency.escrow / TOKEN:.2f} + withdrawable "
                  f"{solvency.withdrawable / TOKEN:.2f}; StakeManager holds "
                  f"{solvency.stake_balance / TOKEN:.2f} = stakes; client spent "
                  f"{spent / TOKEN:.2f} MESH from its wallet")
