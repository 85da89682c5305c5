"""``mesh provider``: stake credits to take jobs, unstake (with the unbonding delay), status."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meshcompute.errors import BadInput
from meshcompute.mesh.cli import onchain
from meshcompute.units import parse_mesh

app = typer.Typer(no_args_is_help=True, help="Stake, unstake and inspect a provider's position.")
provider_app = app

AmountArg = Annotated[str, typer.Argument(help="MESH, up to 18 decimals (e.g. 12.5).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@provider_app.command("stake")
def provider_stake(
    amount: AmountArg,
    as_json: JsonOption = False,
    if_unstaked: Annotated[bool, typer.Option(
        help="Do nothing when the wallet already has stake (for container entrypoints).")] = False,
) -> None:
    """Stake AMOUNT MESH from the wallet (approves the stake manager first when needed)."""
    from meshcompute.chain.connect import actor_for

    wei = parse_mesh(amount)
    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    if if_unstaked:
        position = conn.contracts.stake_of(who)
        if position.free + position.locked > 0:
            _print_position(conn, who, as_json, "already staked; nothing sent")
            return
    onchain.require_balance(conn, who, wei, f"staking {onchain.mesh(wei)}")
    onchain.require_gas(conn, who)
    actor = actor_for(conn, onchain.unlock_wallet(cfg))
    actor.stake(wei)
    _print_position(conn, who, as_json, f"staked {onchain.mesh(wei)}")


@provider_app.command("unstake")
def provider_unstake(amount: AmountArg, as_json: JsonOption = False) -> None:
    """Start unbonding AMOUNT of free stake.

    Withdraw it with `mesh provider withdraw-unbonded` after the unbonding delay.
    """
    from meshcompute.chain.connect import actor_for

    wei = parse_mesh(amount)
    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    position = conn.contracts.stake_of(who)
    if position.free < wei:
        advice = "unstake less"
        if position.locked:
            advice = "wait for your jobs to settle or " + advice
        raise BadInput(
            f"you have {onchain.mesh(position.free)} free stake ({onchain.mesh(position.locked)} "
            f"locked in jobs); unstaking {onchain.mesh(wei)} needs "
            f"{onchain.mesh(wei - position.free)} more free stake: {advice}"
        )
    onchain.require_gas(conn, who)
    actor = actor_for(conn, onchain.unlock_wallet(cfg))
    actor.unstake(wei)
    _print_position(conn, who, as_json, f"unstaking {onchain.mesh(wei)}")


@provider_app.command("withdraw-unbonded")
def provider_withdraw_unbonded(as_json: JsonOption = False) -> None:
    """Move stake whose unbonding delay has passed back to the wallet."""
    from meshcompute.chain.connect import actor_for

    cfg = onchain.settings()
    conn = onchain.connect_chain(cfg)
    who = onchain.my_address(cfg)
    position = conn.contracts.stake_of(who)
    if position.unbonding == 0:
        raise BadInput("nothing is unbonding: start with `mesh provider unstake AMOUNT`")
    now = int(conn.w3.eth.get_block("latest")["timestamp"])
    if position.release_at > now:
        raise BadInput(
            f"{onchain.mesh(position.unbonding)} is still unbonding until "
            f"{onchain.when(position.release_at)}; run this again after that"
        )
    onchain.require_gas(conn, who)
    actor = actor_for(conn, onchain.unlock_wallet(cfg))
    actor.withdraw_unbonded()
    _print_position(conn, who, as_json, f"withdrew {onchain.mesh(position.unbonding)}")


@provider_app.command("status")
def provider_status(
    address: Annotated[
        str | None, typer.Option(help="Any provider's address (default: this wallet's).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Free, locked and unbonding stake; jobs in progress (from chain events); reliability."""
    cfg = onchain.settings()
    who = onchain.my_address(cfg, address, can_pass="--address")
    conn = onchain.connect_chain(cfg)
    status = provider_status_data(conn, who)
    if as_json:
        onchain.emit_json(status)
        return
    out = onchain.out
    stake = status["stake"]
    out.print(f"provider   {who}  (chain id {conn.chain_id})")
    out.print(f"wallet     {stake['wallet']['mesh']} MESH")
    out.print(f"free       {stake['free']['mesh']} MESH")
    out.print(f"locked     {stake['locked']['mesh']} MESH (collateral of jobs in progress)")
    unbonding = f"unbonding  {stake['unbonding']['mesh']} MESH"
    if stake["release_at"]:
        unbonding += f" (released {onchain.when(stake['release_at'])})"
    out.print(unbonding)
    out.print(f"slashed    {stake['slashed']['mesh']} MESH (all time)")
    record = status["record"]
    out.print(
        f"record     {record['completed']} completed, {record['missed']} missed, "
        f"{record['slashed']} slashed, {record['audits_passed']} audits passed"
    )
    local = status.get("this_machine")
    if local:
        earned = int(local.get("earned_since_start_wei") or 0) / 10**18
        out.print(f"worker     {local['state'].replace('_', ' ')} ({local['reason']}); active "
                  f"{local['active_s']:.0f} s, paused {local['paused_s']:.0f} s since it "
                  f"started; earned {earned:g} MESH meanwhile")
    jobs = status["jobs_in_progress"]
    if not jobs:
        out.print("jobs       none in progress")
        return
    from rich.table import Table

    table = Table(title=f"{len(jobs)} job(s) in progress")
    for column in ("job", "state", "reward MESH", "collateral MESH", "deadline"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            str(job["job_id"]),
            job["state"],
            job["reward"]["mesh"],
            job["collateral"]["mesh"],
            onchain.when(job["deadline"]),
        )
    out.print(table)


def _local_worker(who: str) -> dict[str, Any] | None:
    """This machine's worker for ``who``, from its health record: whether it is active,
    paused for the owner or outside its hours (``--when idle``, ``--hours``), and what it
    earned since it started; None when no worker of that address runs here."""
    import json

    from meshcompute.settings import get_settings

    path = get_settings().data_dir / "worker-health.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if str(record.get("address", "")).lower() != who.lower() or record.get("state") == "stopped":
        return None
    availability = record.get("availability")
    return availability if isinstance(availability, dict) else None


def provider_status_data(conn: Any, who: str) -> dict[str, Any]:
    """Everything ``mesh provider status`` shows, as plain JSON-able data."""
    from meshcompute.chain.earnings import open_jobs

    contracts = conn.contracts
    position = contracts.stake_of(who)
    record = contracts.worker_record(who)
    jobs = open_jobs(contracts, who)
    return {
        "address": who,
        "chain_id": conn.chain_id,
        "this_machine": _local_worker(who),
        "stake": {
            "wallet": onchain.money(contracts.balance_of(who)),
            "free": onchain.money(position.free),
            "locked": onchain.money(position.locked),
            "unbonding": onchain.money(position.unbonding),
            "release_at": position.release_at,
            "slashed": onchain.money(position.slashed),
        },
        "record": {
            "completed": record.completed,
            "missed": record.missed,
            "slashed": record.slashed,
            "audits_passed": record.audits_passed,
        },
        "jobs_in_progress": [
            {
                "job_id": job_id,
                "state": job.state.name.lower(),
                "reward": onchain.money(job.reward),
                "collateral": onchain.money(job.collateral),
                "deadline": job.deadline,
                "lease_expiry": job.lease_expiry,
            }
            for job_id, job in sorted(jobs.items())
        ],
    }


def _print_position(conn: Any, who: str, as_json: bool, done: str) -> None:
    position = conn.contracts.stake_of(who)
    if as_json:
        onchain.emit_json(
            {
                "address": who,
                "done": done,
                "free": onchain.money(position.free),
                "locked": onchain.money(position.locked),
                "unbonding": onchain.money(position.unbonding),
                "release_at": position.release_at,
                "mesh": onchain.money(conn.contracts.balance_of(who)),
            }
        )
        return
    line = (
        f"{done}; stake now {onchain.mesh(position.free)} free, "
        f"{onchain.mesh(position.locked)} locked, {onchain.mesh(position.unbonding)} unbonding"
    )
    if position.unbonding:
        line += f" (released {onchain.when(position.release_at)})"
    onchain.out.print(line)
