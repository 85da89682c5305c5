"""The audit of a training job, by segments (used by :class:`meshcompute.verifier.audit.Auditor`
for specs with a training plan).

1. the worker's result is its manifest (:func:`meshcompute.core.training.parse_manifest`); a
   manifest that is not one, or names other than one checkpoint per segment, fails;
2. the segments to recompute come from the audit draw's seed, the hash of the block after the
   commit, which the worker could not know when it committed: always the last one (its end is
   the state the client gets) and one more (:func:`meshcompute.core.training.audit_segments`);
3. each is recomputed in the sandbox from the worker's checkpoint before it (the job's initial
   state for the first) and compared with the worker's checkpoint after it
   (:func:`meshcompute.execution.training.compare_states`); where they differ, the segment is
   recomputed again with each batch in two halves and judged with our own spread; a checkpoint
   the manifest names but the store does not hold fails the segment.

Unlike an inference audit this one is not blind: recomputing a segment needs the worker's own
checkpoint before it. What keeps it honest is that our recomputation starts from the worker's
claim and is compared with the worker's next claim: reading them first changes nothing we
compute. The verdict's evidence names the manifest and our document (every recomputed
segment's end state, stored as blobs, with the comparison)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from meshcompute.core.job import JobRecord
from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.core.training import (
    DEFAULT_AUDITED_SEGMENTS,
    audit_segments,
    parse_manifest,
    parse_steps,
    segments,
    validate_plan,
)
from meshcompute.errors import BadInput, NotFound

SegmentRun = Callable[[JobSpec, bytes, bytes, "bytes | None", int, int, bool], bytes]
"""``run(spec, program, data, start_state, start, end, alternate) -> our end state``, with
``alternate`` our second numeric setup; raises
:class:`meshcompute.verifier.audit.RecomputeFailed` when our run fails."""
SegmentLinks = Callable[[JobSpec, bytes, bytes, Sequence["bytes | None"], Sequence[int], bool],
                        list[bytes]]
"""``links(spec, program, data, befores, steps, alternate)``: each step alone from its state
(:data:`meshcompute.execution.training.LinkRun` for a job), in one process."""



AUDIT_DOC_KIND = "mesh-training-audit"


@dataclass(frozen=True)
class TrainingJudgement:
    verdict: bool
    reason: str
    document: bytes
    """Our account of the audit: each recomputed segment, the worker's checkpoint and ours."""
    max_abs: float | None
    used: float | None


@dataclass
class TrainingJudge:
    """Judges training results: ``run`` recomputes a segment (in the sandbox), ``seed_of``
    reads the audit draw's seed of a job record (the hash of the block after its commit)."""

    run: SegmentRun
    seed_of: Callable[[JobRecord], bytes]
    audited_segments: int = DEFAULT_AUDITED_SEGMENTS
    links: SegmentLinks | None = None
    """How an appeal runs a segment step by step; None: one ``run`` per step."""

    def judge(self, store: Any, job_id: int, record: JobRecord, spec: JobSpec, program: bytes,
              data: bytes, manifest: bytes, *, narrow: bool = False) -> TrainingJudgement:
        """``narrow`` (an appeal): a segment whose end state disagrees is judged again one step
        at a time from the worker's own states (:meth:`_narrow`), when the worker uploaded
        them; the verdict on it is that one."""
        from meshcompute.execution.training import judge_segment
        from meshcompute.verifier.audit import NotReproducible

        assert spec.training is not None
        try:
            plan = validate_plan(spec.training)
        except BadInput as exc:  # accepted when posted, refused by this version's rules
            raise NotReproducible(f"job {job_id}: its training plan cannot be judged by this "
                                  f"verifier: {exc}") from None
        try:
            doc = parse_manifest(manifest, plan)
        except BadInput as exc:
            return _fail(f"the worker's result is not a training manifest for this plan: {exc}")
        bounds = segments(plan)
        rows: list[dict[str, Any]] = []
        worst_used, worst_abs = 0.0, 0.0
        reasons = []
        for index in audit_segments(plan, self.seed_of(record), self.audited_segments):
            start, end = bounds[index]
            theirs_sha = doc["checkpoints"][index]
            try:
                theirs = _worker_blob(store, theirs_sha)
                if index > 0:
                    before = _worker_blob(store, doc["checkpoints"][index - 1])
                else:
                    before = store.get_blob(spec.state, verify=True) if spec.state else None
            except _Missing as exc:
                return _fail(f"segment {index}: {exc}", rows)
            impossible = _impossible(theirs, "after") or (
                _impossible(before, "before") if index > 0 else None)
            if impossible is not None:
                reason = f"segment {index} (steps {start}-{end}): {impossible}"
                rows.append({"segment": index, "steps": [start, end], "worker": theirs_sha,
                             "agree": False, "reason": reason})
                reasons.append(reason)
                continue
            ours = self.run(spec, program, data, before, start, end, False)
            our_sha = store.put_blob(ours)
            judged = judge_segment(ours, theirs, spec.tolerance, partial(
                self.run, spec, program, data, before, start, end, True))
            if judged.unjudgeable is not None:
                assert judged.second is not None
                raise NotReproducible(
                    f"job {job_id}: segment {index} (steps {start}-{end}): our own two runs "
                    f"differ by {judged.unjudgeable.used:.3g} times the tolerance: the training "
                    "is chaotic under it and cannot be judged",
                    (our_sha, store.put_blob(judged.second)))
            check = judged.check
            row = {"segment": index, "steps": [start, end], "worker": theirs_sha,
                   "ours": our_sha, "agree": check.agree, "reason": check.reason}
            agree, reason = check.agree, check.reason
            if not agree and narrow:
                agree, reason, row["narrowed"] = self._narrow(
                    store, job_id, spec, program, data, plan, doc, index, before)
            rows.append(row)
            worst_used = max(worst_used, check.used)
            worst_abs = max(worst_abs, check.max_abs)
            if not agree:
                reasons.append(f"segment {index} (steps {start}-{end}): {reason}")
        verdict = not reasons
        reason = ("; ".join(reasons) if reasons else
                  f"{len(rows)} segments recomputed from the worker's checkpoints agree "
                  f"(at most {worst_used:.3g} of the allowance)")
        return TrainingJudgement(verdict, reason, _document(rows, reason), worst_abs, worst_used)


    def _narrow(self, store: Any, job_id: int, spec: JobSpec, program: bytes, data: bytes,
                plan: Any, doc: dict[str, Any], index: int,
                before: bytes | None) -> tuple[bool, str, dict[str, Any]]:
        """Segment ``index`` judged step by step (:func:`meshcompute.execution.training.
        check_links`) from the worker's step record, which its manifest committed before the
        audit, and the states it names, which the worker uploads when it appeals. Without
        them, the segment's failure stands. Returns (agree, reason, what the document says)."""
        from meshcompute.execution.training import check_links

        start, _ = segments(plan)[index]
        checkpoint = doc["checkpoints"][index]
        if not doc.get("steps"):
            reason = ("the worker's manifest names no step records (a worker from before "
                      "them); the segment's verdict stands")
            return False, reason, {"agree": False, "reason": reason}
        try:
            states = parse_steps(_worker_blob(store, doc["steps"][index]), plan, index,
                                 checkpoint)
            chain: list[bytes | None] = [before]
            chain += [_worker_blob(store, sha) for sha in states]
        except (_Missing, BadInput) as exc:
            reason = (f"the worker's states within the segment are unavailable ({exc}); the "
                      "segment's verdict stands")
            return False, reason, {"agree": False, "reason": reason}
        links = check_links(chain, start, spec.tolerance,
                            partial(self._links, spec, program, data))
        reason = links.reason
        if links.unjudgeable is not None:
            # the segment as a whole could be judged; a step that cannot, from the worker's
            # own states, only says those states lead somewhere chaotic: the verdict stands
            reason = f"{links.reason}; the segment's verdict stands"
        result = {"agree": links.agree, "reason": reason, "step": links.step,
                  "steps_run": links.steps_run}
        return links.agree, reason, result


    def _links(self, spec: JobSpec, program: bytes, data: bytes,
               befores: Sequence[bytes | None], steps: Sequence[int],
               alternate: bool) -> list[bytes]:
        if self.links is not None:
            return self.links(spec, program, data, befores, steps, alternate)
        return [self.run(spec, program, data, before, step, step + 1, alternate)
                for before, step in zip(befores, steps, strict=True)]


class _Missing(Exception):
    pass


def _impossible(state: bytes | None, where: str) -> str | None:
    """Why the worker's checkpoint ``where`` the segment is no state a run can be in (a value
    not finite, a negative second moment: :func:`meshcompute.execution.training.
    state_problem`), or None."""
    from safetensors.torch import load as st_load

    from meshcompute.execution.training import state_problem

    if state is None:
        return None
    try:
        tensors = st_load(state)
    except Exception:  # noqa: BLE001 - the worker's bytes may be anything
        return f"the worker's checkpoint {where} it is not a safetensors file"
    problem = state_problem(tensors)
    return None if problem is None else f"the worker's checkpoint {where} it: {problem}"


def _worker_blob(store: Any, sha: str) -> bytes:
    try:
        data = store.get_blob(sha, verify=True)
    except (NotFound, BadInput) as exc:
        raise _Missing(f"the worker's checkpoint {sha} is unavailable ({exc})") from None
    if sha256_hex(data) != sha:
        raise _Missing(f"the worker's checkpoint {sha} does not match its hash")
    return data


def _document(rows: list[dict[str, Any]], reason: str) -> bytes:
    return json.dumps({"kind": AUDIT_DOC_KIND, "segments": rows, "reason": reason},
                      sort_keys=True, separators=(",", ":")).encode()


def _fail(reason: str, rows: list[dict[str, Any]] | None = None) -> TrainingJudgement:
    return TrainingJudgement(False, reason, _document(rows or [], reason), None, None)


def _sandboxed(recomputer: Any, spec: JobSpec, alternate: bool, *,
               diverged_is_an_answer: bool = False, **job: Any) -> Any:
    """:func:`meshcompute.execution.train_runner.run_training_job` in our setup (``alternate``:
    the verifiers' second numeric setup, each batch in two halves); RecomputeFailed when it
    fails."""
    from meshcompute.execution.stability import ALTERNATE_SETUP
    from meshcompute.execution.train_runner import run_training_job
    from meshcompute.verifier.audit import RecomputeFailed

    assert spec.training is not None
    halves = 2 if alternate and int(spec.training["batch_size"]) % 2 == 0 else 1
    try:
        outcome = run_training_job(
            threads=recomputer.threads + (ALTERNATE_SETUP["extra_threads"] if alternate
                                          else 0),
            micro_batches=halves,
            cpu_capability=ALTERNATE_SETUP["cpu_capability"] if alternate else None,
            onednn_max_isa=ALTERNATE_SETUP["onednn_max_isa"] if alternate else None,
            time_limit_s=spec.time_limit_s, memory_limit_mb=spec.memory_limit_mb,
            scratch_root=recomputer.scratch_root,
            allow_unsandboxed=recomputer.allow_unsandboxed, **job)
    except BadInput as exc:
        raise RecomputeFailed(f"training segment refused: {exc}") from None
    if not outcome.ok:
        raise RecomputeFailed(f"training segment recomputation failed: {outcome.reason}")
    if outcome.diverged_at is not None and not diverged_is_an_answer:
        raise RecomputeFailed(f"our recomputation diverged at step {outcome.diverged_at}")
    return outcome


def sandboxed_segment_run(recomputer: Any) -> SegmentRun:
    """A :data:`SegmentRun` in the job sandbox with ``recomputer``'s threads, scratch folder
    and sandbox setting (:class:`meshcompute.verifier.recompute.Recomputer`). The alternate
    setup is the verifiers' second numeric setup (:data:`meshcompute.execution.stability.
    ALTERNATE_SETUP`: one more thread, torch's plainest kernels, oneDNN on SSE4.1) with each
    batch in two halves: other reductions, other instructions, as another machine's."""

    def run(spec: JobSpec, program: bytes, data: bytes, state: bytes | None, start: int,
            end: int, alternate: bool) -> bytes:
        return _sandboxed(recomputer, spec, alternate, program=program, data=data,
                          plan=spec.training, state=state, start=start, end=end,
                          max_output_bytes=spec.max_output_bytes).last_state

    return run


def sandboxed_links_run(recomputer: Any) -> SegmentLinks:
    """A :data:`SegmentLinks` in one sandboxed process, in the setups of
    :func:`sandboxed_segment_run`."""

    def run(spec: JobSpec, program: bytes, data: bytes, befores: Sequence[bytes | None],
            steps: Sequence[int], alternate: bool) -> list[bytes]:
        outcome = _sandboxed(recomputer, spec, alternate, program=program, data=data,
                             plan=spec.training, links=list(zip(befores, steps, strict=True)),
                             max_output_bytes=spec.max_output_bytes * max(1, len(steps)),
                             diverged_is_an_answer=True)
        return list(outcome.link_states)[:len(steps)]

    return run
