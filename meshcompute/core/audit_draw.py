"""The audit draw of a committed job, as ``JobMarket._drawAudit`` computes it.

The seed is the hash of the block after the commit (``committedBlock + 1``), which did not
exist when the worker sent its commit::

    drawn = keccak256(abi.encode(blockhash(committedBlock + 1), jobId)) % 10000 < auditBps

The draw can be taken from block ``committedBlock + 2`` on. ``blockhash`` reaches back only
:data:`BLOCKHASH_WINDOW` blocks; past that the seed reads zero and the contract counts the job
as drawn. Off-chain readers (the market's settlement, the verifier) compute the draw here from
the seed block's hash instead of one ``auditStatus`` call per job, and ask the contract
whenever the seed block is near the end of that window (:func:`needs_contract`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshcompute.core.job import JobRecord, JobState, verifier_bond
from meshcompute.units import BPS

Keccak256 = Callable[[bytes], bytes]
"""keccak256 of a byte string (the chain layer passes ``eth_utils.keccak``; the core stays
free of adapter libraries)."""

BLOCKHASH_WINDOW = 256
#: Below this depth the local draw is used; deeper seeds are left to the contract.
SAFE_DEPTH = 200


def seed_block(committed_block: int) -> int:
    """The block whose hash seeds the draw of a job committed in ``committed_block``."""
    return int(committed_block) + 1


def drawable(committed_block: int, head: int) -> bool:
    """Whether a call in a block after ``head`` can take the draw (its seed block is mined)."""
    return int(head) > seed_block(committed_block)


def needs_contract(committed_block: int, head: int) -> bool:
    """True when the seed block is so deep that ``blockhash`` may already read zero by the
    time a transaction lands: only the contract's own answer is safe then."""
    return int(head) - seed_block(committed_block) >= SAFE_DEPTH


def audit_drawn(seed: bytes, job_id: int, audit_bps: int, keccak: Keccak256) -> bool:
    """``JobMarket._drawAudit`` for a seed block hash ``seed`` (32 bytes; zero: drawn)."""
    if len(seed) != 32:
        raise ValueError(f"a block hash has 32 bytes, got {len(seed)}")
    if seed == bytes(32):
        return True
    if not 0 <= int(job_id) < 2**256:
        raise ValueError(f"job id out of range: {job_id}")
    word = keccak(seed + int(job_id).to_bytes(32, "big"))
    return int.from_bytes(word, "big") % BPS < int(audit_bps)


@dataclass(frozen=True)
class VerifierSeat:
    """One seat of the VerifierRegistry: its verifier, weight (deposit over the registry's
    unit), and the blocks of the jobs it is a candidate for: committed in ``from_block`` or
    later and before ``until_block`` (:data:`NEVER` while it has not left)."""

    verifier: str
    units: int
    from_block: int
    until_block: int
    deposit: int = 0
    release_at: int = 0
    """When a seat that left gets its deposit back (zero while it has not left)."""

    @property
    def leaving(self) -> bool:
        return self.until_block != NEVER

    def candidate_for(self, committed_block: int) -> bool:
        """Whether this seat may be assigned the verdicts of a job committed in block
        ``committed_block`` (``VerifierRegistry._candidates``)."""
        return self.from_block <= int(committed_block) < self.until_block


#: ``untilBlock`` of a seat that has not left.
NEVER = 2**40 - 1


#: The verdicts the registry's draw assigns, by its ``stage``: a drawn job's audit, the appeal
#: of a verdict (or dispute of a pass), the contest of an appeal verdict that overturned the
#: first, the confirmation of a proposed void, and the escalation of an appeal verdict that
#: upheld the first (``JobMarketSettlement._stage``).
STAGES = {"audit": 0, "appeal": 1, "contest": 2, "confirm": 3, "escalation": 4}


def verdict_stage(state: JobState) -> int:
    """The stage of the verdict a job in ``state`` waits for."""
    if state in (JobState.APPEALED, JobState.DISPUTED):
        return STAGES["appeal"]
    if state in (JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED):
        return STAGES["contest"]
    if state == JobState.VOID_PROPOSED:
        return STAGES["confirm"]
    if state in (JobState.FAILURE_ESCALATED, JobState.PASS_ESCALATED):
        return STAGES["escalation"]
    return STAGES["audit"]


def verdict_covers(record: JobRecord, stage: int) -> tuple[int, ...]:
    """What a seat's deposit must cover to be drawn for a verdict of ``stage`` on ``record``
    (``JobMarketSettlement._cover``), in the order the draw tries them: the first that some
    candidate covers is used. The job's reward and collateral; for an appeal, first that plus
    the bond of the verdict under appeal, falling back to the reward and collateral where no
    seat covers that much. The cover used is also what the seat's silence burns, and for an
    appeal verdict that a contest finds wrong, what its seat forfeits."""
    cover = record.reward + record.collateral
    if stage == STAGES["appeal"]:
        return (cover + verifier_bond(record.reward, record.state), cover)
    return (cover,)


def assigned_verifier(
    seats: Sequence[VerifierSeat],
    seed: bytes,
    job_id: int,
    *,
    committed_block: int,
    cover: int,
    unit: int,
    excluded: Iterable[str],
    stage: int,
    escalated: bool,
    keccak: Keccak256,
) -> str | None:
    """``VerifierRegistry.assignee``: the verifier the draw assigns to a job's pending verdict.

    ``seats`` are the registry's seats (in any order), ``seed`` the draw's seed block hash,
    ``committed_block`` the job's commit block (only the seats' candidates for it count),
    ``cover`` the job's reward plus collateral (only seats whose ``units * unit`` covers it,
    ``unit`` being the registry's minimum deposit), ``excluded`` the job's worker and client
    (and, after a verdict, the verifier whose verdict is in question; in a contest, also the
    one who overturned it), ``stage`` the verdict (:data:`STAGES`). Each candidate scores
    ``keccak256(abi.encode(keccak256(abi.encode(seed, job_id, stage)), verifier)) // units``;
    the lowest is
    assigned, or the second lowest once ``escalated`` (the window is in its second half; the
    lowest again when there is no second). Ties go to the lower address. None: no candidate."""
    if len(seed) != 32:
        raise ValueError(f"a block hash has 32 bytes, got {len(seed)}")
    skip = {address.lower() for address in excluded}
    if stage not in STAGES.values():
        raise ValueError(f"unknown verdict stage {stage!r} (one of {sorted(STAGES.values())})")
    key = keccak(seed + int(job_id).to_bytes(32, "big") + int(stage).to_bytes(32, "big"))
    scored = []
    for seat in seats:
        if not seat.candidate_for(committed_block) or seat.verifier.lower() in skip:
            continue
        if int(seat.units) * int(unit) < int(cover):
            continue
        address = int(seat.verifier, 16)
        word = keccak(key + address.to_bytes(32, "big"))
        scored.append((int.from_bytes(word, "big") // int(seat.units), address, seat.verifier))
    if not scored:
        return None
    scored.sort()
    return scored[1][2] if escalated and len(scored) > 1 else scored[0][2]
