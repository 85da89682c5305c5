"""``mesh demo``: the marketplace on one machine.

What runs today: a local anvil with the contracts deployed, a client posting a sharded job, a
market key signing assignment tickets, two honest workers and one that cheats, a verifier that
audits (every job is drawn, so the cheat is caught), settlement, slashing and the earnings read
back from the chain, with every balance reconciled against the contracts. The market service,
torch workers and the independent recomputation replace the in-process roles here as they land
(issues 3-6).
"""

from __future__ import annotations

import hashlib
import os

from rich.console import Console
from rich.table import Table

from meshcompute.chain.contracts import JobParams, MeshActor, mesh_sender
from meshcompute.chain.deploy import TOKEN, DeployParams, deploy_contracts
from meshcompute.chain.local import LocalChain
from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.core.job import JobState
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.errors import MeshError

SHARDS = 6
REWARD = 20 * TOKEN
AUDIT_FEE = 2 * TOKEN
COLLATERAL = 30 * TOKEN
PARAMS = DeployParams(challenge_window_s=5, audit_window_s=60, appeal_window_s=30,
                      unbonding_delay_s=3600, min_audit_bps=10_000)


class DemoFailed(MeshError):
    """Something in the demo did not reconcile."""


def _shard_output(spec: bytes) -> bytes:
    """The demo's stand-in computation: sha256 of the shard spec (real torch jobs come with
    the worker service)."""
    return hashlib.sha256(b"output:" + spec).digest()


def run_demo(console: Console | None = None) -> None:
    console = console or Console()
    with LocalChain() as chain:
        w3 = chain.w3()
        accts = chain.accounts
        admin_sender = mesh_sender(w3, accts[0])
        console.print(f"[bold]chain[/] anvil at {chain.rpc_url}")
        deployment = deploy_contracts(admin_sender, PARAMS, assigners=(accts[1].address,),
                                      verifiers=(accts[2].address,))
        admin = MeshActor(w3, deployment, accts[0], admin_sender)
        verifier = MeshActor(w3, deployment, accts[2])
        client = MeshActor(w3, deployment, accts[3])
        workers = [MeshActor(w3, deployment, a) for a in accts[4:7]]
        cheater = workers[2]
        for actor in [client, *workers]:
            admin.mint(actor.address, 1_000 * TOKEN)
        for worker in workers:
            worker.stake(200 * TOKEN)
        console.print("[bold]providers[/] 3 workers staked 200 MESH each (worker 3 cheats)")

        now = w3.eth.get_block("latest")["timestamp"]
        specs = [os.urandom(32) for _ in range(SHARDS)]
        ids = client.post_jobs_with_permit(
            [JobParams(s, REWARD, AUDIT_FEE, COLLATERAL, now + 600) for s in specs]
        )
        console.print(f"[bold]client[/] posted {SHARDS} shards as jobs {ids} in one transaction")

        holder = {}
        for index, job_id in enumerate(ids):
            worker = workers[index % len(workers)]
            holder[job_id] = worker
            ticket = AssignTicket(worker.address, (job_id,), 0, now + 300)
            sig = sign_ticket(ticket, accts[1], chain_id=deployment.chain_id,
                              job_market=deployment.address("JobMarket"))
            honest = _shard_output(specs[index])
            result = os.urandom(32) if worker is cheater else honest
            worker.assign_and_commit(ticket, sig, [result])
        console.print("[bold]workers[/] assigned by signed tickets, results committed")

        chain.increase_time(PARAMS.challenge_window_s + 1)
        chain.mine(2)
        admin.finalize_batch(ids)  # records the audit draws
        for index, job_id in enumerate(ids):
            record = verifier.job(job_id)
            if record.state != JobState.AUDITED:
                continue
            passed = record.result_hash == _shard_output(specs[index])
            evidence = hashlib.sha256(record.result_hash + _shard_output(specs[index])).digest()
            verifier.resolve_audit(job_id, passed, evidence)
        chain.increase_time(PARAMS.appeal_window_s + 1)
        chain.mine(1)
        admin.finalize_batch(ids)  # slashes the failed audits after the appeal window
        records = admin.job_records(ids)
        _report(console, admin, records, holder, cheater, client)


def _report(console, admin, records, holder, cheater, client) -> None:
    table = Table(title="jobs")
    for col in ("job", "worker", "state"):
        table.add_column(col)
    for job_id, record in records.items():
        table.add_row(str(job_id), record.worker[:10], record.state.name)
    console.print(table)
    fee_bps = admin.config()["fee_bps"]
    expected = {}
    for job_id, record in records.items():
        worker = holder[job_id]
        want = JobState.SLASHED if worker is cheater else JobState.FINALIZED
        if record.state != want:
            raise DemoFailed(f"job {job_id} ended {record.state.name}, expected {want.name}")
        if want == JobState.FINALIZED:
            expected[worker.address] = expected.get(worker.address, 0) + split_reward(record.reward, fee_bps)[0]
    earnings = Table(title="earnings (read from the chain)")
    for col in ("worker", "earned", "withdrawable", "completed", "slashed jobs", "stake"):
        earnings.add_column(col, justify="right")
    for worker in {id(w): w for w in holder.values()}.values():
        acct = admin.account_of(worker.address)
        rec = admin.worker_record(worker.address)
        stake = admin.stake_of(worker.address)
        if acct.earned != expected.get(worker.address, 0):
            raise DemoFailed(f"{worker.address} earned {acct.earned}, expected {expected.get(worker.address, 0)}")
        earnings.add_row(worker.address[:10], f"{acct.earned / TOKEN:.2f}", f"{acct.withdrawable / TOKEN:.2f}",
                         str(rec.completed), str(rec.slashed), f"{stake.free / TOKEN:.2f}")
    console.print(earnings)
    slashed = [r for r in records.values() if r.state == JobState.SLASHED]
    compensation = sum(r.reward + slash_split(r.collateral, r.reward, r.audit_fee)[0] for r in slashed)
    got = admin.account_of(client.address).withdrawable
    if got != compensation:
        raise DemoFailed(f"client credited {got}, expected {compensation}")
    console.print(f"[bold green]cheater caught[/]: {len(slashed)} jobs slashed, client refunded and "
                  f"compensated {compensation / TOKEN:.2f} MESH; all balances reconcile")
