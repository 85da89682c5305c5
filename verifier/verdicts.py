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
    third: PostedVerdict | None = None
    """The third seat's verdict: on the contest of an overturning appeal verdict (kind
    ``contest``) or on the escalation of an upholding one (``escalation``)."""


def job_verdicts(contracts: MeshContracts, job_id: int) -> JobVerdicts:
    """The audit, appeal and third-seat verdicts posted for ``job_id`` (None where there is
    none). An appeal verdict a third seat may judge is posted as ``AppealContested`` (an
    overturn) or ``AppealUpheld``; the third seat's then as ``AppealResolved``."""
    audit = appeal = third = None
    appealed = False
    third_kind = ""
    for event in contracts.job_events([job_id]):
        if event.name == "AuditResolved":
            audit = PostedVerdict(
                "audit", event.args["verifier"], bool(event.args["passed"]),
                bytes(event.args["evidenceHash"]), event.block_number, event.tx_hash,
            )
        elif event.name in ("AppealResolved", "AppealContested", "AppealUpheld"):
            if event.name == "AppealContested":
                third_kind = "contest"
            kind = third_kind if event.name == "AppealResolved" and third_kind else "appeal"
            posted = PostedVerdict(
                kind, event.args["verifier"], bool(event.args["workerWins"]),
                bytes(event.args["evidenceHash"]), event.block_number, event.tx_hash,
            )
            if kind == "appeal":
                appeal = posted
            else:
                third = posted
        elif event.name == "AppealEscalated":
            third_kind = "escalation"
        elif event.name == "AuditAppealed":
            appealed = True
    return JobVerdicts(audit, appeal, appealed, third)
