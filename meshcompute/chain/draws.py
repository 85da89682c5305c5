"""Audit draws read from block hashes: :func:`meshcompute.core.audit_draw.audit_drawn` with
one header read per seed block instead of one ``auditStatus`` call per job.

    draws = AuditDraws(contracts)        # one per round: block hashes are cached for its life
    drawable, audited = draws.status(job_id, record)

Same answer as ``JobMarket.auditStatus`` at the latest block; a seed block near the end of the
``blockhash`` window is asked of the contract itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eth_utils import keccak

from meshcompute.chain.contracts import BatchViews, MeshContracts
from meshcompute.core.audit_draw import audit_drawn, drawable, needs_contract, seed_block
from meshcompute.core.job import JobRecord, JobState


class AuditDraws:
    """Audit draws at one view of the chain head (read once, at the first question)."""

    def __init__(self, contracts: MeshContracts, head: int | None = None) -> None:
        self.contracts = contracts
        self._head = head
        self._hashes: dict[int, bytes] = {}
        self._answers: dict[int, tuple[bool, bool]] = {}

    @property
    def head(self) -> int:
        if self._head is None:
            self._head = int(self.contracts.w3.eth.block_number)
        return self._head

    def prefetch(self, records: Mapping[int, JobRecord]) -> None:
        """Ask the contract, in one JSON-RPC batch, about every job of ``records`` whose seed
        block is too deep to read here (a backlog after a stall: one view call per job took
        the settlement round minutes)."""
        deep = [(job_id, record) for job_id, record in records.items()
                if record.state == JobState.COMMITTED and job_id not in self._answers
                and drawable(record.committed_block, self.head)
                and needs_contract(record.committed_block, self.head)]
        if not deep:
            return
        views = BatchViews(self.contracts, self.head)
        asked = [(job_id, views.add(self.contracts.market, "auditStatus", job_id,
                                    record.as_tuple())) for job_id, record in deep]
        answers = views.run()
        for job_id, at in asked:
            can_draw, audited = answers[at]
            self._answers[job_id] = (bool(can_draw), bool(audited))

    def status(self, job_id: int, record: JobRecord) -> tuple[bool, bool]:
        """(drawable, audited) as ``JobMarket.auditStatus(job_id, record)`` answers."""
        if record.state != JobState.COMMITTED:
            return False, record.state == JobState.AUDITED
        if not drawable(record.committed_block, self.head):
            return False, False
        if needs_contract(record.committed_block, self.head):
            known = self._answers.get(job_id)
            return known if known is not None else self.contracts.audit_status(job_id, record)
        return True, audit_drawn(self._hash(seed_block(record.committed_block)), job_id,
                                 record.audit_bps, keccak)

    def drawn(self, job_id: int, committed_block: int, audit_bps: int) -> bool | None:
        """The draw of a job committed in ``committed_block`` at rate ``audit_bps`` (from its
        JobCommitted event); None while it cannot be taken or is too deep to take here."""
        if not drawable(committed_block, self.head) or needs_contract(committed_block, self.head):
            return None
        return audit_drawn(self._hash(seed_block(committed_block)), job_id, audit_bps, keccak)

    def _hash(self, number: int) -> bytes:
        found = self._hashes.get(number)
        if found is None:
            found = bytes(self.contracts.w3.eth.get_block(number)["hash"])
            self._hashes[number] = found
        return found


def draw_seed(w3: Any, record: JobRecord) -> bytes:
    """The audit draw's seed of a committed job: the hash of the block after its commit (a
    training audit picks its segments with it; the worker could not know it when it
    committed)."""
    return bytes(w3.eth.get_block(seed_block(record.committed_block))["hash"])
