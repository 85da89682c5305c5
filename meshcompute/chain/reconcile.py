"""Check a deployment's books against its own contracts (guarantee 1 of the design).

``credit.balanceOf(JobMarket) == escrow of every open job + every account's withdrawable``
and ``credit.balanceOf(StakeManager) == every staker's free + locked + unbonding``, with job
records rebuilt from events and each checked against the digest the contract stores.
Accounts are every address any event of the deployment names. Read-only: anyone can run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from web3 import Web3

from meshcompute.chain.contracts import MeshContracts
from meshcompute.core.job import JobRecord


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
    found: set[str] = set()
    for event in contracts.events():
        for value in event.args.values():
            if isinstance(value, str) and Web3.is_address(value):
                found.add(Web3.to_checksum_address(value))
    found.discard("0x" + "00" * 20)
    return found


def check_solvency(contracts: MeshContracts, extra: set[str] | None = None) -> SolvencyReport:
    records: dict[int, JobRecord] = contracts.job_records(verify=False)
    problems: list[str] = []
    for job_id, record in records.items():
        if not contracts.record_matches(job_id, record):
            problems.append(f"job {job_id}: record rebuilt from events differs from the digest")
    accounts = sorted(event_addresses(contracts) | set(extra or ()))
    market = contracts.deployment.address("JobMarket")
    stakes = contracts.deployment.address("StakeManager")
    market_balance = contracts.balance_of(market)
    stake_balance = contracts.balance_of(stakes)
    escrow = sum(r.escrow for r in records.values())
    withdrawable = sum(contracts.account_of(a).withdrawable for a in accounts)
    staked = 0
    for account in accounts:
        position = contracts.stake_of(account)
        staked += position.free + position.locked + position.unbonding
    if market_balance != escrow + withdrawable:
        problems.append(
            f"JobMarket holds {market_balance} but owes {escrow} escrow + {withdrawable} "
            f"withdrawable = {escrow + withdrawable}"
        )
    if stake_balance != staked:
        problems.append(f"StakeManager holds {stake_balance} but stakes add up to {staked}")
    registry_balance = contracts.balance_of(contracts.registry.address)
    deposits = sum(contracts.verifier_seat(seat.verifier).deposit  # type: ignore[union-attr]
                   for seat in contracts.verifier_seats())
    if registry_balance != deposits:
        problems.append(f"VerifierRegistry holds {registry_balance} but verifier deposits add "
                        f"up to {deposits}")
    return SolvencyReport(
        market_balance=market_balance, escrow=escrow, withdrawable=withdrawable,
        stake_balance=stake_balance, staked=staked, jobs=len(records),
        accounts=len(accounts), problems=problems,
    )
