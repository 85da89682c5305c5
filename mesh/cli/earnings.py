"""``mesh earnings`` and ``mesh withdraw``: a worker's pay, read from the chain only.

Both are top-level commands; :func:`register` mounts them on the root app. What "final" and
"pending" mean is set out in :mod:`meshcompute.chain.earnings`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshcompute.errors import BadInput
from meshcompute.mesh.cli import onchain

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def earnings(
    address: Annotated[
        str | None, typer.Argument(help="Worker address (default: this wallet's).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs paid from this date on (2025-06-01, UTC).")
    ] = None,
    job: Annotated[int | None, typer.Option(help="Only this job id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A worker's paid and pending jobs with totals, read from the chain only.

    One row per paid job (amount, fee, audited, final) and per committed job awaiting
    settlement (pending); totals earned, pending, withdrawn, withdrawable and slashed.
    """
    from meshcompute.chain.earnings import earnings_report

    cfg = onchain.settings()
    since_time = onchain.parse_since(since) if since else None
    if job is not None and job <= 0:
        raise BadInput(f"--job must be a positive job id, got {job}")
    who = onchain.my_address(cfg, address, can_pass="an ADDRESS")
    conn = onchain.connect_chain(cfg)
    report = earnings_report(conn.contracts, who, since_block_time=since_time, job_id=job)
    if as_json:
        onchain.emit_json({"chain_id": conn.chain_id, **report.to_json()})
        return
    from rich.table import Table

    out = onchain.out
    out.print(f"earnings of {who} on chain id {conn.chain_id} (read from the chain)")
    if report.rows:
        table = Table()
        table.add_column("job", justify="right")
        table.add_column("amount MESH", justify="right")
        table.add_column("audited")
        table.add_column("status", no_wrap=True)
        table.add_column("when (UTC)", no_wrap=True)
        for row in report.rows:
            status = row.status if row.status == "final" else f"pending: {row.stage}"
            table.add_row(
                str(row.job_id),
                onchain.format_mesh(row.amount),
                "yes" if row.audited else "no",
                status,
                onchain.when(row.timestamp)[:16],
            )
        out.print(table)
    else:
        out.print("no paid or pending jobs" + (" match the filter" if report.filters else ""))
    for slash in report.slashes:
        out.print(
            f"job {slash.job_id}: slashed {onchain.mesh(slash.amount)} at "
            f"{onchain.when(slash.timestamp)}"
        )
    if report.filters:
        out.print(f"listed (final)  {onchain.mesh(report.rows_total)}")
    out.print(f"earned          {onchain.mesh(report.earned)} over {report.completed} jobs")
    out.print(f"pending         {onchain.mesh(report.pending)} (jobs not settled yet)")
    out.print(f"withdrawn       {onchain.mesh(report.withdrawn)}")
    out.print(f"withdrawable    {onchain.mesh(report.withdrawable)} (`mesh withdraw`)")
    out.print(f"slashed         {onchain.mesh(report.slashed)}")


def withdraw(as_json: JsonOption = False) -> None:
    """Withdraw every credit the market holds for this wallet (earnings, fees, refunds)."""
    from meshcompute.chain.connect import actor_for
    from meshcompute.chain.earnings import open_jobs

    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    account = conn.contracts.account_of(who)
    if account.withdrawable == 0:
        pending = [i for i, r in open_jobs(conn.contracts, who).items() if r.committed_at]
        later = f"; {len(pending)} committed job(s) will pay once settled" if pending else ""
        raise BadInput(f"nothing to withdraw for {who}{later}")
    onchain.require_gas(conn, who)
    actor = actor_for(conn, onchain.unlock_wallet(cfg))
    before = conn.contracts.balance_of(who)
    receipt = actor.withdraw()
    after = conn.contracts.balance_of(who)
    moved = after - before
    if as_json:
        onchain.emit_json(
            {
                "address": who,
                "withdrawn": onchain.money(moved),
                "mesh": onchain.money(after),
                "tx_hash": receipt["transactionHash"].to_0x_hex(),
            }
        )
        return
    onchain.out.print(f"withdrew {onchain.mesh(moved)}; wallet now holds {onchain.mesh(after)}")


def register(app: typer.Typer) -> None:
    """Mount ``earnings`` and ``withdraw`` as top-level commands of ``app``."""
    app.command("earnings")(earnings)
    app.command("withdraw")(withdraw)
