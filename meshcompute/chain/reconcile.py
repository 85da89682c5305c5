"""Check a deployment's books against its own contracts (guarantee 1 of the design).

``credit.balanceOf(JobMarket) == escrow of every open job + every account's withdrawable``
and ``credit.balanceOf(StakeManager) == every staker's free + locked + unbonding``, with job
records rebuilt from events and each checked against the digest the contract stores.
Accounts are every address any event of the deployment names. Read-only: anyone can run it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from web3 import Web3

from meshcompute.chain.contracts import (
    AccountState,
    BatchViews,
    ChainEvent,
    MeshContracts,
    StakePosition,
)
from meshcompute.core.job import JOB_EVENTS, JobRecord, apply_event


@dataclass(frozen=True)
class SolvencyReport:
    market_balance: int
    escrow: int
    withdrawable: int
    stake_balance: int
    staked: int
    jobs: int
    accounts: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def event_addresses(contracts: MeshContracts) -> set[str]:
    """Every address named in an event argument of the deployment."""
    return _named_addresses(contracts.events())


def _named_addresses(events: Iterable[ChainEvent]) -> set[str]:
    found: set[str] = set()
    for event in events:
        for value in event.args.values():
            if isinstance(value, str) and Web3.is_address(value):
                found.add(Web3.to_checksum_address(value))
    found.discard("0x" + "00" * 20)
    return found


def check_solvency(contracts: MeshContracts, extra: set[str] | None = None) -> SolvencyReport:
    # Everything is read at one block, the views in one JSON-RPC batch (one web3 call per
    # job, account and seat took seconds on a stack's few hundred jobs).
    head = int(contracts.w3.eth.block_number)
    events = contracts.events(to_block=head)
    market = contracts.deployment.address("JobMarket")
    stakes = contracts.deployment.address("StakeManager")
    registry = contracts.registry.address
    records: dict[int, JobRecord] = {}
    for event in events:
        if event.name in JOB_EVENTS and event.address == market:
            job_id = int(event.args["jobId"])
            records[job_id] = apply_event(records.get(job_id), event.name, event.args)
    accounts = sorted(_named_addresses(events) | set(extra or ()))
    # every deposit the registry holds: the seats' (and any account events name)
    seats = sorted(set(accounts) | {seat.verifier for seat in contracts.verifier_seats(head)})
    views = BatchViews(contracts, head)
    market_balance = views.add(contracts.credit, "balanceOf", market)
    stake_balance = views.add(contracts.credit, "balanceOf", stakes)
    registry_balance = views.add(contracts.credit, "balanceOf", registry)
    digests = {job_id: views.add(contracts.market, "jobDigest", job_id) for job_id in records}
    owed = [views.add(contracts.market, "accountOf", a) for a in accounts]
    positions = [views.add(contracts.stakes, "stakeOf", a) for a in accounts]
    deposits_of = [views.add(contracts.registry, "seatOf", v) for v in seats]
    out = views.run()

    problems: list[str] = []
    for job_id, record in records.items():
        if contracts.expected_digest(record) != bytes(out[digests[job_id]][0]):
            problems.append(f"job {job_id}: record rebuilt from events differs from the digest")
    market_balance, stake_balance, registry_balance = (
        int(out[i][0]) for i in (market_balance, stake_balance, registry_balance))
    escrow = sum(r.escrow for r in records.values())
    withdrawable = sum(AccountState(*out[i]).withdrawable for i in owed)
    staked = 0
    for i in positions:
        position = StakePosition(*out[i])
        staked += position.free + position.locked + position.unbonding
    if market_balance != escrow + withdrawable:
        problems.append(
            f"JobMarket holds {market_balance} but owes {escrow} escrow + {withdrawable} "
            f"withdrawable = {escrow + withdrawable}"
        )
    if stake_balance != staked:
        problems.append(f"StakeManager holds {stake_balance} but stakes add up to {staked}")
    deposits = sum(int(out[i][1]) for i in deposits_of)  # seatOf: (seat, deposit, releaseAt)
    if registry_balance != deposits:
        problems.append(f"VerifierRegistry holds {registry_balance} but verifier deposits add "
                        f"up to {deposits}")
    return SolvencyReport(
        market_balance=market_balance, escrow=escrow, withdrawable=withdrawable,
        stake_balance=stake_balance, staked=staked, jobs=len(records),
        accounts=len(accounts), problems=problems,
    )
