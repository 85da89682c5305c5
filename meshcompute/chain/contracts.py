"""Typed bindings for MeshCredit, StakeManager and JobMarket.

:class:`MeshContracts` reads (views, events, job records rebuilt from events);
:class:`MeshActor` adds the writes of one account, sent through its own nonce-managed
:class:`~meshcompute.chain.sender.TxSender`. Reverts come back as the exception class of the
contract's custom error (see :mod:`meshcompute.chain.custom_errors`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.types import TxReceipt

from meshcompute.chain.artifacts import load_artifact
from meshcompute.chain.custom_errors import abi_type, decode_custom_error, revert_class
from meshcompute.chain.deploy import Deployment
from meshcompute.chain.reverts import contract_revert, revert_data_bytes
from meshcompute.chain.sender import TxSender
from meshcompute.chain.tickets import AssignTicket, sign_permit
from meshcompute.core.audit_draw import VerifierSeat
from meshcompute.core.job import (
    JOB_EVENTS,
    ZERO_HASH,
    JobRecord,
    JobState,
    apply_event,
    escalation_bond,
)
from meshcompute.errors import BadInput, ChainError, ConfigError, StaleJobRecord


@dataclass(frozen=True)
class JobParams:
    """What a client chooses for one job (mirrors the Solidity ``JobParams``)."""

    spec_hash: bytes
    reward: int
    audit_fee: int
    collateral: int
    deadline: int
    audit_bps: int = 0

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.spec_hash,
            self.reward,
            self.audit_fee,
            self.collateral,
            self.deadline,
            self.audit_bps,
        )


@dataclass(frozen=True)
class ChainEvent:
    """One decoded contract event with the position needed to order and rewind it."""

    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    address: str


@dataclass(frozen=True)
class StakePosition:
    free: int
    locked: int
    unbonding: int
    release_at: int
    slashed: int


@dataclass(frozen=True)
class AccountState:
    withdrawable: int
    earned: int
    withdrawn: int
    completed: int


@dataclass(frozen=True)
class WorkerRecord:
    completed: int
    missed: int
    slashed: int
    audits_passed: int


class MeshContracts:
    """Read access to one deployment."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self._first_blocks: OrderedDict[int, int] = OrderedDict()
        """Job id -> the block of its first event (JobPosted), as last read: a job's events
        are read from there, not from the deployment block (see :meth:`job_records`)."""
        self._first_blocks_lock = threading.Lock()
        self.deployment = deployment
        self.credit = self._contract("MeshCredit")
        self.stakes = self._contract("StakeManager")
        self.market = self._contract("JobMarket")
        self.registry = self._contract("VerifierRegistry")
        self._events_by_topic: dict[bytes, tuple[str, dict[str, Any]]] = {}
        for contract in (self.credit, self.stakes, self.registry, self.market):
            for item in contract.abi:
                if item.get("type") == "event":
                    types = ",".join(abi_type(i) for i in item["inputs"])
                    topic = keccak(text=f"{item['name']}({types})")
                    self._events_by_topic[topic] = (item["name"], item)
        self._event_codecs: dict[bytes, _EventCodec] = {
            topic: _EventCodec.of(name, abi) for topic, (name, abi) in self._events_by_topic.items()
        }
        self._call_codecs: dict[tuple[str, str], tuple[bytes, list[str]]] = {}
        self._config: dict[str, int] | None = None
        self._job_event_topics = [
            "0x" + topic.hex()
            for topic, (name, _abi) in self._events_by_topic.items()
            if name in JOB_EVENTS
        ]

    def _contract(self, name: str) -> Any:
        if name not in self.deployment.addresses:
            raise ConfigError(
                f"the deployment record for chain id {self.deployment.chain_id} has no {name}: "
                "it predates this version of the contracts; deploy them again "
                "(`mesh chain deploy`, or `mesh chain up` on a development chain)")
        return self.w3.eth.contract(
            address=self.deployment.address(name), abi=load_artifact(name)["abi"]
        )

    # ------------------------------------------------------------------ token and stake
    def balance_of(self, account: str) -> int:
        return int(self.credit.functions.balanceOf(account).call())

    def allowance(self, owner: str, spender: str) -> int:
        return int(self.credit.functions.allowance(owner, spender).call())

    def stake_of(self, staker: str) -> StakePosition:
        return StakePosition(*(int(v) for v in self.stakes.functions.stakeOf(staker).call()))

    def free_stake(self, staker: str) -> int:
        return int(self.stakes.functions.freeStake(staker).call())

    # ------------------------------------------------------------------ market views
    # ------------------------------------------------------------------ verifier registry
    def verifier_seats(self, block: int | str = "latest") -> list[VerifierSeat]:
        """Every seat of the verifier registry (deposits not included)."""
        seats = self.registry.functions.seats().call(block_identifier=block)
        return [VerifierSeat(Web3.to_checksum_address(v), int(units), int(start), int(until))
                for v, units, start, until in seats]

    def verifier_seat(self, verifier: str) -> VerifierSeat | None:
        """``verifier``'s seat with its deposit, or None when it holds none."""
        (v, units, start, until), deposit, release = self.registry.functions.seatOf(verifier).call()
        if int(v, 16) == 0:
            return None
        return VerifierSeat(Web3.to_checksum_address(v), int(units), int(start), int(until),
                            int(deposit), int(release))

    def verifier_reserved(self, verifier: str) -> int:
        """How much of ``verifier``'s deposit answers for overturns whose contests are open."""
        return int(self.registry.functions.reservedOf(verifier).call())

    def registry_terms(self) -> tuple[int, int]:
        """(deposit per unit of weight, exit delay in seconds) of the verifier registry."""
        minimum, exit_delay = self.registry.functions.terms().call()
        return int(minimum), int(exit_delay)

    def account_of(self, account: str) -> AccountState:
        return AccountState(*(int(v) for v in self.market.functions.accountOf(account).call()))

    def worker_record(self, worker: str) -> WorkerRecord:
        return WorkerRecord(*(int(v) for v in self.market.functions.workerRecord(worker).call()))

    def next_job_id(self) -> int:
        return int(self.market.functions.nextJobId().call())

    def job_digest(self, job_id: int, block: int | str = "latest") -> bytes:
        return bytes(self.market.functions.jobDigest(job_id).call(block_identifier=block))

    def config(self) -> dict[str, int]:
        """JobMarket's fee, minimum audit rate and windows: immutable in the contract, so
        read from the chain once."""
        if self._config is None:
            fee, min_audit, challenge, audit, appeal, deterrence = (
                self.market.functions.config().call()
            )
            self._config = {
                "fee_bps": fee,
                "min_audit_bps": min_audit,
                "challenge_window_s": challenge,
                "audit_window_s": audit,
                "appeal_window_s": appeal,
                "audit_deterrence": int(bool(deterrence)),
            }
        return dict(self._config)

    def audit_status(self, job_id: int, record: JobRecord) -> tuple[bool, bool]:
        drawable, audited = self.market.functions.auditStatus(job_id, record.as_tuple()).call()
        return bool(drawable), bool(audited)

    def assigned_verifier(self, job_id: int, record: JobRecord | None = None) -> str | None:
        """The verifier the draw assigns to the job's pending verdict (audit, appeal or
        dispute, contest, void confirmation, escalation) at the latest block: only it may post
        the verdict (escalating to the next one in the second half of the window). None when no
        verifier may (none other than the job's parties is registered), or not yet (a later
        verdict's draw waits for the block after the transaction that opened it)."""
        try:
            address = self._view(self.market.functions.assignedVerifier(
                job_id, (record or self.job(job_id)).as_tuple()))
        except StaleJobRecord:
            if record is not None:
                raise
            # the job moved between reading its record and the call: read it once more
            address = self._view(self.market.functions.assignedVerifier(
                job_id, self.job(job_id).as_tuple()))
        return None if int(address, 16) == 0 else Web3.to_checksum_address(address)

    @staticmethod
    def _view(call: Any) -> Any:
        """``call.call()`` with a revert raised as the contract's custom error (the error tree)."""
        try:
            return call.call()
        except ContractLogicError as exc:
            raise contract_revert(revert_data_bytes(exc.data), decoder=decode_custom_error,
                                  revert_class=revert_class, contract="JobMarket") from exc

    def hash_job(self, record: JobRecord) -> bytes:
        """keccak256(abi.encode(record)), computed locally like the contract does."""
        encoded = self.w3.codec.encode([_JOB_TUPLE_TYPE], [record.as_tuple()])
        return keccak(encoded)

    def expected_digest(self, record: JobRecord) -> bytes:
        """What ``jobDigest`` reads for a job whose current record is ``record``: its hash
        while the job is open, zero once it has ended (Finalized, Slashed, Refunded), since
        the contract clears the slot of an ended job."""
        return ZERO_HASH if record.state.terminal else self.hash_job(record)

    def record_matches(self, job_id: int, record: JobRecord, block: int | str = "latest") -> bool:
        """Whether ``record`` is the current record of ``job_id`` as the contract stores it
        (for an ended job: that the contract's slot is cleared)."""
        return self.expected_digest(record) == self.job_digest(job_id, block)

    def encoded_call(self, contract: Any, fn_name: str, *args: Any) -> dict[str, Any]:
        """``to`` and ``data`` of a transaction calling ``contract.fn_name(*args)``, encoded
        with the ABI codec directly: web3's contract-function path validates and normalises
        every argument, which costs more than the transaction for batches of hundreds of
        records. ``args`` must already be ABI values (tuples for structs, bytes for bytes32);
        the codec still refuses a value that does not fit its type."""
        key = (contract.address, fn_name)
        entry = self._call_codecs.get(key)
        if entry is None:
            matches = [item for item in contract.abi
                       if item.get("type") == "function" and item["name"] == fn_name]
            if len(matches) != 1:
                raise BadInput(f"{fn_name} is not one function of {contract.address}")
            types = [abi_type(i) for i in matches[0]["inputs"]]
            selector = keccak(text=f"{fn_name}({','.join(types)})")[:4]
            entry = self._call_codecs[key] = (selector, types)
        selector, types = entry
        if len(args) != len(types):
            raise BadInput(f"{fn_name} takes {len(types)} arguments, got {len(args)}")
        data = selector + self.w3.codec.encode(types, list(args))
        return {"to": contract.address, "data": "0x" + data.hex()}

    # ------------------------------------------------------------------ events
    def events(
        self,
        from_block: int | None = None,
        to_block: int | str = "latest",
        *,
        topics: list[Any] | None = None,
        addresses: Sequence[str] | None = None,
    ) -> list[ChainEvent]:
        """Decoded events of the three contracts, in chain order."""
        flt: dict[str, Any] = {
            "fromBlock": self.deployment.block if from_block is None else from_block,
            "toBlock": to_block,
            "address": list(addresses or self.deployment.addresses.values()),
        }
        if topics is not None:
            flt["topics"] = topics
        logs = self.w3.eth.get_logs(flt)  # type: ignore[arg-type]
        out = [self.decode_log(log) for log in logs]
        decoded = [event for event in out if event is not None]
        decoded.sort(key=lambda e: (e.block_number, e.log_index))
        return decoded

    def receipt_events(self, receipt: TxReceipt, contract: str | None = None) -> list[ChainEvent]:
        """The decoded events of a receipt's logs, in log order; only those emitted by
        ``contract`` (a deployment name: ``"JobMarket"``) when given."""
        address = None if contract is None else self.deployment.address(contract).lower()
        out = (self.decode_log(log) for log in receipt["logs"]
               if address is None or str(log["address"]).lower() == address)
        return [event for event in out if event is not None]

    def mined_receipt(self, tx_hash: bytes | str) -> TxReceipt | None:
        """The receipt of ``tx_hash`` as it is (a reverted one included); None while the node
        has none (pending, dropped or unknown). :meth:`MeshActor.wait_for_receipt` waits."""
        try:
            return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            return None

    def decode_log(self, log: Any) -> ChainEvent | None:
        """One raw log as a ChainEvent; None when its first topic is no event of the three
        contracts (or it has none)."""
        if not log["topics"]:
            return None
        codec = self._event_codecs.get(bytes(log["topics"][0]))
        if codec is None:
            return None
        return ChainEvent(
            name=codec.name,
            args=codec.decode(self.w3.codec, log),
            block_number=int(log["blockNumber"]),
            block_hash=HexBytes(log["blockHash"]).to_0x_hex(),
            tx_hash=HexBytes(log["transactionHash"]).to_0x_hex(),
            log_index=int(log["logIndex"]),
            address=_checksum(str(log["address"])),
        )

    def job_events(
        self,
        job_ids: Iterable[int] | None = None,
        from_block: int | None = None,
        to_block: int | str = "latest",
        *,
        names: Iterable[str] | None = None,
    ) -> list[ChainEvent]:
        """JobMarket events about ``job_ids`` (all jobs when None), in chain order; only
        the events named in ``names`` when given (filtered by the node, not decoded here)."""
        id_topics: Any = None
        if job_ids is not None:
            id_topics = ["0x" + int(i).to_bytes(32, "big").hex() for i in job_ids]
            if not id_topics:
                return []
        event_topics = self._job_event_topics
        if names is not None:
            wanted = set(names)
            unknown = wanted - set(JOB_EVENTS)
            if unknown:
                raise BadInput(f"not JobMarket job events: {sorted(unknown)}")
            event_topics = ["0x" + topic.hex() for topic, (name, _abi)
                            in self._events_by_topic.items() if name in wanted]
        return self.events(
            from_block,
            to_block,
            topics=[event_topics, id_topics],
            addresses=[self.deployment.address("JobMarket")],
        )

    def job_records(
        self, job_ids: Iterable[int] | None = None, *, verify: bool = True,
        at_block: int | None = None,
    ) -> dict[int, JobRecord]:
        """Current records rebuilt from events; with ``verify`` each one is checked against
        the digest the contract stores (an ended job's must be cleared, see
        :meth:`expected_digest`). ``at_block``: the records as of that block, not the head
        (for view calls made at that block).

        Jobs read before are read from ``_REORG_MARGIN`` blocks before their first event,
        not from the deployment block: a node answers a log query in time that grows with
        the blocks it spans (on anvil under a market's load, a job's read went from 11 ms to
        124 ms in five minutes, measured), and the services read the same jobs again and again.
        A read that does not rebuild every job from its JobPosted (a reorg moved it further
        back than the margin), or that does not match the digests, is read again from the
        deployment block."""
        # Events and digests are read at one block, so a transaction landing in between
        # cannot make a consistent record look inconsistent. A node may still answer
        # eth_getLogs for its newest block before that block's logs are stored (seen once on
        # anvil, and reported of other nodes): a mismatch is read again, at a newer head,
        # before it is reported.
        wanted = None if job_ids is None else list(job_ids)
        since = self._first_block_of(wanted)
        bad: int | None = None
        reads = _RECORD_READS + (since is not None)  # a read from too late does not count
        for attempt in range(reads):
            head = int(self.w3.eth.block_number) if at_block is None else int(at_block)
            if since is not None and since > head:  # the chain went back (a revert, a reorg)
                since = None
            records: dict[int, JobRecord] = {}
            firsts: dict[int, int] = {}
            try:
                for event in self.job_events(wanted, from_block=since, to_block=head):
                    job_id = int(event.args["jobId"])
                    firsts.setdefault(job_id, event.block_number)
                    records[job_id] = apply_event(records.get(job_id), event.name, event.args)
            except ValueError:  # an event before its JobPosted: the read began too late
                if since is None:
                    raise
                since = None
                continue
            if since is not None and wanted is not None and len(records) < len(set(wanted)):
                since = None  # a job it knew of is missing: read them from the beginning
                continue
            self._note_first_blocks(firsts)
            if not verify:
                return records
            bad = next((j for j, r in records.items() if not self.record_matches(j, r, head)),
                       None)
            if bad is None:
                return records
            since = None
            if attempt + 1 < reads:
                time.sleep(0.25 * (attempt + 1))
        raise ChainError(
            f"job {bad}: the record rebuilt from events does not match the contract's digest "
            f"at block {head} (events missing from this node?)"
        )

    def _first_block_of(self, job_ids: list[int] | None) -> int | None:
        """Where to read ``job_ids``' events from: ``_REORG_MARGIN`` blocks before the first
        of their first events when all were read before, else None (the deployment block)."""
        if not job_ids:
            return None
        with self._first_blocks_lock:
            known = [self._first_blocks.get(int(j)) for j in job_ids]
        if any(block is None for block in known):
            return None
        start = min(b for b in known if b is not None) - _REORG_MARGIN
        return start if start > self.deployment.block else None

    def _note_first_blocks(self, firsts: dict[int, int]) -> None:
        with self._first_blocks_lock:
            for job_id, block in firsts.items():
                if self._first_blocks.get(job_id, block + 1) > block:
                    self._first_blocks[job_id] = block
                self._first_blocks.move_to_end(job_id)
            while len(self._first_blocks) > _FIRST_BLOCKS_KEPT:
                self._first_blocks.popitem(last=False)

    def job(self, job_id: int) -> JobRecord:
        """The current record of one job."""
        records = self.job_records([job_id])
        if job_id not in records:
            raise revert_class("UnknownJob")("UnknownJob", {"jobId": job_id}, contract="JobMarket")
        return records[job_id]


#: Reads of events and digests before a record that does not match is reported.
_RECORD_READS = 3
#: Blocks before a job's first event that its events are read from, once known (a reorg that
#: moves its JobPosted further back is caught: the read then misses it and starts over).
_REORG_MARGIN = 64
#: Jobs whose first block is kept (the least recently read go first).
_FIRST_BLOCKS_KEPT = 100_000


class MeshActor(MeshContracts):
    """The writes of one account (client, worker, verifier, market operator or admin)."""

    def __init__(
        self, w3: Web3, deployment: Deployment, account: LocalAccount, sender: TxSender | None = None
    ) -> None:
        super().__init__(w3, deployment)
        self.account = account
        self.sender = sender or mesh_sender(w3, account)
        if self.sender.error_decoder is None:
            self.sender.error_decoder = decode_custom_error
        if self.sender.revert_class is None:
            self.sender.revert_class = revert_class
        for name, address in deployment.addresses.items():
            self.sender.name_contract(address, name)

    def __repr__(self) -> str:
        return f"<MeshActor {self.address}>"

    @property
    def address(self) -> str:
        return str(self.account.address)

    def _send(self, call: Any) -> TxReceipt:
        return self.sender.send(call)

    def wait_for_receipt(self, tx_hash: bytes | str, timeout: float | None = None) -> TxReceipt:
        """The receipt of a transaction sent with ``wait=False``; raises ContractRevert if it
        reverted, TransactionTimeout if none comes within ``timeout`` (the sender's default
        when None)."""
        return self.sender.wait_for_receipt(tx_hash, timeout)

    # ------------------------------------------------------------------ token
    def approve(self, spender: str, amount: int) -> TxReceipt:
        return self._send(self.credit.functions.approve(spender, amount))

    def transfer(self, to: str, amount: int) -> TxReceipt:
        return self._send(self.credit.functions.transfer(to, amount))

    def mint(self, to: str, amount: int) -> TxReceipt:
        return self._send(self.credit.functions.mint(to, amount))

    def faucet(self) -> TxReceipt:
        return self._send(self.credit.functions.faucet())

    # ------------------------------------------------------------------ stake
    def stake(self, amount: int, *, approve: bool = True) -> TxReceipt:
        if approve and self.allowance(self.address, self.stakes.address) < amount:
            self.approve(self.stakes.address, amount)
        return self._send(self.stakes.functions.stake(amount))

    def unstake(self, amount: int) -> TxReceipt:
        return self._send(self.stakes.functions.unstake(amount))

    def withdraw_unbonded(self) -> TxReceipt:
        return self._send(self.stakes.functions.withdrawUnbonded())

    # ------------------------------------------------------------------ verifier seat
    def join_verifiers(self, amount: int, *, approve: bool = True) -> TxReceipt:
        """Take a seat in the verifier registry with a deposit of ``amount``."""
        if approve and self.allowance(self.address, self.registry.address) < amount:
            self.approve(self.registry.address, amount)
        return self._send(self.registry.functions.join(amount))

    def top_up_verifier_deposit(self, amount: int, *, approve: bool = True) -> TxReceipt:
        """Add ``amount`` to this seat's deposit (its weight stays as joined): room for more
        overturns whose contests are open at once."""
        if approve and self.allowance(self.address, self.registry.address) < amount:
            self.approve(self.registry.address, amount)
        return self._send(self.registry.functions.topUp(amount))

    def leave_verifiers(self) -> TxReceipt:
        return self._send(self.registry.functions.leave())

    def withdraw_verifier_deposit(self) -> TxReceipt:
        return self._send(self.registry.functions.withdraw())

    # ------------------------------------------------------------------ client
    def post_job(self, params: JobParams, *, approve: bool = True) -> int:
        """Post one job; returns its id."""
        if approve:
            self._ensure_allowance(params.reward + params.audit_fee)
        receipt = self._send(self.market.functions.postJob(params.as_tuple()))
        return self._posted_ids(receipt)[0]

    def post_jobs(self, params: Sequence[JobParams], *, approve: bool = True) -> list[int]:
        """Post a batch (the shards of one submission) in one transaction; returns the ids."""
        if approve:
            self._ensure_allowance(sum(p.reward + p.audit_fee for p in params))
        receipt = self._send(self.encoded_call(self.market, "postJobs",
                                               [p.as_tuple() for p in params]))
        return self._posted_ids(receipt)

    def post_jobs_for(self, params: Sequence[JobParams], worker: str, *,
                      approve: bool = True) -> list[int]:
        """Post a batch only ``worker`` may take, and only by committing in the same
        transaction (``postJobsFor``: paying a worker for work it already did); the ids."""
        if approve:
            self._ensure_allowance(sum(p.reward + p.audit_fee for p in params))
        receipt = self._send(self.encoded_call(self.market, "postJobsFor",
                                               [p.as_tuple() for p in params],
                                               Web3.to_checksum_address(worker)))
        return self._posted_ids(receipt)

    def post_jobs_with_permit(
        self, params: Sequence[JobParams], *, permit_deadline: int | None = None
    ) -> list[int]:
        """Post a batch with an ERC-2612 permit: one transaction, no prior approval."""
        total = sum(p.reward + p.audit_fee for p in params)
        deadline = permit_deadline or (self.w3.eth.get_block("latest")["timestamp"] + 3600)
        permit = sign_permit(
            self.account,
            spender=self.market.address,
            value=total,
            nonce=int(self.credit.functions.nonces(self.address).call()),
            deadline=deadline,
            chain_id=self.sender.chain_id,
            token=self.credit.address,
        )
        receipt = self._send(
            self.encoded_call(
                self.market, "postJobsWithPermit",
                [p.as_tuple() for p in params],
                permit.value,
                permit.deadline,
                permit.v,
                permit.r,
                permit.s,
            )
        )
        return self._posted_ids(receipt)

    def reclaim(self, job_id: int, record: JobRecord | None = None) -> TxReceipt:
        record = record or self.job(job_id)
        return self._send(self.market.functions.reclaim(job_id, record.as_tuple()))

    def _ensure_allowance(self, amount: int) -> None:
        if self.allowance(self.address, self.market.address) < amount:
            self.approve(self.market.address, 2**256 - 1)

    def _posted_ids(self, receipt: TxReceipt) -> list[int]:
        return [int(e.args["jobId"]) for e in self.receipt_events(receipt, "JobMarket")
                if e.name == "JobPosted"]

    # ------------------------------------------------------------------ worker
    def assign(
        self,
        ticket: AssignTicket,
        signature: bytes,
        records: Sequence[JobRecord] | None = None,
    ) -> TxReceipt:
        records = self._records_for(ticket.job_ids, records)
        return self._send(
            self.market.functions.assign(
                [r.as_tuple() for r in records], ticket.as_tuple(), signature
            )
        )

    def commit_results(
        self,
        job_ids: Sequence[int],
        result_hashes: Sequence[bytes],
        records: Sequence[JobRecord] | None = None,
    ) -> TxReceipt:
        records = self._records_for(job_ids, records)
        return self._send(
            self.market.functions.commitResults(
                list(job_ids), [r.as_tuple() for r in records], list(result_hashes)
            )
        )

    def assign_and_commit(
        self,
        ticket: AssignTicket,
        signature: bytes,
        result_hashes: Sequence[bytes],
        records: Sequence[JobRecord] | None = None,
    ) -> TxReceipt:
        records = self._records_for(ticket.job_ids, records)
        return self._send(
            self.encoded_call(
                self.market, "assignAndCommit",
                [r.as_tuple() for r in records], ticket.as_tuple(), bytes(signature),
                [bytes(h) for h in result_hashes],
            )
        )

    def appeal(self, job_id: int, record: JobRecord | None = None) -> TxReceipt:
        """Appeal the verdict on ``job_id``: as its worker, a failure; as its client, a pass
        (a dispute: the client escrows a bond equal to the audit fee, approved here). The same
        call escalates an appeal verdict that upheld the first, as the party it goes against
        (the client escrows its bond, the reward and two audit fees, approved here; the
        worker's, its collateral and the reward, is locked from its free stake)."""
        record = record or self.job(job_id)
        mine = record.client.lower() == self.address.lower()
        if record.state == JobState.AUDIT_PASSED and record.audit_fee and mine:
            self._ensure_allowance(record.audit_fee)
        if record.state == JobState.PASS_UPHELD and mine:
            self._ensure_allowance(escalation_bond(record))
        return self._send(self.market.functions.appeal(job_id, record.as_tuple()))

    def dispute(self, job_id: int, record: JobRecord | None = None) -> TxReceipt:
        """As the job's client, dispute a passed audit within its appeal window (see appeal)."""
        return self.appeal(job_id, record)

    def withdraw(self) -> TxReceipt:
        return self._send(self.market.functions.withdraw())

    # ------------------------------------------------------------------ verifier
    def resolve_audit(
        self, job_id: int, passed: bool, evidence_hash: bytes, record: JobRecord | None = None
    ) -> TxReceipt:
        record = record or self.job(job_id)
        return self._send(
            self.market.functions.resolveAudit(job_id, record.as_tuple(), passed, evidence_hash)
        )

    def void_audit(
        self, job_id: int, evidence_hash: bytes, record: JobRecord | None = None
    ) -> TxReceipt:
        """Declare a drawn job void (it cannot be judged): the client gets its reward back,
        this verifier the audit fee, the worker its collateral; nobody is paid for the result."""
        record = record or self.job(job_id)
        return self._send(self.market.functions.voidAudit(job_id, record.as_tuple(), evidence_hash))

    def resolve_appeal(
        self, job_id: int, worker_wins: bool, evidence_hash: bytes, record: JobRecord | None = None
    ) -> TxReceipt:
        record = record or self.job(job_id)
        return self._send(
            self.market.functions.resolveAppeal(
                job_id, record.as_tuple(), worker_wins, evidence_hash
            )
        )

    # ------------------------------------------------------------------ anyone
    def finalize(self, job_id: int, record: JobRecord | None = None) -> TxReceipt:
        record = record or self.job(job_id)
        return self._send(self.market.functions.finalize(job_id, record.as_tuple()))

    @overload
    def finalize_batch(
        self,
        job_ids: Sequence[int],
        records: Sequence[JobRecord] | None = ...,
        *,
        wait: Literal[True] = ...,
        min_gas: int | None = ...,
    ) -> TxReceipt: ...

    @overload
    def finalize_batch(
        self,
        job_ids: Sequence[int],
        records: Sequence[JobRecord] | None = ...,
        *,
        wait: Literal[False],
        min_gas: int | None = ...,
    ) -> HexBytes: ...

    def finalize_batch(
        self,
        job_ids: Sequence[int],
        records: Sequence[JobRecord] | None = None,
        *,
        wait: bool = True,
        min_gas: int | None = None,
    ) -> TxReceipt | HexBytes:
        """Settle ``job_ids`` (from their current ``records``, rebuilt from events when None)
        in one ``finalizeBatch`` transaction; the contract skips stale entries.

        ``min_gas`` raises the estimated gas limit to at least that much, capped at the
        latest block's gas limit (the estimate runs in the latest block; a job that becomes
        settleable in the next one costs gas the estimate did not count). With ``wait=False``
        returns the transaction's hash once the node accepted it (see
        :meth:`wait_for_receipt`)."""
        records = self._records_for(job_ids, records)
        call = self.encoded_call(self.market, "finalizeBatch", list(job_ids),
                                 [r.as_tuple() for r in records])
        if not wait:
            return self.sender.send_async(call, min_gas=min_gas)
        return self.sender.send(call, min_gas=min_gas)

    # ------------------------------------------------------------------ admin
    def grant_role(self, contract: Any, role: bytes, account: str) -> TxReceipt:
        return self._send(contract.functions.grantRole(role, account))

    def pause(self) -> TxReceipt:
        return self._send(self.market.functions.pause())

    def unpause(self) -> TxReceipt:
        return self._send(self.market.functions.unpause())

    def _records_for(
        self, job_ids: Sequence[int], records: Sequence[JobRecord] | None
    ) -> list[JobRecord]:
        if records is not None:
            if len(records) != len(job_ids):
                raise ValueError("records and job_ids differ in length")
            return list(records)
        found = self.job_records(job_ids, verify=False)
        missing = [i for i in job_ids if i not in found]
        if missing:
            raise revert_class("UnknownJob")(
                "UnknownJob", {"jobId": missing[0]}, contract="JobMarket",
                detail="no JobPosted event for this id",
            )
        return [found[i] for i in job_ids]


def mesh_sender(w3: Web3, account: LocalAccount) -> TxSender:
    """A TxSender that decodes the contracts' custom errors into their exception classes."""
    return TxSender(w3, account, error_decoder=decode_custom_error, revert_class=revert_class)


_JOB_TUPLE_TYPE = (
    "(address,address,address,uint96,uint96,uint96,uint40,uint40,uint40,uint40,uint40,"
    "uint16,uint8,bytes32,bytes32)"
)



@dataclass(frozen=True)
class _EventCodec:
    """Decodes one event's logs with the ABI codec (what web3's ``get_event_data`` returns
    for this project's events: flat value types, addresses checksummed), without web3's
    per-log normalisation passes."""

    name: str
    indexed: tuple[tuple[str, str], ...]
    data_names: tuple[str, ...]
    data_types: tuple[str, ...]
    order: tuple[str, ...]

    @classmethod
    def of(cls, name: str, abi: dict[str, Any]) -> _EventCodec:
        inputs = abi["inputs"]
        return cls(
            name=name,
            indexed=tuple((i["name"], abi_type(i)) for i in inputs if i.get("indexed")),
            data_names=tuple(i["name"] for i in inputs if not i.get("indexed")),
            data_types=tuple(abi_type(i) for i in inputs if not i.get("indexed")),
            order=tuple(i["name"] for i in inputs),
        )

    def decode(self, codec: Any, log: Any) -> dict[str, Any]:
        topics = log["topics"][1:]
        if len(topics) != len(self.indexed):
            raise ChainError(f"{self.name} log has {len(topics)} indexed topics, "
                             f"expected {len(self.indexed)}")
        values: dict[str, Any] = {}
        for (arg, typ), topic in zip(self.indexed, topics, strict=True):
            if _dynamic(typ):
                values[arg] = bytes(topic)  # the hash of the value, as web3 gives it
            else:
                values[arg] = _normal(typ, codec.decode([typ], bytes(topic))[0])
        data = log["data"]
        raw = bytes(data) if not isinstance(data, str) else bytes.fromhex(data.removeprefix("0x"))
        for arg, typ, value in zip(self.data_names, self.data_types,
                                   codec.decode(list(self.data_types), raw), strict=True):
            values[arg] = _normal(typ, value)
        return {arg: values[arg] for arg in self.order}


def _dynamic(typ: str) -> bool:
    return typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("(")


def _normal(typ: str, value: Any) -> Any:
    if typ == "address":
        return _checksum(value)
    return value


@functools.lru_cache(maxsize=4096)
def _checksum(address: str) -> str:
    """``Web3.to_checksum_address``, remembered: a keccak per address per decoded log was a
    fifth of what reading a provider's events cost (a market sees the same few thousand
    addresses again and again)."""
    return Web3.to_checksum_address(address)


class BatchViews:
    """View calls gathered, then sent as one JSON-RPC batch pinned to ``block``; each answer
    decoded with its function's ABI outputs."""

    def __init__(self, contracts: MeshContracts, block: int) -> None:
        self.contracts = contracts
        self.block = hex(block)
        self.requests: list[tuple[str, list[Any]]] = []
        self.outputs: list[list[str]] = []

    def add(self, contract: Any, fn_name: str, *args: Any) -> int:
        """Queue ``contract.fn_name(*args)``; returns its index in :meth:`run`'s answer."""
        (abi,) = [item for item in contract.abi
                  if item.get("type") == "function" and item["name"] == fn_name]
        self.requests.append(
            ("eth_call", [self.contracts.encoded_call(contract, fn_name, *args), self.block]))
        self.outputs.append([abi_type(o) for o in abi["outputs"]])
        return len(self.requests) - 1

    def run(self) -> list[tuple[Any, ...]]:
        if not self.requests:
            return []
        responses = self.contracts.w3.provider.make_batch_request(self.requests)  # type: ignore[arg-type]
        if not isinstance(responses, list):
            raise ChainError(f"a batch of {len(self.requests)} view calls failed: {responses}")
        if len(responses) != len(self.requests):
            raise ChainError(f"{len(self.requests)} view calls in a batch, "
                             f"{len(responses)} answers")
        out = []
        for response, types in zip(sorted(responses, key=lambda r: int(r["id"])), self.outputs,
                                   strict=True):
            if "error" in response:
                raise ChainError(f"a view call of a batch failed: {response['error']}")
            out.append(self.contracts.w3.codec.decode(types, bytes.fromhex(response["result"][2:])))
        return out
