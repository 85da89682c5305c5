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

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from eth_utils import keccak
from web3 import Web3
from web3.exceptions import BlockNotFound

from meshcompute.chain.contracts import BatchViews, ChainEvent, MeshContracts
from meshcompute.chain.custom_errors import abi_type
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.payout import split_reward
from meshcompute.errors import ChainError
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
    JobState.APPEAL_CONTESTED: "failure overturned on appeal, awaiting a third verifier",
    JobState.DISPUTE_CONTESTED: "pass overturned on dispute, awaiting a third verifier",
    JobState.VOID_PROPOSED: "void proposed, awaiting a second verifier",
    JobState.FAILURE_UPHELD: "failure upheld on appeal, escalatable",
    JobState.PASS_UPHELD: "pass upheld on dispute, client may escalate",
    JobState.FAILURE_ESCALATED: "upheld failure escalated, awaiting a third verifier",
    JobState.PASS_ESCALATED: "upheld pass escalated, awaiting a third verifier",
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
    """The earnings of ``address`` from contract state and events (see the module docstring).
    Unfiltered, it is :meth:`EarningsLedger.report` of a fresh ledger (the dashboard keeps one
    ledger and extends it block by block: the same code, so the same figures)."""
    if since_block_time is None and job_id is None:
        return EarningsLedger(contracts, size=1).report(address)
    address = Web3.to_checksum_address(address)
    from_block = None
    if since_block_time is not None:
        from_block = first_block_at_or_after(contracts, since_block_time)
    times = BlockTimes(contracts.w3)
    job_topic = None if job_id is None else [_uint_topic(job_id)]
    paid = _worker_events(contracts, "JobPaid", address, from_block, job_topic)
    slashed = _worker_events(contracts, "JobSlashed", address, from_block, job_topic)
    times.prefetch(e.block_number for e in paid + slashed)
    pending = [
        row for row in _pending_rows(contracts, open_jobs(contracts, address))
        if (job_id is None or row.job_id == job_id)
        and (since_block_time is None or row.timestamp >= since_block_time)
    ]
    filters: dict[str, Any] = {}
    if since_block_time is not None:
        filters["since_block_time"] = since_block_time
    if job_id is not None:
        filters["job_id"] = job_id
    return _assemble(contracts, address, paid, slashed, pending, times.of, filters)


def _paid_row(e: ChainEvent, timestamp: int) -> EarningRow:
    return EarningRow(job_id=int(e.args["jobId"]), amount=int(e.args["amount"]),
                      fee=int(e.args["fee"]), audited=bool(e.args["audited"]), status=FINAL,
                      stage="paid", block_number=e.block_number, timestamp=timestamp,
                      tx_hash=e.tx_hash)


def _slash_row(e: ChainEvent, timestamp: int) -> SlashRow:
    return SlashRow(job_id=int(e.args["jobId"]), amount=int(e.args["slashed"]),
                    client_compensation=int(e.args["clientCompensation"]),
                    block_number=e.block_number, timestamp=timestamp, tx_hash=e.tx_hash)


def _pending_rows(contracts: MeshContracts, held: dict[int, JobRecord]) -> list[EarningRow]:
    """A row for each job the worker holds that waits to settle (what it will pay)."""
    fee_bps = int(contracts.config()["fee_bps"])
    rows = []
    for open_id, record in sorted(held.items()):
        if record.state not in _PENDING_STAGES:
            continue
        pay, fee = split_reward(record.reward, fee_bps)
        rows.append(EarningRow(job_id=open_id, amount=pay, fee=fee,
                               audited=record.state != JobState.COMMITTED, status=PENDING,
                               stage=_PENDING_STAGES[record.state],
                               block_number=record.committed_block,
                               timestamp=record.committed_at, tx_hash=""))
    return rows


def _assemble(contracts: MeshContracts, address: str, paid: list[ChainEvent],
              slashed: list[ChainEvent], pending: list[EarningRow],
              time_of: Any, filters: dict[str, Any]) -> EarningsReport:
    rows = [_paid_row(e, time_of(e.block_number)) for e in paid] + pending
    account = contracts.account_of(address)
    position = contracts.stake_of(address)
    return EarningsReport(
        address=address,
        rows=rows,
        slashes=[_slash_row(e, time_of(e.block_number)) for e in slashed],
        earned=account.earned,
        withdrawn=account.withdrawn,
        withdrawable=account.withdrawable,
        pending=sum(row.amount for row in pending),
        slashed=position.slashed,
        completed=account.completed,
        filters=filters,
    )


#: The events of a worker an unfiltered report reads (each has ``jobId`` as its first indexed
#: topic and ``worker`` as its second).
_LEDGER_EVENTS = ("JobPaid", "JobSlashed", "JobAssigned", "JobCommitted")

#: Blocks under the head a ledger re-reads on every report instead of keeping: a node may
#: answer for its newest block before that block's logs are stored (see
#: :meth:`MeshContracts.job_records`), and a shallow reorganization lands there.
CONFIRMATIONS = 3


@dataclass
class _Scan:
    """What one worker's logs said, from the deployment to ``block`` (whose hash was
    ``block_hash``)."""

    block: int
    block_hash: bytes
    paid: list[ChainEvent] = field(default_factory=list)
    slashed: list[ChainEvent] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    """Every job the worker took (``JobAssigned``, or ``JobCommitted`` of assignAndCommit)."""
    times: dict[int, int] = field(default_factory=dict)
    """Timestamps of the blocks of ``paid`` and ``slashed``."""

    def add(self, events: Iterable[ChainEvent]) -> None:
        for e in events:
            if e.name == "JobPaid":
                self.paid.append(e)
            elif e.name == "JobSlashed":
                self.slashed.append(e)
            else:
                self.taken.add(int(e.args["jobId"]))


class EarningsLedger:
    """Unfiltered earnings reports of many workers, each kept between reports and extended
    with the logs of the blocks since (one log read per report, not the worker's whole
    history: the dashboard's provider page).

    Reorg-safe: a worker's kept scan ends ``CONFIRMATIONS`` blocks under the head it was read
    at and remembers that block's hash; a report whose kept block no longer has that hash
    (the chain reorganized under it) reads the worker's history again from the deployment.
    The blocks above the kept one are read again on every report. Bounded: at most ``size``
    workers are kept, the least recently reported go first."""

    def __init__(self, contracts: MeshContracts, size: int = 256) -> None:
        self.contracts = contracts
        self._size = size
        self._lock = threading.Lock()
        self._scans: OrderedDict[str, _Scan] = OrderedDict()
        # one report of an address at a time, by stripes (a lock per address ever asked for
        # would grow without bound under a flood of random addresses)
        self._stripes = [threading.Lock() for _ in range(64)]
        self.rebuilds = 0
        """Reports that read a worker's history from the deployment (first ones, reorgs)."""

    def report(self, address: str) -> EarningsReport:
        address = Web3.to_checksum_address(address)
        # hash() of a str is salted per process: nobody can pick addresses that queue behind
        # a given provider's lock
        with self._stripes[hash(address) % len(self._stripes)]:
            for _attempt in range(3):
                report = self._report(address)
                if report is not None:
                    return report
            raise ChainError(f"the chain kept reorganizing while the earnings of {address} "
                             "were read; try again")

    def _report(self, address: str) -> EarningsReport | None:
        contracts, w3 = self.contracts, self.contracts.w3
        head = int(w3.eth.block_number)
        base = max(0, int(contracts.deployment.block) - 1)
        stable = max(base, head - CONFIRMATIONS)
        stable_hash = _hash_of(w3, stable)  # before any log is read; checked after
        with self._lock:
            scan = self._scans.pop(address, None)
        if scan is not None and (scan.block > stable
                                 or _hash_of(w3, scan.block) != scan.block_hash):
            scan = None  # reorganized under it (or a node behind the last one): read it all
        if scan is None:
            self.rebuilds += 1
            scan = _Scan(block=base, block_hash=_hash_of(w3, base))
        grown = _Scan(scan.block, scan.block_hash, list(scan.paid), list(scan.slashed),
                      set(scan.taken), dict(scan.times))
        if stable > grown.block:
            grown.add(self._events(address, grown.block + 1, stable))
            grown.block, grown.block_hash = stable, stable_hash
        tail = _Scan(grown.block, grown.block_hash)
        if head > grown.block:
            tail.add(self._events(address, grown.block + 1, head))
        paid, slashed = grown.paid + tail.paid, grown.slashed + tail.slashed
        ended = {int(e.args["jobId"]) for e in paid + slashed}
        held = _held(contracts, address, (grown.taken | tail.taken) - ended, head)
        missing = {e.block_number for e in paid + slashed} - set(grown.times)
        times = {**grown.times, **_block_times(w3, missing)}
        if _hash_of(w3, stable) != stable_hash:
            return None  # reorganized while it was read: read again
        grown.times = {b: t for b, t in times.items() if b <= grown.block}
        if grown.paid or grown.slashed or grown.taken:
            # an address with no history is not kept: views of random addresses (one log
            # read each) cannot push the providers' kept histories out
            with self._lock:
                self._scans[address] = grown
                while len(self._scans) > self._size:
                    self._scans.popitem(last=False)
        return _assemble(contracts, address, paid, slashed, _pending_rows(contracts, held),
                         times.__getitem__, {})

    def _events(self, address: str, from_block: int, to_block: int) -> list[ChainEvent]:
        contracts = self.contracts
        return contracts.events(
            from_block, to_block,
            topics=[[event_topic(contracts, name) for name in _LEDGER_EVENTS], None,
                    _address_topic(address)],
            addresses=[contracts.deployment.address("JobMarket")])


def _hash_of(w3: Web3, block: int) -> bytes:
    """The hash of block ``block``; empty when the node has no such block (the chain got
    shorter: a reorganization), which matches no kept hash."""
    try:
        return bytes(w3.eth.get_block(block)["hash"])
    except BlockNotFound:
        return b""


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
    return _held(contracts, worker, ids, head)


def _held(contracts: MeshContracts, worker: str, ids: Iterable[int],
          head: int) -> dict[int, JobRecord]:
    """Of the jobs ``ids`` the worker took, those it still holds: one batch of ``jobDigest``
    reads at ``head`` drops the ones the contract closed, the rest are rebuilt from events."""
    ids = sorted(ids)
    if not ids:
        return {}
    views = BatchViews(contracts, head)
    asked = {job_id: views.add(contracts.market, "jobDigest", job_id) for job_id in ids}
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


def _block_times(w3: Web3, blocks: Iterable[int]) -> dict[int, int]:
    """Timestamps of ``blocks``, read in JSON-RPC batches of at most 100 (a limit hosted
    nodes accept)."""
    wanted = sorted(set(blocks))
    out: dict[int, int] = {}
    for first in range(0, len(wanted), 100):
        chunk = wanted[first:first + 100]
        responses = w3.provider.make_batch_request(  # type: ignore[attr-defined]
            [("eth_getBlockByNumber", [hex(b), False]) for b in chunk])
        if not isinstance(responses, list) or len(responses) != len(chunk):
            raise ChainError(f"a batch of {len(chunk)} block reads failed: {responses}")
        for response in responses:
            if not isinstance(response, dict) or "error" in response \
                    or not response.get("result") or response.get("id") is None:
                raise ChainError(f"a block read of a batch failed: {response}")
        for block, response in zip(chunk, sorted(responses, key=lambda r: int(r["id"])),
                                   strict=True):
            out[block] = int(response["result"]["timestamp"], 16)
    return out


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

    def prefetch(self, blocks: Iterable[int]) -> None:
        """Read the timestamps of ``blocks`` in batches (instead of one request each)."""
        self._cache.update(_block_times(self._w3, set(blocks) - set(self._cache)))

    def of(self, block_number: int) -> int:
        if block_number not in self._cache:
            self._cache[block_number] = int(self._w3.eth.get_block(block_number)["timestamp"])
        return self._cache[block_number]
