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


def assigned_verifier(
    verifiers: Sequence[str],
    seed: bytes,
    job_id: int,
    *,
    excluded: Iterable[str],
    appealed: bool,
    escalated: bool,
    keccak: Keccak256,
) -> str | None:
    """``JobMarket._assignee``: the verifier the draw assigns to a job's pending verdict.

    ``verifiers`` are the holders of VERIFIER_ROLE in the contract's order, ``seed`` the
    draw's seed block hash (zero when the chain no longer has it), ``excluded`` the job's
    worker and client (and, for an appeal or dispute, the verifier whose verdict is in
    question). From a start drawn from ``(seed, job_id, appealed)`` the list is walked and the
    first candidate not excluded is assigned, or the second once ``escalated`` (the window is
    in its second half; the first again when there is no second). None: no candidate."""
    if len(seed) != 32:
        raise ValueError(f"a block hash has 32 bytes, got {len(seed)}")
    n = len(verifiers)
    if n == 0:
        return None
    skip = {address.lower() for address in excluded}
    word = keccak(seed + int(job_id).to_bytes(32, "big") + int(bool(appealed)).to_bytes(32, "big"))
    start = int.from_bytes(word, "big") % n
    first: str | None = None
    for k in range(n):
        candidate = verifiers[(start + k) % n]
        if candidate.lower() in skip:
            continue
        if first is not None:
            return candidate
        first = candidate
        if not escalated:
            return candidate
    return first
