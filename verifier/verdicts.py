"""The verdicts the chain holds about one job, read from its JobMarket events."""

from __future__ import annotations

from dataclasses import dataclass

from meshcompute.chain.contracts import MeshContracts


@dataclass(frozen=True)
class PostedVerdict:
    """An ``AuditResolved`` (``verdict`` = passed) or ``AppealResolved`` (= worker wins)."""

    kind: str
    verifier: str
    verdict: bool
    evidence_hash: bytes
    block_number: int
    tx_hash: str


@dataclass(frozen=True)
class JobVerdicts:
    audit: PostedVerdict | None
    appeal: PostedVerdict | None
    appealed: bool


def job_verdicts(contracts: MeshContracts, job_id: int) -> JobVerdicts:
    """The audit and appeal verdicts posted for ``job_id`` (None where there is none)."""
    audit = appeal = None
    appealed = False
    for event in contracts.job_events([job_id]):
        if event.name == "AuditResolved":
            audit = PostedVerdict(
                "audit", event.args["verifier"], bool(event.args["passed"]),
                bytes(event.args["evidenceHash"]), event.block_number, event.tx_hash,
            )
        elif event.name == "AppealResolved":
            appeal = PostedVerdict(
                "appeal", event.args["verifier"], bool(event.args["workerWins"]),
                bytes(event.args["evidenceHash"]), event.block_number, event.tx_hash,
            )
        elif event.name == "AuditAppealed":
            appealed = True
    return JobVerdicts(audit, appeal, appealed)
