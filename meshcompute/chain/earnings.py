"""A worker's earnings, read from the chain only (contract state and events, never the market).

Terms, from the JobMarket contract:

- **final**: the job emitted ``JobPaid``. Its pay (reward less the protocol fee) was credited
  to the worker's account in the same transaction and can never be taken back; it sits in
  ``withdrawable`` until the worker calls ``withdraw`` (``mesh withdraw``).
- **pending**: the worker committed a result and the job is not settled yet: it waits out the
  challenge window, a verifier's verdict, or an appeal. ``amount`` is what it will pay if it
  settles in the worker's favour; it is not in any balance yet.
- ``earned``, ``withdrawn``, ``withdrawable`` come from ``accountOf``. ``withdraw`` pays the
  whole balance at once, and that balance also holds audit fees (as a verifier) and refunds
  (as a client), so withdrawn/withdrawable are account totals, not per-job figures.
- ``slashed`` is the stake taken from the worker over all time (``stakeOf``), with the
  ``JobSlashed`` events that took it.

The totals are all-time; ``since``/``job_id`` narrow only the rows (``rows_total`` sums them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from eth_utils import keccak
from web3 import Web3

from meshcompute.chain.contracts import BatchViews, ChainEvent, MeshContracts
from meshcompute.chain.custom_errors import abi_type
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.payout import split_reward
from meshcompute.units import format_mesh

FINAL = "final"
PENDING = "pending"

_PENDING_STAGES = {
    JobState.COMMITTED: "challenge window",
    JobState.AUDITED: "awaiting audit verdict",
    JobState.AUDIT_FAILED: "audit failed, appealable",
    JobState.APPEALED: "appealed, awaiting verdict",
    JobState.AUDIT_PASSED: "audit passed, client may dispute",
    JobState.DISPUTED: "pass disputed, awaiting verdict",
}


@dataclass(frozen=True)
class EarningRow:
    """One paid (final) or committed-but-unsettled (pending) job of the worker."""

    job_id: int
    amount: int
    """Worker pay in wei of MESH: credited (final) or expected (pending)."""
    fee: int
    """Protocol fee taken from the reward (final) or to be taken (pending)."""
    audited: bool
    status: str
    """``final`` or ``pending`` (see the module docstring)."""
    stage: str
    """``paid``, or where a pending job waits."""
    block_number: int
    """Block of the ``JobPaid`` event (final) or of the commitment (pending)."""
    timestamp: int
    tx_hash: str


@dataclass(frozen=True)
class SlashRow:
    job_id: int
    amount: int
    client_compensation: int
    block_number: int
    timestamp: int
    tx_hash: str


@dataclass(frozen=True)
class EarningsReport:
    address: str
    rows: list[EarningRow]
    slashes: list[SlashRow]
    earned: int
    withdrawn: int
    withdrawable: int
    pending: int
    slashed: int
    completed: int
    filters: dict[str, Any] = field(default_factory=dict)

    @property
    def final_rows(self) -> list[EarningRow]:
        return [row for row in self.rows if row.status == FINAL]

    @property
    def rows_total(self) -> int:
        """Sum of the listed final rows (all of ``earned`` when no filter is set)."""
        return sum(row.amount for row in self.final_rows)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: amounts as decimal strings of wei (exact), plus MESH strings."""

        def money(value: int) -> dict[str, str]:
            return {"wei": str(value), "mesh": format_mesh(value)}

        return {
            "address": self.address,
            "filters": self.filters,
            "rows": [
                {**asdict(row), "amount": money(row.amount), "fee": money(row.fee)}
                for row in self.rows
            ],
            "slashes": [
                {
                    **asdict(s),
                    "amount": money(s.amount),
                    "client_compensation": money(s.client_compensation),
                }
                for s in self.slashes
            ],
            "totals": {
                "earned": money(self.earned),
                "withdrawn": money(self.withdrawn),
                "withdrawable": money(self.withdrawable),
                "pending": money(self.pending),
                "slashed": money(self.slashed),
                "rows_total": money(self.rows_total),
                "completed_jobs": self.completed,
            },
        }


def earnings_report(
    contracts: MeshContracts,
    address: str,
    *,
    since_block_time: int | None = None,
    job_id: int | None = None,
) -> EarningsReport:
    """The earnings of ``address`` from contract state and events (see the module docstring)."""
    address = Web3.to_checksum_address(address)
    from_block = None
    if since_block_time is not None:
        from_block = first_block_at_or_after(contracts, since_block_time)
    times = BlockTimes(contracts.w3)
    job_topic = None if job_id is None else [_uint_topic(job_id)]
    paid = _worker_events(contracts, "JobPaid", address, from_block, job_topic)
    rows = [
        EarningRow(
            job_id=int(e.args["jobId"]),
            amount=int(e.args["amount"]),
            fee=int(e.args["fee"]),
            audited=bool(e.args["audited"]),
            status=FINAL,
            stage="paid",
            block_number=e.block_number,
            timestamp=times.of(e.block_number),
            tx_hash=e.tx_hash,
        )
        for e in paid
    ]
    fee_bps = int(contracts.config()["fee_bps"])
    slashed = _worker_events(contracts, "JobSlashed", address, from_block, job_topic)
    # unfiltered, the paid and slashed jobs are every job of the worker that ended that way
    ended = ({row.job_id for row in rows} | {int(e.args["jobId"]) for e in slashed}
             if from_block is None and job_id is None else set())
    for open_id, record in sorted(open_jobs(contracts, address, ended=ended).items()):
        if record.state not in _PENDING_STAGES:
            continue
        if job_id is not None and open_id != job_id:
            continue
        if since_block_time is not None and record.committed_at < since_block_time:
            continue
        pay, fee = split_reward(record.reward, fee_bps)
        rows.append(
            EarningRow(
                job_id=open_id,
                amount=pay,
                fee=fee,
                audited=record.state != JobState.COMMITTED,
                status=PENDING,
                stage=_PENDING_STAGES[record.state],
                block_number=record.committed_block,
                timestamp=record.committed_at,
                tx_hash="",
            )
        )
    slashes = [
        SlashRow(
            job_id=int(e.args["jobId"]),
            amount=int(e.args["slashed"]),
            client_compensation=int(e.args["clientCompensation"]),
            block_number=e.block_number,
            timestamp=times.of(e.block_number),
            tx_hash=e.tx_hash,
        )
        for e in slashed
    ]
    account = contracts.account_of(address)
    position = contracts.stake_of(address)
    filters: dict[str, Any] = {}
    if since_block_time is not None:
        filters["since_block_time"] = since_block_time
    if job_id is not None:
        filters["job_id"] = job_id
    return EarningsReport(
        address=address,
        rows=rows,
        slashes=slashes,
        earned=account.earned,
        withdrawn=account.withdrawn,
        withdrawable=account.withdrawable,
        pending=sum(row.amount for row in rows if row.status == PENDING),
        slashed=position.slashed,
        completed=account.completed,
        filters=filters,
    )


def open_jobs(contracts: MeshContracts, worker: str, *,
              ended: Iterable[int] = ()) -> dict[int, JobRecord]:
    """Jobs currently held by ``worker`` (assigned or committed, not yet terminal), rebuilt
    from events and checked against the contract's digests.

    Every job the worker ever took is a candidate; ``ended`` (ids the caller already knows
    ended: paid or slashed) are left out, then one batch of ``jobDigest`` reads drops the
    jobs the contract closed (a closed job's digest is zero), so only the few still open are
    rebuilt from their events: a provider with thousands of paid jobs costs two log reads and
    one batch, not a rebuild of its whole history."""
    worker = Web3.to_checksum_address(worker)
    # assignAndCommit emits no JobAssigned (its JobCommitted carries the lease), so jobs taken
    # that way are found by their JobCommitted events.
    head = int(contracts.w3.eth.block_number)
    ids = {
        int(e.args["jobId"])
        for name in ("JobAssigned", "JobCommitted")
        for e in _worker_events(contracts, name, worker, None, None, to_block=head)
    } - set(ended)
    if not ids:
        return {}
    views = BatchViews(contracts, head)
    asked = {job_id: views.add(contracts.market, "jobDigest", job_id) for job_id in sorted(ids)}
    digests = views.run()
    digest = {i: bytes(digests[at][0]) for i, at in asked.items()}
    alive = sorted(i for i, value in digest.items() if any(value))
    if not alive:
        return {}
    held = {}
    for i, record in contracts.job_records(alive, verify=False).items():
        if contracts.expected_digest(record) != digest[i]:
            # a transaction after the digests were read: the contract's word, read again
            record = contracts.job_records([i], verify=True)[i]
        if not record.state.terminal and record.worker == worker \
                and record.state != JobState.POSTED:
            held[i] = record
    return held


def first_block_at_or_after(contracts: MeshContracts, timestamp: int) -> int:
    """The first block (from the deployment on) whose timestamp is >= ``timestamp``;
    one past the head when none is yet."""
    w3 = contracts.w3
    lo = contracts.deployment.block
    hi = int(w3.eth.block_number)
    if int(w3.eth.get_block(hi)["timestamp"]) < timestamp:
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if int(w3.eth.get_block(mid)["timestamp"]) >= timestamp:
            hi = mid
        else:
            lo = mid + 1
    return lo


def event_topic(contracts: MeshContracts, name: str) -> str:
    """The topic-0 hash of the named event of the three contracts."""
    for contract in (contracts.market, contracts.stakes, contracts.credit):
        for item in contract.abi:
            if item.get("type") == "event" and item["name"] == name:
                types = ",".join(abi_type(i) for i in item["inputs"])
                return "0x" + keccak(text=f"{name}({types})").hex()
    raise KeyError(f"no event named {name}")


def _worker_events(
    contracts: MeshContracts,
    name: str,
    worker: str,
    from_block: int | None,
    job_topic: list[str] | None,
    *,
    to_block: int | str = "latest",
) -> list[ChainEvent]:
    """JobMarket events ``name(uint256 indexed jobId, address indexed worker, ...)``."""
    if from_block is not None and from_block > contracts.w3.eth.block_number:
        return []  # nodes refuse a range that starts past the head
    return contracts.events(
        from_block,
        to_block,
        topics=[event_topic(contracts, name), job_topic, _address_topic(worker)],
        addresses=[contracts.deployment.address("JobMarket")],
    )


def _address_topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def _uint_topic(value: int) -> str:
    return "0x" + int(value).to_bytes(32, "big").hex()


class BlockTimes:
    """Block timestamps, fetched once per block."""

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3
        self._cache: dict[int, int] = {}

    def of(self, block_number: int) -> int:
        if block_number not in self._cache:
            self._cache[block_number] = int(self._w3.eth.get_block(block_number)["timestamp"])
        return self._cache[block_number]
