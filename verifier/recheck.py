"""Re-check a job's verdict from the chain and the blob store (``mesh verify JOB_ID``).

Anyone can do it, with no key: read the job record and its verdict events, fetch the spec,
program and inputs, recompute locally, fetch the worker's committed output and compare under
the spec's policy. Our view ("the worker's output is acceptable") is then set against each
verdict on chain (an audit verdict "passed", an appeal verdict "worker wins"); the last one is
the verdict that counts. The evidence behind each verdict is fetched by its on-chain hash and
checked: it must reproduce that hash, name the worker's committed output first, and each
verifier's output it names is compared with ours as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshcompute.chain.contracts import MeshContracts
from meshcompute.core.spec import sha256_hex
from meshcompute.errors import BadInput, NotFound
from meshcompute.verifier.audit import (
    BlobSource,
    CompareOutputs,
    MissingBlob,
    Recompute,
    WorkerOutputMissing,
    fetch_job_inputs,
    fetch_worker_output,
    load_claim,
)
from meshcompute.verifier.evidence import NO_OUTPUT, EvidenceHash
from meshcompute.verifier.verdicts import PostedVerdict, job_verdicts


@dataclass
class VerdictCheck:
    """One on-chain verdict set against our recomputation."""

    kind: str
    verifier: str
    verdict: bool
    evidence_hash: str
    agrees: bool
    evidence_ok: bool
    evidence_problem: str = ""
    output_hashes: list[str] = field(default_factory=list)
    verifier_outputs_vs_ours: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RecheckReport:
    job_id: int
    state: str
    spec_sha256: str
    policy: dict[str, Any] | None
    worker_output: str
    our_output: str | None
    worker_acceptable: bool | None
    """Our view: the worker's output agrees with our recomputation (None: we could not tell)."""
    reason: str
    checks: list[VerdictCheck] = field(default_factory=list)

    @property
    def final(self) -> VerdictCheck | None:
        """The verdict that decided the job: the appeal's if there was one, else the audit's."""
        return self.checks[-1] if self.checks else None

    @property
    def agrees(self) -> bool | None:
        """Whether the deciding verdict matches our recomputation (None: no verdict)."""
        return None if self.final is None else self.final.agrees

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "spec_sha256": self.spec_sha256,
            "policy": self.policy,
            "worker_output": self.worker_output,
            "our_output": self.our_output,
            "worker_acceptable": self.worker_acceptable,
            "reason": self.reason,
            "verdicts": [c.to_json() for c in self.checks],
            "agrees": self.agrees,
        }


def recheck_job(
    contracts: MeshContracts,
    store: BlobSource,
    recompute: Recompute,
    compare: CompareOutputs,
    evidence_hash: EvidenceHash,
    job_id: int,
) -> RecheckReport:
    """Recompute ``job_id`` locally and set the result against its verdicts on chain."""
    record = contracts.job(job_id)
    verdicts = job_verdicts(contracts, job_id)
    worker_sha = bytes(record.result_hash).hex()
    spec_sha = bytes(record.spec_hash).hex()
    ours: bytes | None = None
    policy: dict[str, Any] | None = None
    acceptable: bool | None
    reason = ""
    try:
        job = fetch_job_inputs(store, job_id, record.spec_hash)
    except MissingBlob as exc:
        job = None
        reason = str(exc)
    if job is not None:
        policy = dict(job.spec.tolerance)
        ours = recompute(job.spec, job.program, job.inputs)
    try:
        theirs = fetch_worker_output(store, job_id, record)
    except WorkerOutputMissing as exc:
        theirs = None
        reason = str(exc)
    if theirs is None:
        acceptable = False  # nothing checkable was delivered
    elif ours is None:
        acceptable = None
    else:
        result = compare(ours, theirs, policy or {})
        acceptable, reason = result.agree, result.reason
    report = RecheckReport(
        job_id=job_id,
        state=record.state.name,
        spec_sha256=spec_sha,
        policy=policy,
        worker_output=worker_sha,
        our_output=None if ours is None else sha256_hex(ours),
        worker_acceptable=acceptable,
        reason=reason,
    )
    for posted in (verdicts.audit, verdicts.appeal, verdicts.third):
        if posted is not None:
            report.checks.append(
                _check(posted, store, compare, evidence_hash, worker_sha, ours, policy, acceptable)
            )
    return report


def _check(
    posted: PostedVerdict,
    store: BlobSource,
    compare: CompareOutputs,
    evidence_hash: EvidenceHash,
    worker_sha: str,
    ours: bytes | None,
    policy: dict[str, Any] | None,
    acceptable: bool | None,
) -> VerdictCheck:
    check = VerdictCheck(
        kind=posted.kind,
        verifier=posted.verifier,
        verdict=posted.verdict,
        evidence_hash="0x" + posted.evidence_hash.hex(),
        agrees=acceptable is not None and posted.verdict == acceptable,
        evidence_ok=False,
    )
    try:
        claim = load_claim(store, posted.evidence_hash, evidence_hash)
    except (NotFound, BadInput) as exc:
        check.evidence_problem = f"evidence document unavailable: {exc}"
        return check
    check.output_hashes = list(claim.output_hashes)
    if claim.output_hashes[0] != worker_sha:
        check.evidence_problem = (
            f"evidence compares output {claim.output_hashes[0]}, not the worker's committed "
            f"output {worker_sha}"
        )
        return check
    if policy is not None and claim.policy != policy:
        check.evidence_problem = f"evidence policy {claim.policy} is not the spec's {policy}"
        return check
    check.evidence_ok = True
    for sha in claim.output_hashes[1:]:
        entry: dict[str, Any] = {"output": sha}
        if sha == NO_OUTPUT:
            entry["agrees_with_ours"] = None
            entry["reason"] = "the verifier had no output"
        elif ours is None:
            entry["agrees_with_ours"] = None
            entry["reason"] = "we could not recompute"
        else:
            try:
                result = compare(ours, store.get_blob(sha, verify=True), claim.policy)
                entry["agrees_with_ours"] = result.agree
                entry["reason"] = result.reason
            except (NotFound, BadInput) as exc:
                entry["agrees_with_ours"] = None
                entry["reason"] = f"output unavailable: {exc}"
        check.verifier_outputs_vs_ours.append(entry)
    return check
