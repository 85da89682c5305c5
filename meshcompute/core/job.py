"""Job records and states, mirroring contracts/types/Job.sol, and the event reducer.

The JobMarket contract stores only ``keccak256(abi.encode(job))`` per open job, and clears it
when the job ends (Finalized, Slashed, Refunded). The record itself is rebuilt from the job's
events with :func:`apply_event`, which mirrors every state change the contract makes; the
chain adapter checks the rebuilt record against the stored digest (zero for an ended job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import IntEnum
from typing import Any

ZERO_ADDRESS = "0x" + "00" * 20
ZERO_HASH = b"\x00" * 32


class JobState(IntEnum):
    """Where a job is in its life (same numbering as the Solidity enum)."""

    NONE = 0
    POSTED = 1
    ASSIGNED = 2
    COMMITTED = 3
    AUDITED = 4
    AUDIT_FAILED = 5
    APPEALED = 6
    FINALIZED = 7
    SLASHED = 8
    REFUNDED = 9
    AUDIT_PASSED = 10
    DISPUTED = 11
    APPEAL_CONTESTED = 12
    DISPUTE_CONTESTED = 13
    VOID_PROPOSED = 14
    FAILURE_UPHELD = 15
    PASS_UPHELD = 16
    FAILURE_ESCALATED = 17
    PASS_ESCALATED = 18

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED})

#: Rewards of the verifier's free stake locked behind a pass (JobMarket._PASS_BOND_REWARDS);
#: a failure locks one. A lazy pass saves about one job's compute, a caught one costs this.
PASS_BOND_REWARDS = 10


def verifier_bond(reward: int, state: JobState) -> int:
    """The stake a verdict that leaves a job in ``state`` locks (0 outside a verdict)."""
    if state in PASS_VERDICT_STATES:
        return reward * PASS_BOND_REWARDS
    if state in FAILURE_VERDICT_STATES:
        return reward
    return 0


#: A pass is in and can still be disputed, or is under dispute: its verifier's bond is locked.
PASS_VERDICT_STATES = frozenset(
    {JobState.AUDIT_PASSED, JobState.DISPUTED, JobState.DISPUTE_CONTESTED, JobState.PASS_UPHELD,
     JobState.PASS_ESCALATED}
)
#: A failure is in and can still be appealed, or is under appeal.
FAILURE_VERDICT_STATES = frozenset(
    {JobState.AUDIT_FAILED, JobState.APPEALED, JobState.APPEAL_CONTESTED, JobState.FAILURE_UPHELD,
     JobState.FAILURE_ESCALATED}
)
#: An appeal verdict upheld the first and may be escalated by the party it goes against, or
#: was, and a third seat judges the escalation.
UPHELD_STATES = frozenset({JobState.FAILURE_UPHELD, JobState.PASS_UPHELD})
ESCALATED_STATES = frozenset({JobState.FAILURE_ESCALATED, JobState.PASS_ESCALATED})


def escalation_bond(record: JobRecord) -> int:
    """What escalating an upheld verdict bonds, while the escalation is open
    (``JobMarketSettlement._escalationBond``): what a void would move to the escalating party
    and a third seat of its coalition, at least. The worker locks its collateral and the
    reward (at least the third seat's pay, min(audit fee, reward), and never nothing) from
    its stake; the client escrows the reward and two audit fees."""
    if record.state in (JobState.PASS_UPHELD, JobState.PASS_ESCALATED):
        return record.reward + 2 * record.audit_fee
    return record.collateral + record.reward


#: A verdict is in and can still be appealed or is under appeal: the verifier's bond is locked.
VERDICT_STATES = PASS_VERDICT_STATES | FAILURE_VERDICT_STATES

#: Every state change the contract can make. ASSIGNED -> ASSIGNED is a lease renewal or a
#: takeover after an expired lease.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.NONE: frozenset({JobState.POSTED}),
    JobState.POSTED: frozenset({JobState.ASSIGNED, JobState.COMMITTED, JobState.REFUNDED}),
    JobState.ASSIGNED: frozenset({JobState.ASSIGNED, JobState.COMMITTED, JobState.REFUNDED}),
    JobState.COMMITTED: frozenset(
        {JobState.AUDITED, JobState.FINALIZED, JobState.AUDIT_FAILED, JobState.AUDIT_PASSED}
    ),
    JobState.AUDITED: frozenset(
        {JobState.AUDIT_PASSED, JobState.AUDIT_FAILED, JobState.VOID_PROPOSED, JobState.REFUNDED}
    ),
    JobState.VOID_PROPOSED: frozenset(
        {JobState.AUDIT_PASSED, JobState.AUDIT_FAILED, JobState.REFUNDED}
    ),
    JobState.AUDIT_FAILED: frozenset({JobState.APPEALED, JobState.SLASHED}),
    JobState.APPEALED: frozenset(
        {JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED, JobState.APPEAL_CONTESTED,
         JobState.FAILURE_UPHELD}
    ),
    JobState.FAILURE_UPHELD: frozenset({JobState.FAILURE_ESCALATED, JobState.SLASHED}),
    JobState.FAILURE_ESCALATED: frozenset({JobState.SLASHED, JobState.REFUNDED}),
    JobState.PASS_UPHELD: frozenset({JobState.PASS_ESCALATED, JobState.FINALIZED}),
    JobState.PASS_ESCALATED: frozenset({JobState.FINALIZED, JobState.REFUNDED}),
    JobState.APPEAL_CONTESTED: frozenset({JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED}),
    JobState.AUDIT_PASSED: frozenset({JobState.DISPUTED, JobState.FINALIZED}),
    JobState.DISPUTED: frozenset(
        {JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED, JobState.DISPUTE_CONTESTED,
         JobState.PASS_UPHELD}
    ),
    JobState.DISPUTE_CONTESTED: frozenset({JobState.FINALIZED, JobState.SLASHED, JobState.REFUNDED}),
    JobState.FINALIZED: frozenset(),
    JobState.SLASHED: frozenset(),
    JobState.REFUNDED: frozenset(),
}


def can_transition(old: JobState, new: JobState) -> bool:
    """Whether the contract can move a job from ``old`` to ``new`` in one transaction."""
    return new == old or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job, field for field the Solidity ``Job`` struct (addresses checksummed strings)."""

    client: str
    worker: str
    auditor: str
    reward: int
    audit_fee: int
    collateral: int
    deadline: int
    lease_expiry: int
    committed_at: int
    committed_block: int
    resolved_at: int
    audit_bps: int
    state: JobState
    spec_hash: bytes
    result_hash: bytes

    def as_tuple(self) -> tuple[Any, ...]:
        """The record as the ABI tuple the contract takes."""
        return tuple(
            int(getattr(self, f.name)) if f.name == "state" else getattr(self, f.name)
            for f in fields(self)
        )

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...] | list[Any]) -> JobRecord:
        kwargs = {f.name: v for f, v in zip(fields(cls), values, strict=True)}
        kwargs["state"] = JobState(kwargs["state"])
        kwargs["spec_hash"] = bytes(kwargs["spec_hash"])
        kwargs["result_hash"] = bytes(kwargs["result_hash"])
        return cls(**kwargs)

    @property
    def escrow(self) -> int:
        """Tokens the market holds for this job right now (part of the solvency sum)."""
        if self.state.terminal or self.state == JobState.NONE:
            return 0
        # a verdict's audit fee stays in escrow until the verdict stands or falls; a disputed
        # pass also holds the client's dispute bond (one more audit fee)
        if self.state in (JobState.DISPUTED, JobState.DISPUTE_CONTESTED, JobState.PASS_UPHELD):
            return self.reward + 2 * self.audit_fee
        if self.state == JobState.PASS_ESCALATED:  # and the client's escalation bond
            return self.reward + 2 * self.audit_fee + escalation_bond(self)
        return self.reward + self.audit_fee

    @property
    def holds_collateral(self) -> bool:
        """Whether the worker's collateral for this job is locked in the stake manager."""
        return self.state in (
            JobState.ASSIGNED,
            JobState.COMMITTED,
            JobState.AUDITED,
            JobState.AUDIT_FAILED,
            JobState.APPEALED,
            JobState.AUDIT_PASSED,
            JobState.DISPUTED,
            JobState.APPEAL_CONTESTED,
            JobState.DISPUTE_CONTESTED,
            JobState.VOID_PROPOSED,
            *UPHELD_STATES,
            *ESCALATED_STATES,
        )

    @property
    def verifier_bond(self) -> int:
        """Stake the verifier who judged this job has locked behind its verdict while the
        verdict can still be overturned (the reward behind a failure, :data:`PASS_BOND_REWARDS`
        rewards behind a pass); 0 otherwise."""
        if self.state == JobState.VOID_PROPOSED:  # the proposer's bond: reward and audit fee
            return self.reward + self.audit_fee
        return verifier_bond(self.reward, self.state)

    def locks(self) -> dict[str, int]:
        """Stake locked in the stake manager because of this job, by address: the worker's
        collateral while it holds the job, the verifier's bond while its verdict is open."""
        held: dict[str, int] = {}  # the worker's collateral, the verifier's bond
        if self.holds_collateral and self.collateral:
            held[self.worker] = self.collateral
        if self.state == JobState.FAILURE_ESCALATED:  # the worker's escalation bond
            held[self.worker] = held.get(self.worker, 0) + escalation_bond(self)
        if self.verifier_bond:
            held[self.auditor] = held.get(self.auditor, 0) + self.verifier_bond
        return held


class UnknownEvent(ValueError):
    """An event name the reducer does not know."""


def apply_event(record: JobRecord | None, event: str, args: Mapping[str, Any]) -> JobRecord:
    """The record after one JobMarket event about it (``args`` as decoded from the log)."""
    if event == "JobPosted":
        return JobRecord(
            client=args["client"],
            worker=ZERO_ADDRESS,
            auditor=ZERO_ADDRESS,
            reward=args["reward"],
            audit_fee=args["auditFee"],
            collateral=args["collateral"],
            deadline=args["deadline"],
            lease_expiry=0,
            committed_at=0,
            committed_block=0,
            resolved_at=0,
            audit_bps=args["auditBps"],
            state=JobState.POSTED,
            spec_hash=bytes(args["specHash"]),
            result_hash=ZERO_HASH,
        )
    if record is None:
        raise ValueError(f"{event} for a job with no JobPosted event")
    if event == "JobReserved":  # posted for one worker alone: it names it while Posted
        return replace(record, worker=args["worker"])
    if event == "JobAssigned":
        return replace(
            record,
            worker=args["worker"],
            lease_expiry=args["leaseExpiry"],
            audit_bps=args["auditBps"],
            state=JobState.ASSIGNED,
        )
    if event == "JobCommitted":
        # assignAndCommit emits only JobCommitted, so it also carries the lease: from a
        # posted (or expired-lease) job this is the assignment and the commit together.
        return replace(
            record,
            worker=args["worker"],
            lease_expiry=args["leaseExpiry"],
            audit_bps=args["auditBps"],
            result_hash=bytes(args["resultHash"]),
            committed_at=args["committedAt"],
            committed_block=args["committedBlock"],
            state=JobState.COMMITTED,
        )
    if event == "AuditDrawn":
        return replace(record, state=JobState.AUDITED) if args["audited"] else record
    if event == "AuditResolved":
        state = JobState.AUDIT_PASSED if args["passed"] else JobState.AUDIT_FAILED
        return replace(record, auditor=args["verifier"], resolved_at=args["resolvedAt"],
                       state=state)
    if event == "AuditAppealed":
        disputed = record.state == JobState.AUDIT_PASSED
        return replace(record, state=JobState.DISPUTED if disputed else JobState.APPEALED)
    if event == "AppealContested":
        disputed = record.state == JobState.DISPUTED
        return replace(record, resolved_at=args["contestedAt"],
                       state=JobState.DISPUTE_CONTESTED if disputed else JobState.APPEAL_CONTESTED)
    if event == "AppealUpheld":
        upheld = JobState.PASS_UPHELD if record.state == JobState.DISPUTED else JobState.FAILURE_UPHELD
        return replace(record, resolved_at=args["upheldAt"], state=upheld)
    if event == "AppealEscalated":
        escalated = (JobState.PASS_ESCALATED if record.state == JobState.PASS_UPHELD
                     else JobState.FAILURE_ESCALATED)
        return replace(record, resolved_at=args["escalatedAt"], state=escalated)
    if event == "VoidProposed":
        return replace(record, auditor=args["verifier"], resolved_at=args["proposedAt"],
                       state=JobState.VOID_PROPOSED)
    if event == "JobPaid":
        return replace(record, state=JobState.FINALIZED)
    if event == "JobSlashed":
        return replace(record, state=JobState.SLASHED)
    if event == "JobRefunded":
        if record.state in (JobState.POSTED, JobState.ASSIGNED, JobState.AUDITED,
                            JobState.DISPUTED, JobState.APPEALED,  # unjudged appeals are void
                            JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED,
                            JobState.VOID_PROPOSED, *ESCALATED_STATES):  # a tie is void
            return replace(record, state=JobState.REFUNDED)
        return record
    if event in ("LeaseExpired", "AppealResolved", "AuditFeePaid", "AuditVoided",
                 "VerifierSlashed"):
        return record
    raise UnknownEvent(event)


#: JobMarket events that carry a ``jobId`` and feed :func:`apply_event`.
JOB_EVENTS = (
    "JobPosted",
    "JobReserved",
    "JobAssigned",
    "LeaseExpired",
    "JobCommitted",
    "AuditDrawn",
    "AuditResolved",
    "AuditVoided",
    "VerifierSlashed",
    "AuditAppealed",
    "AppealContested",
    "AppealUpheld",
    "AppealEscalated",
    "VoidProposed",
    "AppealResolved",
    "JobPaid",
    "AuditFeePaid",
    "JobSlashed",
    "JobRefunded",
)
