"""Evidence of a verdict, and the majority rule of an appeal. Pure: no I/O.

A verdict on chain carries one ``bytes32``: :func:`meshcompute.core.tolerance.evidence_hash`
over the sha256 of every output compared (worker first) and the job's tolerance policy. That
hash is the sha256 of a small canonical JSON document (:func:`claim_document`), and the
verifier stores exactly that document in the blob store, so the on-chain evidence hash *names a
blob*: anyone can fetch it, read which outputs were compared under which policy, and re-check
the verdict (``mesh verify JOB_ID``). :func:`parse_claim` accepts a document only when it
hashes back to the on-chain value.

The verifier also stores a fuller :class:`EvidenceRecord` (job, verdict, measured differences)
for people reading its logs; nothing trusts it without checking it against the claim.

Output hashes are lowercase sha256 hex; an output that could not be obtained (the worker never
uploaded it, or there was nothing to compute with) is written as :data:`NO_OUTPUT`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshcompute.core.spec import is_sha256_hex, validate_tolerance
from meshcompute.errors import BadInput

EVIDENCE_VERSION = 1
NO_OUTPUT = "0" * 64
"""Stands for an output that does not exist (never uploaded, or not computable)."""

AUDIT = "audit"
APPEAL = "appeal"
ROLES = {
    AUDIT: ("worker", "verifier"),
    APPEAL: ("worker", "first_verifier", "appeal_verifier"),
}

EvidenceHash = Callable[[Sequence[str], dict[str, Any]], bytes]

CLAIM_VERSION = "meshcompute.evidence.v1"
"""The ``version`` field of a claim document (the one ``tolerance.evidence_hash`` hashes)."""


@dataclass(frozen=True)
class EvidenceClaim:
    """What an on-chain evidence hash commits to: the outputs compared and the policy."""

    output_hashes: tuple[str, ...]
    policy: dict[str, Any]


def claim_document(output_hashes: Sequence[str], policy: dict[str, Any]) -> bytes:
    """The canonical JSON whose sha256 is ``tolerance.evidence_hash(output_hashes, policy)``
    (callers check the two agree before relying on it)."""
    document = {
        "outputs": list(output_hashes),
        "policy": validate_tolerance(policy),
        "version": CLAIM_VERSION,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def parse_claim(raw: bytes, onchain_evidence: bytes, evidence_hash: EvidenceHash) -> EvidenceClaim:
    """Read a claim document; BadInput unless it reproduces ``onchain_evidence``."""
    try:
        data = json.loads(raw)
        outputs = tuple(str(h) for h in data["outputs"])
        policy = validate_tolerance(data["policy"])
        version = data["version"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BadInput(f"evidence document is malformed: {exc!r}") from exc
    if version != CLAIM_VERSION:
        raise BadInput(f"evidence document version {version!r} is not supported")
    for value in outputs:
        if not is_sha256_hex(value):
            raise BadInput(f"evidence document output {value!r} is not lowercase sha256 hex")
    recomputed = bytes(evidence_hash(list(outputs), dict(policy)))
    if recomputed != bytes(onchain_evidence):
        raise BadInput(
            f"evidence document gives 0x{recomputed.hex()}, not the on-chain evidence "
            f"0x{bytes(onchain_evidence).hex()}"
        )
    return EvidenceClaim(outputs, policy)


@dataclass(frozen=True)
class Comparison:
    """One pairwise comparison of two outputs (indexes into ``output_hashes``)."""

    a: int
    b: int
    agree: bool
    reason: str
    max_abs: float | None = None
    max_rel: float | None = None
    agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "agree": self.agree,
            "reason": self.reason,
            "max_abs": _finite_or_text(self.max_abs),
            "max_rel": _finite_or_text(self.max_rel),
            "agreement": _finite_or_text(self.agreement),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            a=int(data["a"]),
            b=int(data["b"]),
            agree=bool(data["agree"]),
            reason=str(data["reason"]),
            max_abs=_number_or_none(data.get("max_abs")),
            max_rel=_number_or_none(data.get("max_rel")),
            agreement=_number_or_none(data.get("agreement")),
        )


@dataclass(frozen=True)
class EvidenceRecord:
    """What a verifier compared and concluded about one job, stored as a blob."""

    kind: str
    """``"audit"`` (hashes: worker, verifier) or ``"appeal"`` (worker, first, appeal verifier)."""
    chain_id: int
    job_market: str
    job_id: int
    spec_sha256: str
    policy: dict[str, Any]
    output_hashes: tuple[str, ...]
    verifier: str
    verdict: bool
    """Audit: the worker's output passed. Appeal: the worker wins."""
    evidence_hash: str
    """0x hex of the bytes32 posted on chain."""
    comparisons: tuple[Comparison, ...] = ()
    note: str = ""
    """Why the verdict was reached when no comparison decided it (a missing output)."""
    previous_evidence: str | None = None
    """Appeal: the first verifier's on-chain evidence hash (0x hex)."""
    version: int = EVIDENCE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ROLES:
            raise BadInput(f"evidence kind must be one of {sorted(ROLES)}, got {self.kind!r}")
        if len(self.output_hashes) != len(ROLES[self.kind]):
            raise BadInput(
                f"{self.kind} evidence needs {len(ROLES[self.kind])} output hashes "
                f"({', '.join(ROLES[self.kind])}), got {len(self.output_hashes)}"
            )
        for value in self.output_hashes:
            if not is_sha256_hex(value):
                raise BadInput(f"evidence output hash {value!r} is not lowercase sha256 hex")
        object.__setattr__(self, "policy", validate_tolerance(self.policy))
        if self.version != EVIDENCE_VERSION:
            raise BadInput(f"evidence version {self.version} is not supported")

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLES[self.kind]

    def output_of(self, role: str) -> str:
        return self.output_hashes[self.roles.index(role)]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind,
            "chain_id": self.chain_id,
            "job_market": self.job_market,
            "job_id": self.job_id,
            "spec_sha256": self.spec_sha256,
            "policy": dict(self.policy),
            "roles": list(self.roles),
            "output_hashes": list(self.output_hashes),
            "verifier": self.verifier,
            "verdict": self.verdict,
            "evidence_hash": self.evidence_hash,
            "comparisons": [c.to_json() for c in self.comparisons],
            "note": self.note,
            "previous_evidence": self.previous_evidence,
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces), the bytes stored in the blob store."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EvidenceRecord:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"evidence record is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadInput("evidence record must be a JSON object")
        try:
            return cls(
                kind=str(data["kind"]),
                chain_id=int(data["chain_id"]),
                job_market=str(data["job_market"]),
                job_id=int(data["job_id"]),
                spec_sha256=str(data["spec_sha256"]),
                policy=dict(data["policy"]),
                output_hashes=tuple(str(h) for h in data["output_hashes"]),
                verifier=str(data["verifier"]),
                verdict=bool(data["verdict"]),
                evidence_hash=str(data["evidence_hash"]),
                comparisons=tuple(Comparison.from_json(c) for c in data.get("comparisons", [])),
                note=str(data.get("note", "")),
                previous_evidence=data.get("previous_evidence"),
                version=int(data.get("version", EVIDENCE_VERSION)),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"evidence record is malformed: {exc!r}") from exc


def appeal_worker_wins(worker_vs_first: bool | None, worker_vs_appeal: bool) -> bool:
    """The majority rule of an appeal over three outputs (worker, first verifier, appeal
    verifier): the worker wins when at least one other computation agrees with its output,
    so at least two of the three agree with it. ``worker_vs_first`` is None when the first
    verifier's output cannot be obtained; then the two remaining computations decide.

    Agreement is under the job's tolerance policy, which is not transitive; when no two of the
    three agree, both others disagree with the worker and the worker loses.
    """
    return bool(worker_vs_appeal or worker_vs_first)


def _finite_or_text(value: float | None) -> float | str | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _number_or_none(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)
