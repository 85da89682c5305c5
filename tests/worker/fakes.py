"""In-memory stand-ins for the market and the chain, for unit tests of the node's logic.

The integration tests (test_node_market.py) run the same node against the real market, Redis,
anvil and sandbox; these fakes only let the unit tests steer timing and failures precisely.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from eth_account import Account

from meshcompute.chain.tickets import AssignTicket
from meshcompute.core.job import ZERO_ADDRESS, ZERO_HASH, JobRecord, JobState
from meshcompute.core.spec import JobSpec
from meshcompute.errors import BadInput, NotFound
from meshcompute.wire.market_client import Hardware, Lease

WORKER = Account.from_key("0x" + "44" * 32)
HARDWARE = Hardware(device="cpu", cores=2, memory_mb=4096, gpus=(), torch="test")


def make_lease(job_id: int, program: bytes = b"program", inputs: bytes = b"inputs", *,
               device: str = "cpu", lease_s: int = 600, job_ids: tuple[int, ...] | None = None,
               signature: bytes = b"\x01" * 65) -> Lease:
    spec = JobSpec(program=hashlib.sha256(program).hexdigest(),
                   inputs=hashlib.sha256(inputs).hexdigest(), device=device)
    record = JobRecord(
        client="0x" + "22" * 20, worker=ZERO_ADDRESS, auditor=ZERO_ADDRESS, reward=10,
        audit_fee=1, collateral=5, deadline=int(time.time()) + 3600, lease_expiry=0,
        committed_at=0, committed_block=0, resolved_at=0, audit_bps=0, state=JobState.POSTED,
        spec_hash=bytes.fromhex(spec.sha256), result_hash=ZERO_HASH,
    )
    expiry = int(time.time()) + lease_s
    ticket = AssignTicket(WORKER.address, job_ids or (job_id,), 0, expiry)
    return Lease(job_id=job_id, spec=spec, spec_sha256=spec.sha256, record=record,
                 ticket=ticket, signature=signature, lease_expiry=expiry)


@dataclass
class FakeMarket:
    """Hands out queued leases; records every call."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    queue: list[Lease] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    known: bool = True
    lease_s: int = 600
    renew_s: int = 600
    base_url: str = "http://fake-market"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_job(self, lease: Lease, program: bytes = b"program", inputs: bytes = b"inputs"):
        self.blobs[lease.spec.program] = program
        self.blobs[lease.spec.inputs] = inputs
        with self.lock:
            self.queue.append(lease)

    def names(self) -> list[str]:
        with self.lock:
            return [c[0] for c in self.calls]

    def _log(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def register(self, hardware, *, price_wei, slots, operator=None):
        self._log("register", slots)
        self.known = True
        return {"address": WORKER.address}

    def heartbeat(self, running=()):
        self._log("heartbeat", tuple(running))
        if not self.known:
            raise NotFound("unknown worker (HTTP 404)")
        return self.lease_s

    def lease(self, max_jobs=1):
        """Up to ``max_jobs`` slots' worth: the leases of one ticket fill one slot."""
        with self.lock:
            tickets: list[tuple[int, ...]] = []
            out = []
            for lease in self.queue:
                if lease.ticket.job_ids not in tickets:
                    if len(tickets) == max_jobs:
                        continue
                    tickets.append(lease.ticket.job_ids)
                out.append(lease)
            self.queue = [lease for lease in self.queue if lease not in out]
        self._log("lease", max_jobs, [x.job_id for x in out])
        return out

    def get_blob(self, sha256, *, verify=True):
        self._log("get_blob", sha256)
        if sha256 not in self.blobs:
            raise NotFound(f"blob {sha256} (HTTP 404)")
        return self.blobs[sha256]

    def get_blobs(self, hashes):
        """Like MarketClient.get_blobs: every blob or an error (missing, wrong bytes)."""
        self._log("get_blobs", tuple(hashes))
        out = {}
        for sha in hashes:
            if sha not in self.blobs:
                raise NotFound(f"blob {sha} (HTTP 404)")
            if hashlib.sha256(self.blobs[sha]).hexdigest() != sha:
                raise BadInput(f"bundle blob {sha}: bytes hash to something else")
            out[sha] = self.blobs[sha]
        return out

    def put_blob(self, data):
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        self._log("put_blob", sha)
        return sha

    def put_blobs(self, blobs):
        shas = [hashlib.sha256(data).hexdigest() for data in blobs]
        self.blobs.update(zip(shas, blobs, strict=True))
        self._log("put_blobs", tuple(shas))
        return shas

    def submit_result(self, job_id, output_sha256):
        self._log("submit_result", job_id, output_sha256)
        return {}

    def submit_results(self, results):
        self._log("submit_results", tuple(results))
        return [{} for _ in results]

    def renew(self, job_id):
        self._log("renew", job_id)
        expiry = int(time.time()) + self.renew_s
        old = make_lease(job_id, lease_s=self.renew_s)
        return replace(old, ticket=replace(old.ticket, lease_expiry=expiry),
                       lease_expiry=expiry, signature=b"\x02" * 65)

    def release(self, job_id):
        self._log("release", job_id)

    def fail(self, job_id, reason):
        self._log("fail", job_id, reason)


class FakeReceipt(dict):
    pass


@dataclass
class FakeActor:
    """The chain side: commits, job records for the audit watcher, earnings."""

    address: str = WORKER.address
    commits: list[tuple[AssignTicket, bytes, list[bytes], list[JobRecord]]] = field(
        default_factory=list)
    revert: Exception | None = None
    records: dict[int, JobRecord] = field(default_factory=dict)
    appeals: list[int] = field(default_factory=list)
    appeal_reverts: list[Exception] = field(default_factory=list)
    """Raised by the next appeals, one each, before one goes through."""
    earned: int = 0

    def assign_and_commit(self, ticket, signature, result_hashes, records=None):
        if self.revert is not None:
            raise self.revert
        self.commits.append((ticket, signature, list(result_hashes), list(records or [])))
        for job_id, result, record in zip(ticket.job_ids, result_hashes, records or [],
                                          strict=True):
            self.records[job_id] = replace(record, worker=self.address, result_hash=result,
                                           state=JobState.COMMITTED)
        return FakeReceipt(transactionHash=b"\xaa" * 32, gasUsed=100_000)

    def job_records(self, job_ids=None, *, verify=True):
        return {i: self.records[i] for i in (job_ids or self.records) if i in self.records}

    def appeal(self, job_id, record=None):
        if self.appeal_reverts:
            raise self.appeal_reverts.pop(0)
        self.appeals.append(job_id)
        self.records[job_id] = replace(self.records[job_id], state=JobState.APPEALED)

    def account_of(self, account):
        from meshcompute.chain.contracts import AccountState

        return AccountState(withdrawable=self.earned, earned=self.earned, withdrawn=0,
                            completed=0)


@dataclass
class FakeOutcome:
    ok: bool
    output: bytes | None
    output_sha256: str | None
    reason: str | None
    wall_s: float = 0.01
    compute_s: float = 0.01


class FakeRunner:
    """Returns a fixed output (or failure), optionally blocking until released."""

    def __init__(self, output: bytes = b"output", *, fail_reason: str | None = None,
                 block: threading.Event | None = None, delay_s: float = 0.0) -> None:
        self.output = output
        self.fail_reason = fail_reason
        self.block = block
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.started = threading.Event()

    def __call__(self, program, inputs, **limits):
        self.calls.append({"program": program, "inputs": inputs, **limits})
        self.started.set()
        if self.block is not None:
            self.block.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_reason:
            return FakeOutcome(False, None, None, self.fail_reason)
        return FakeOutcome(True, self.output, hashlib.sha256(self.output).hexdigest(), None)
