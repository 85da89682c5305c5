"""One audit, and one appeal, by blind independent recomputation.

The steps of an audit (:meth:`Auditor.audit`), in this order:

1. fetch the spec blob named by the on-chain ``specHash``, then the program and inputs blobs
   (each hash-checked by the blob store client); a missing one raises :class:`MissingBlob`;
2. recompute the job on this machine, upload our output and write its hash to the journal
   (synced to disk): from here on our answer is fixed;
3. only now fetch the worker's output, named by the result hash it committed on chain; if it is
   missing or does not hash to the commitment the worker has delivered nothing checkable
   (:class:`WorkerOutputMissing`, a fail once the caller decides it is final);
4. compare under the spec's tolerance policy, build the evidence hash over
   ``[worker output, our output]`` and the policy, and store an :class:`EvidenceRecord` blob.

An appeal (:meth:`Auditor.appeal`) is a third computation done the same blind way; the first
verifier's output is read from its evidence only after ours is fixed, and the majority of the
three outputs decides (:func:`meshcompute.verifier.evidence.appeal_worker_wins`).

Nothing here talks to the chain: the caller reads the record and posts the verdict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.errors import BadInput, JobFailed, NotFound
from meshcompute.verifier.evidence import (
    APPEAL,
    AUDIT,
    NO_OUTPUT,
    Comparison,
    EvidenceClaim,
    EvidenceHash,
    EvidenceRecord,
    appeal_worker_wins,
    claim_document,
    parse_claim,
)
from meshcompute.verifier.journal import Journal
from meshcompute.verifier.training_audit import AUDIT_DOC_KIND, TrainingJudge, TrainingJudgement

log = logging.getLogger("meshcompute.verifier")


class BlobSource(Protocol):
    """What the verifier needs of the market's blob store (``MarketClient`` provides it)."""

    def get_blob(self, sha256: str, *, verify: bool = True) -> bytes: ...

    def put_blob(self, data: bytes) -> str: ...


class Recompute(Protocol):
    """``recompute(spec, program, inputs, client=...) -> output safetensors``; raises
    :class:`RecomputeFailed`. ``client`` (the job's client on chain, or None) lets it keep a
    process for that client's next job (:class:`meshcompute.verifier.recompute.Recomputer`)."""

    def __call__(self, spec: JobSpec, program: bytes, inputs: bytes, *,
                 client: str | None = None) -> bytes: ...

CompareOutputs = Callable[[bytes, bytes, dict[str, Any]], "OutputComparison"]
"""``compare(expected, got, policy)``: two safetensors outputs under a tolerance policy."""

Perturb = Callable[[bytes], bytes]
"""``perturb(inputs) -> inputs`` with every floating element moved by one ulp."""

NearTies = Callable[[bytes, Sequence[bytes], bytes, dict[str, Any]], "str | None"]
"""``near_ties(ours, our_other_runs, theirs, policy)``: why an argmax/top-k disagreement is only
about near-ties that rounding decides, or None."""


@dataclass(frozen=True)
class OutputComparison:
    agree: bool
    reason: str
    max_abs: float | None = None
    max_rel: float | None = None
    agreement: float | None = None
    effective: dict[str, Any] | None = None
    """The policy applied after the rounding floors (also said in ``reason`` when the floor
    changed it), when the comparison went that far."""

    def between(self, a: int, b: int) -> Comparison:
        return Comparison(a, b, self.agree, self.reason, self.max_abs, self.max_rel,
                          self.agreement)


class MissingBlob(NotFound):
    """A blob the job needs (spec, program, inputs) is not in the blob store or is corrupt."""

    def __init__(self, job_id: int, role: str, sha256: str, detail: str) -> None:
        super().__init__(f"job {job_id}: the {role} blob {sha256} is unavailable ({detail})")
        self.job_id = job_id
        self.role = role
        self.sha256 = sha256


class WorkerOutputMissing(NotFound):
    """The worker's committed output is not in the blob store, or does not match its hash."""

    def __init__(self, job_id: int, sha256: str, detail: str) -> None:
        super().__init__(
            f"job {job_id}: the worker's output {sha256} (its on-chain commitment) is "
            f"unavailable ({detail})"
        )
        self.job_id = job_id
        self.sha256 = sha256


class RecomputeFailed(JobFailed):
    """Our own recomputation did not produce an output (no verdict can be given)."""


class NotReproducible(RecomputeFailed):
    """Our own recomputations disagree under the job's tolerance (two numeric setups, or a
    one-ulp change of the inputs): the job cannot be judged, so nobody is accused; the
    verifier declares it void on chain (:meth:`Auditor.void`). Non-reproducible is not guilty.
    ``output_hashes`` names the outputs of ours that disagree (stored in the blob store)."""

    def __init__(self, message: str, output_hashes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.output_hashes = tuple(output_hashes)


@dataclass(frozen=True)
class JobInputs:
    spec: JobSpec
    spec_sha256: str
    program: bytes
    inputs: bytes


@dataclass(frozen=True)
class VerdictReady:
    """A verdict to post: ``verdict`` is "passed" for an audit, "worker wins" for an appeal."""

    job_id: int
    kind: str
    verdict: bool
    evidence_hash: bytes
    evidence: EvidenceRecord
    evidence_sha256: str
    void: bool = False
    """An audit that cannot be judged (posted with ``voidAudit``; ``verdict`` is False)."""


def fetch_job_inputs(store: BlobSource, job_id: int, spec_hash: bytes) -> JobInputs:
    """The spec, program and inputs of a job, each checked against its hash."""
    spec_sha = bytes(spec_hash).hex()
    raw = _fetch(store, job_id, "spec", spec_sha)
    try:
        spec = JobSpec.from_bytes(raw)
    except BadInput as exc:
        raise MissingBlob(job_id, "spec", spec_sha, f"not a valid job spec: {exc}") from exc
    program = _fetch(store, job_id, "program", spec.program)
    inputs = _fetch(store, job_id, "inputs", spec.inputs)
    return JobInputs(spec=spec, spec_sha256=spec_sha, program=program, inputs=inputs)


def _fetch(store: BlobSource, job_id: int, role: str, sha: str) -> bytes:
    try:
        data = store.get_blob(sha, verify=True)
    except NotFound as exc:
        raise MissingBlob(job_id, role, sha, "not in the blob store") from exc
    except BadInput as exc:
        raise MissingBlob(job_id, role, sha, str(exc)) from exc
    if sha256_hex(data) != sha:  # the store client verifies too; this one is ours
        raise MissingBlob(job_id, role, sha, "content does not match its hash")
    return data


def fetch_worker_output(store: BlobSource, job_id: int, record: JobRecord) -> bytes:
    """The output the worker committed to on chain; WorkerOutputMissing when it cannot be had."""
    sha = bytes(record.result_hash).hex()
    try:
        data = store.get_blob(sha, verify=True)
    except NotFound as exc:
        raise WorkerOutputMissing(job_id, sha, "never uploaded to the blob store") from exc
    except BadInput as exc:
        raise WorkerOutputMissing(job_id, sha, str(exc)) from exc
    if sha256_hex(data) != sha:
        raise WorkerOutputMissing(job_id, sha, "content does not match the committed hash")
    return data


class Auditor:
    """Audits and appeals for one verifier; ``journal`` holds its blind commitments."""

    def __init__(
        self,
        store: BlobSource,
        recompute: Recompute,
        compare: CompareOutputs,
        evidence_hash: EvidenceHash,
        journal: Journal,
        *,
        verifier: str,
        chain_id: int,
        job_market: str,
        confirm: Recompute | None = None,
        check_own: CompareOutputs | None = None,
        perturb: Perturb | None = None,
        near_ties: NearTies | None = None,
        training: TrainingJudge | None = None,
    ) -> None:
        self.store = store
        self.training = training
        """Judges training jobs (:mod:`meshcompute.verifier.training_audit`); None: this
        verifier gives no verdict on them (RecomputeFailed), so another one or the window's
        end (void) decides."""
        self.recompute = recompute
        self.confirm = confirm
        """The recomputation under a second numeric setup that must confirm a fail before
        it is posted (None: a fail is posted on the first recomputation alone, without the
        stability checks below)."""
        self.check_own = check_own
        """``check_own(ours, other, policy)``: whether another computation of ours stays within
        the stability margin of our first (None: :func:`meshcompute.verifier.outputs.
        check_own_run`)."""
        self.perturb = perturb
        """Moves job inputs by one ulp (None: :func:`meshcompute.execution.perturb.
        perturb_inputs`)."""
        self.near_ties = near_ties
        """The near-tie excuse of argmax/top-k jobs (None: :func:`meshcompute.verifier.
        outputs.near_tie_excuse`)."""
        self.compare = compare
        self.evidence_hash = evidence_hash
        self.journal = journal
        self.verifier = verifier
        self.chain_id = chain_id
        self.job_market = job_market

    # ------------------------------------------------------------------ blind step
    def own_output(self, job_id: int, kind: str, job: JobInputs,
                   client: str | None = None) -> tuple[bytes, str]:
        """Our output for (job, kind), recomputed unless the journal already fixed one (then
        it is read back from the blob store, or recomputed if it must be, and must match).
        ``client``: the job's client on chain, so the recomputation may run in a process kept
        for that client's jobs (never another's)."""
        fixed = self.journal.own_output(job_id, kind)
        if fixed is not None:
            try:
                return self.store.get_blob(fixed, verify=True), fixed
            except (NotFound, BadInput):
                log.info("job %s: own output %s not in the blob store, recomputing", job_id, fixed)
        output = self.recompute(job.spec, job.program, job.inputs, client=client)
        sha = sha256_hex(output)
        if fixed is not None and sha != fixed:
            raise RecomputeFailed(
                f"job {job_id}: recomputation gave {sha}, but {fixed} was fixed earlier; "
                "keeping the earlier answer is impossible without its bytes"
            )
        self.store.put_blob(output)
        self.journal.record_own_output(job_id, kind, sha)
        return output, sha

    # ------------------------------------------------------------------ audit
    def audit(
        self, job_id: int, record: JobRecord, *, missing_output_is_final: bool
    ) -> VerdictReady:
        """Recompute, then compare with the worker's committed output.

        Raises :class:`MissingBlob` (nothing to compute with: no verdict), :class:`
        RecomputeFailed` (no verdict), or :class:`WorkerOutputMissing` while
        ``missing_output_is_final`` is False; once it is True, a missing output is a fail.
        With ``confirm``, a disagreement is recomputed under the second numeric setup before
        it becomes a fail: :class:`NotReproducible` when our two runs disagree with each other
        (no verdict), a pass when the worker's output agrees with the second run. A fail still
        standing is then checked for stability (:meth:`_check_judgeable`): our second run must
        stay within the stability margin of our first, and so must one more recomputation of
        ours on the inputs moved by one ulp; for argmax/top-k the worker's disagreement must not
        be only about near-ties. Otherwise :class:`NotReproducible`: the program is unstable
        under its tolerance and an honest worker's rounding could not be told from a cheat.
        Only then is it a fail.
        """
        job = fetch_job_inputs(self.store, job_id, record.spec_hash)
        if job.spec.is_training:
            return self._training(job_id, record, job, AUDIT, missing_output_is_final)
        ours, our_sha = self.own_output(job_id, AUDIT, job, record.client)
        worker_sha = bytes(record.result_hash).hex()
        policy = dict(job.spec.tolerance)
        try:
            theirs = fetch_worker_output(self.store, job_id, record)
        except WorkerOutputMissing as exc:
            if not missing_output_is_final:
                raise
            return self._finish(
                job_id, AUDIT, job.spec_sha256, policy, (worker_sha, our_sha), False, (),
                note=str(exc),
            )
        result = self._compare_worker(ours, theirs, job.spec)
        if not result.agree and self.confirm is not None:
            other = self.confirm(job.spec, job.program, job.inputs)
            own = self._compare_worker(ours, other, job.spec)
            if not own.agree:
                raise NotReproducible(
                    f"job {job_id}: our own recomputations under two numeric setups disagree "
                    f"under the job's tolerance ({own.reason}); it cannot be judged",
                    (our_sha, self.store.put_blob(other)),
                )
            second = self._compare_worker(other, theirs, job.spec)
            if second.agree:  # the worker's output is a legitimate computation of the job
                our_sha = self.store.put_blob(other)
                result = second
            else:
                self._check_judgeable(job_id, job, ours, other, theirs)
        return self._finish(
            job_id, AUDIT, job.spec_sha256, policy, (worker_sha, our_sha), result.agree,
            (result.between(0, 1),),
        )

    def fail_without_output(
        self,
        job_id: int,
        record: JobRecord,
        reason: str,
        *,
        kind: str = AUDIT,
        first_evidence: bytes | None = None,
    ) -> VerdictReady:
        """A fail (audit) or a lost appeal for a job whose worker output is missing when we
        have nothing to compute with ourselves (its spec, program or inputs are gone too).
        The evidence names the missing worker output and no output of ours. Call only once
        the window is about to close."""
        worker_sha = bytes(record.result_hash).hex()
        try:
            fetch_worker_output(self.store, job_id, record)
        except WorkerOutputMissing as exc:
            policy = self._policy_if_known(record)
            spec_sha = bytes(record.spec_hash).hex()
            note = f"{exc}; {reason}"
            if kind == AUDIT:
                return self._finish(job_id, AUDIT, spec_sha, policy, (worker_sha, NO_OUTPUT),
                                    False, (), note=note)
            first_sha = NO_OUTPUT
            if first_evidence is not None:
                first_sha, _, first_note = self._first_verifier_output(job_id, first_evidence)
                note = f"{note}; {first_note}".rstrip("; ")
            return self._finish(job_id, APPEAL, spec_sha, policy,
                                (worker_sha, first_sha, NO_OUTPUT), False, (), note=note,
                                previous=first_evidence)
        raise BadInput(
            f"job {job_id}: the worker's output is present; it is not a missing-output fail"
        )

    def worker_output_present(self, job_id: int, record: JobRecord) -> bool:
        """Whether the worker's committed output can be fetched (used only when we cannot
        compute ourselves, so looking at it breaks no blindness)."""
        try:
            fetch_worker_output(self.store, job_id, record)
        except WorkerOutputMissing:
            return False
        return True

    def void(self, job_id: int, record: JobRecord, exc: NotReproducible) -> VerdictReady:
        """The evidence of a void audit: the worker's output and ours (the on-chain hash, as
        for any audit), with the disagreeing outputs of ours and the reason in the record."""
        spec_sha = bytes(record.spec_hash).hex()
        worker_sha = bytes(record.result_hash).hex()
        our_sha = self.journal.own_output(job_id, AUDIT) or NO_OUTPUT
        ready = self._finish(job_id, AUDIT, spec_sha, self._policy_if_known(record),
                             (worker_sha, our_sha), False, (), note=f"void: {exc}",
                             extra={"void": True,
                                    "disagreeing_outputs": list(exc.output_hashes)})
        return replace(ready, void=True)

    # ------------------------------------------------------------------ appeal
    def appeal(
        self,
        job_id: int,
        record: JobRecord,
        first_evidence_hash: bytes,
        *,
        missing_output_is_final: bool,
    ) -> VerdictReady:
        """The third recomputation of an appealed job; the majority of three outputs decides.

        A disputed pass (the client appealed it) is judged by this recomputation alone: the
        passing verifier is the one under suspicion (it may have passed without recomputing
        and named the worker's own output), so its output never counts as a vote for the
        worker. The pass stands when this verifier agrees with the worker, or when a failure
        could not be told from honest rounding (as for an appealed failure)."""
        job = fetch_job_inputs(self.store, job_id, record.spec_hash)
        if job.spec.is_training:
            return self._training(job_id, record, job, APPEAL, missing_output_is_final,
                                  first_evidence_hash)
        ours, our_sha = self.own_output(job_id, APPEAL, job, record.client)
        policy = dict(job.spec.tolerance)
        worker_sha = bytes(record.result_hash).hex()
        first_sha, first_output, first_note = self._first_verifier_output(
            job_id, first_evidence_hash
        )
        try:
            theirs = fetch_worker_output(self.store, job_id, record)
        except WorkerOutputMissing as exc:
            if not missing_output_is_final:
                raise
            return self._finish(
                job_id, APPEAL, job.spec_sha256, policy, (worker_sha, first_sha, our_sha),
                False, (), note=f"{exc}; {first_note}".rstrip("; "),
                previous=first_evidence_hash,
            )
        comparisons: list[Comparison] = []
        worker_vs_appeal = self._compare_worker(ours, theirs, job.spec)
        comparisons.append(worker_vs_appeal.between(0, 2))
        worker_vs_first: bool | None = None
        if first_output is not None:
            wf = self._compare_worker(first_output, theirs, job.spec)
            comparisons.append(wf.between(0, 1))
            comparisons.append(self.compare(ours, first_output, policy).between(1, 2))
            worker_vs_first = wf.agree
        if record.state in (JobState.DISPUTED, JobState.DISPUTE_CONTESTED,
                            JobState.FAILURE_ESCALATED, JobState.PASS_ESCALATED):
            # a disputed pass's verifier, and both verifiers of an escalated uphold, are the
            # ones in question: our recomputation alone judges
            wins = worker_vs_appeal.agree
        else:
            wins = appeal_worker_wins(worker_vs_first, worker_vs_appeal.agree)
        note = first_note
        if not wins and self.confirm is not None:
            # a failure stands only where an audit could have told it from honest rounding:
            # a program unstable under its tolerance should have been void, so the worker wins
            other = self.confirm(job.spec, job.program, job.inputs)
            if self._compare_worker(other, theirs, job.spec).agree:
                wins, note = True, "the worker agrees with our second numeric setup"
            else:
                try:
                    self._check_judgeable(job_id, job, ours, other, theirs)
                except NotReproducible as exc:
                    wins, note = True, f"the failure cannot stand: {exc}"
            note = f"{note}; {first_note}".strip("; ")
        return self._finish(
            job_id, APPEAL, job.spec_sha256, policy, (worker_sha, first_sha, our_sha), wins,
            tuple(comparisons), note=note, previous=first_evidence_hash,
        )

    def _training(self, job_id: int, record: JobRecord, job: JobInputs, kind: str,
                  missing_output_is_final: bool,
                  first_evidence: bytes | None = None) -> VerdictReady:
        """An audit or appeal of a training job: our own recomputation of the drawn segments
        (:meth:`TrainingJudge.judge`) decides; an appeal is judged by it alone, as a disputed
        pass is, and a segment that disagrees is judged again one step at a time from the
        states the worker uploaded for its appeal."""
        if self.training is None:
            raise RecomputeFailed(f"job {job_id} is a training job; this verifier does not "
                                  "judge training jobs")
        policy = dict(job.spec.tolerance)
        worker_sha = bytes(record.result_hash).hex()
        first: tuple[str, ...] = ()
        note = ""
        if kind == APPEAL:
            assert first_evidence is not None
            first_sha, _, note = self._first_verifier_output(job_id, first_evidence)
            first = (first_sha,)
        try:
            manifest = fetch_worker_output(self.store, job_id, record)
        except WorkerOutputMissing as exc:
            if not missing_output_is_final:
                raise
            return self._finish(job_id, kind, job.spec_sha256, policy,
                                (worker_sha, *first, NO_OUTPUT), False, (),
                                note=f"{exc}; {note}".rstrip("; "), previous=first_evidence)
        try:
            judged = self.training.judge(self.store, job_id, record, job.spec, job.program,
                                         job.inputs, manifest, narrow=kind == APPEAL)
        except NotReproducible as exc:
            if kind == AUDIT:
                raise  # void: the service posts it (Auditor.void)
            # an appeal of a failure that could not be told from chaos: the worker wins
            reason = f"the failure cannot stand: {exc}"
            judged = TrainingJudgement(True, reason, json.dumps(
                {"kind": AUDIT_DOC_KIND, "reason": reason}).encode(), None, None)
        our_sha = self.store.put_blob(judged.document)
        hashes = (worker_sha, *first, our_sha)
        comparison = Comparison(0, len(hashes) - 1, judged.verdict, judged.reason,
                                judged.max_abs, judged.used)
        return self._finish(job_id, kind, job.spec_sha256, policy, hashes, judged.verdict,
                            (comparison,), note=note, previous=first_evidence)

    def _check_judgeable(
        self, job_id: int, job: JobInputs, ours: bytes, other: bytes, theirs: bytes
    ) -> None:
        """Raise :class:`NotReproducible` unless a fail of ``theirs`` can be told from honest
        rounding: our alternate-setup output ``other`` and our output on the inputs moved by
        one ulp must both stay within the stability margin of ``ours`` (a quarter of the
        effective tolerance), and an argmax/top-k disagreement must not be only near-ties."""
        from meshcompute.execution.perturb import perturb_inputs
        from meshcompute.verifier.outputs import check_own_run, near_tie_excuse

        check = self.check_own or check_own_run
        policy = dict(job.spec.tolerance)
        our_sha = sha256_hex(ours)
        margin = check(ours, other, policy)
        if not margin.agree:
            raise NotReproducible(
                f"job {job_id}: our own recomputations under two numeric setups differ too much "
                f"to judge a worker: the second {margin.reason}; it cannot be judged",
                (our_sha, self.store.put_blob(other)),
            )
        try:
            moved_inputs = (self.perturb or perturb_inputs)(job.inputs)
        except BadInput as exc:
            raise RecomputeFailed(f"job {job_id}: cannot move the inputs by one ulp: {exc}") \
                from exc
        others = [other]
        if moved_inputs != job.inputs:  # equal without floating inputs: our first run again
            moved = self.recompute(job.spec, job.program, moved_inputs)
            shifted = check(ours, moved, policy)
            if not shifted.agree:
                raise NotReproducible(
                    f"job {job_id}: the program is unstable under its tolerance: a one-ulp "
                    f"change of the inputs {shifted.reason}; an honest worker's rounding "
                    "cannot be told from a wrong result, so it cannot be judged",
                    (our_sha, self.store.put_blob(moved)),
                )
            others.append(moved)
        tie = (self.near_ties or near_tie_excuse)(ours, others, theirs, policy)
        if tie is not None:
            raise NotReproducible(f"job {job_id}: {tie}; it cannot be judged",
                                  (our_sha, *(self.store.put_blob(o) for o in others)))

    def _compare_worker(self, reference: bytes, theirs: bytes, spec: JobSpec) -> OutputComparison:
        """The worker's output against ``reference`` under the job's policy. An output over
        the job's ``max_output_bytes`` is refused unread: an honest runner never writes one
        (it fails the job instead), and parsing it would cost the verifier the memory."""
        if len(theirs) > spec.max_output_bytes:
            return OutputComparison(
                False,
                f"worker output is {len(theirs)} bytes, over the job's max_output_bytes "
                f"{spec.max_output_bytes}",
            )
        return self.compare(reference, theirs, dict(spec.tolerance))

    def _first_verifier_output(
        self, job_id: int, first_evidence_hash: bytes
    ) -> tuple[str, bytes | None, str]:
        """(hash, bytes or None, note) of the first verifier's output, from its evidence."""
        try:
            first = load_claim(self.store, first_evidence_hash, self.evidence_hash)
        except (NotFound, BadInput) as exc:
            return NO_OUTPUT, None, f"first verifier's evidence unavailable: {exc}"
        if len(first.output_hashes) != 2:
            return NO_OUTPUT, None, "first verifier's evidence does not compare two outputs"
        sha = first.output_hashes[1]
        if sha == NO_OUTPUT:
            return sha, None, "the first verifier had no output of its own"
        try:
            return sha, self.store.get_blob(sha, verify=True), ""
        except (NotFound, BadInput) as exc:
            return sha, None, f"first verifier's output {sha} unavailable: {exc}"

    # ------------------------------------------------------------------ evidence
    def _finish(
        self,
        job_id: int,
        kind: str,
        spec_sha: str,
        policy: dict[str, Any],
        hashes: tuple[str, ...],
        verdict: bool,
        comparisons: tuple[Comparison, ...],
        *,
        note: str = "",
        previous: bytes | None = None,
        extra: dict[str, Any] | None = None,
    ) -> VerdictReady:
        digest = bytes(self.evidence_hash(list(hashes), dict(policy)))
        record = EvidenceRecord(
            kind=kind,
            chain_id=self.chain_id,
            job_market=self.job_market,
            job_id=job_id,
            spec_sha256=spec_sha,
            policy=policy,
            output_hashes=hashes,
            verifier=self.verifier,
            verdict=verdict,
            evidence_hash="0x" + digest.hex(),
            comparisons=comparisons,
            note=note,
            previous_evidence=None if previous is None else "0x" + bytes(previous).hex(),
            extra=dict(extra or {}),
        )
        evidence_sha = store_evidence(self.store, record, self.evidence_hash)
        return VerdictReady(job_id, kind, verdict, digest, record, evidence_sha)

    def _policy_if_known(self, record: JobRecord) -> dict[str, Any]:
        try:
            spec = JobSpec.from_bytes(self.store.get_blob(bytes(record.spec_hash).hex()))
            return dict(spec.tolerance)
        except (NotFound, BadInput):
            return {"kind": "exact"}


# ---------------------------------------------------------------------- evidence blobs
def store_evidence(store: BlobSource, record: EvidenceRecord, evidence_hash: EvidenceHash) -> str:
    """Upload the claim document (named by the on-chain evidence hash) and the full record;
    returns the record's sha256."""
    document = claim_document(record.output_hashes, record.policy)
    name = sha256_hex(document)
    expected = bytes(evidence_hash(list(record.output_hashes), dict(record.policy))).hex()
    if name != expected or "0x" + name != record.evidence_hash:
        raise BadInput(
            f"evidence document hashes to {name}, not to the evidence hash {expected}: "
            "verifier.evidence.claim_document and tolerance.evidence_hash disagree"
        )
    if store.put_blob(document) != name:
        raise BadInput(f"blob store named the evidence document differently from {name}")
    return store.put_blob(record.to_bytes())


def load_claim(store: BlobSource, onchain_evidence: bytes, evidence_hash: EvidenceHash) -> EvidenceClaim:
    """The claim behind an on-chain evidence hash, fetched from the blob store by that hash."""
    raw = store.get_blob(bytes(onchain_evidence).hex(), verify=True)
    return parse_claim(raw, onchain_evidence, evidence_hash)
