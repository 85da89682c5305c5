"""The audit of a training job by the real Auditor over an in-memory blob store, recomputing
the drawn segments in the real sandbox: an honest worker that computed another way passes
(audit and appeal), a cheater fails with evidence naming its manifest and our recomputed
segments, a result that is not a manifest or whose checkpoint is missing fails, and a
verifier that does not judge training gives no verdict."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import TRAINING_SPEC_VERSION, JobSpec
from meshcompute.core.tolerance import evidence_hash
from meshcompute.core.training import (
    manifest_bytes,
    plan_sha256,
    segments,
    steps_bytes,
    validate_plan,
)
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.training import run_steps
from meshcompute.mesh.models import MLPClassifier
from meshcompute.verifier.audit import Auditor, RecomputeFailed
from meshcompute.verifier.evidence import AUDIT
from meshcompute.verifier.journal import Journal
from meshcompute.verifier.outputs import compare_outputs
from meshcompute.verifier.recompute import Recomputer
from meshcompute.verifier.training_audit import (
    TrainingJudge,
    sandboxed_links_run,
    sandboxed_segment_run,
)
from tests.verifier.test_service_unit import MemoryStore

PLAN = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "steps": 16,
        "batch_size": 8, "seed": 2, "checkpoint_every": 4}


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(32, 5, generator=gen), torch.randint(0, 3, (32,), generator=gen)]


@pytest.fixture(scope="module")
def program() -> bytes:
    torch.manual_seed(1)
    return export_program(MLPClassifier(d_in=5, d_hidden=12, d_out=3, depth=2).train(),
                          tuple(t[:4] for t in _data()))


@pytest.fixture
def recomputer(tmp_path: Path):
    from meshcompute.execution.sandbox import sandbox_available

    r = Recomputer(threads=1, scratch_root=tmp_path,
                   allow_unsandboxed=not sandbox_available(), warm=False)
    yield r
    r.close()


def _post(store: MemoryStore, program: bytes, run, *, step_states: list[bytes] | None = None,
          with_step_records: bool = True) -> tuple[JobRecord, JobSpec]:
    """Store the job and a worker's result: its checkpoints, losses, step records and
    manifest, from ``run`` (made with ``record="states"``) or the worker's ``step_states``
    (the state after each step). The step states themselves stay with the worker."""
    plan = validate_plan(PLAN)
    states = step_states if step_states is not None else run.step_states
    spec = JobSpec(program=store.put_blob(program), inputs=store.put_blob(save_tensors(_data())),
                   training=PLAN, version=TRAINING_SPEC_VERSION)
    spec_sha = store.put_blob(spec.canonical_bytes())
    bounds = segments(plan)
    checkpoints = [store.put_blob(states[end - 1]) for _, end in bounds]
    losses = store.put_blob(json.dumps(run.losses).encode())
    records = [store.put_blob(steps_bytes(segment=i, first_step=start, states=[
        hashlib.sha256(s).hexdigest() for s in states[start:end]]))
        for i, (start, end) in enumerate(bounds)]
    manifest = manifest_bytes(plan_sha256=plan_sha256(plan), checkpoints=checkpoints,
                              losses=losses, final_state=checkpoints[-1],
                              steps=records if with_step_records else None)
    record = JobRecord(
        client="0x" + "11" * 20, worker="0x" + "22" * 20, auditor="0x" + "33" * 20,
        reward=1, audit_fee=1, collateral=1, deadline=2**40, lease_expiry=0, committed_at=1,
        committed_block=7, resolved_at=0, audit_bps=10_000, state=JobState.AUDITED,
        spec_hash=bytes.fromhex(spec_sha), result_hash=bytes.fromhex(store.put_blob(manifest)))
    return record, spec


def _auditor(store: MemoryStore, tmp_path: Path, recomputer, *, training: bool = True) -> Auditor:
    judge = TrainingJudge(run=sandboxed_segment_run(recomputer),
                          seed_of=lambda record: b"seed of block %d" % (record.committed_block + 1),
                          links=sandboxed_links_run(recomputer))
    return Auditor(store, recomputer, compare_outputs, evidence_hash,
                   Journal(tmp_path / "journal.json"), verifier="0x" + "44" * 20,
                   chain_id=31337, job_market="0x" + "55" * 20,
                   training=judge if training else None)


def test_an_honest_training_result_computed_another_way_passes_audit_and_appeal(
        program: bytes, recomputer, tmp_path: Path) -> None:
    store = MemoryStore()
    record, _ = _post(store, program, run_steps(program, _data(), validate_plan(PLAN),
                                                micro_batches=4, record="states"))
    auditor = _auditor(store, tmp_path, recomputer)
    ready = auditor.audit(1, record, missing_output_is_final=True)
    assert ready.verdict and ready.kind == AUDIT
    ours = json.loads(store.get_blob(ready.evidence.output_hashes[1]))
    assert [row["segment"] for row in ours["segments"]][-1] == 3  # the last is always audited
    assert all(row["agree"] for row in ours["segments"])
    appeal = auditor.appeal(1, record, ready.evidence_hash, missing_output_is_final=True)
    assert appeal.verdict  # the worker wins an appeal of an honest result


def test_a_cheaters_training_fails_with_evidence_naming_its_manifest_and_our_segments(
        program: bytes, recomputer, tmp_path: Path) -> None:
    store = MemoryStore()
    lazy = validate_plan({**PLAN, "optimizer": {**PLAN["optimizer"], "lr": 0.05}})
    record, _ = _post(store, program, run_steps(program, _data(), lazy, record="states"))
    ready = _auditor(store, tmp_path, recomputer).audit(1, record, missing_output_is_final=True)
    assert not ready.verdict
    assert ready.evidence.output_hashes[0] == record.result_hash.hex()
    (comparison,) = ready.evidence.comparisons
    assert not comparison.agree and "times its allowance" in comparison.reason
    ours = json.loads(store.get_blob(ready.evidence.output_hashes[1]))
    for row in ours["segments"]:
        assert store.get_blob(row["ours"])  # our recomputed end state is in the store


def test_junk_or_incomplete_training_results_fail(program: bytes, recomputer,
                                                 tmp_path: Path) -> None:
    store = MemoryStore()
    record, _ = _post(store, program,
                      run_steps(program, _data(), validate_plan(PLAN), record="states"))
    manifest = json.loads(store.get_blob(record.result_hash.hex()))
    # the last checkpoint (always audited) is not in the store
    del store.blobs[manifest["checkpoints"][-1]]
    ready = _auditor(store, tmp_path, recomputer).audit(1, record, missing_output_is_final=True)
    assert not ready.verdict and "is unavailable" in ready.evidence.comparisons[0].reason
    junk = store.put_blob(b'{"kind": "something else"}')
    ready = _auditor(store, tmp_path / "b", recomputer).audit(
        1, dataclasses.replace(record, result_hash=bytes.fromhex(junk)),
        missing_output_is_final=True)
    assert not ready.verdict and "not a training manifest" in ready.evidence.comparisons[0].reason


def test_a_verifier_that_does_not_judge_training_gives_no_verdict(
        program: bytes, recomputer, tmp_path: Path) -> None:
    store = MemoryStore()
    record, _ = _post(store, program,
                      run_steps(program, _data(), validate_plan(PLAN), record="states"))
    with pytest.raises(RecomputeFailed, match="does not judge training jobs"):
        _auditor(store, tmp_path, recomputer, training=False).audit(
            1, record, missing_output_is_final=True)


def test_training_our_own_runs_cannot_agree_on_is_void_and_an_appeal_of_it_is_won(
        program: bytes, tmp_path: Path) -> None:
    # the judge's rule with a stand-in for the sandboxed runs: our second numeric setup lands
    # far from our first (chaotic training under its tolerance), so no verdict can rest on it
    from safetensors.torch import load as load_state

    from meshcompute.execution.training import state_bytes
    from meshcompute.verifier.audit import NotReproducible

    store = MemoryStore()
    record, _ = _post(store, program, run_steps(program, _data(), validate_plan(PLAN),
                                                micro_batches=2, record="states"))

    def run(spec, program_, data, state, start, end, alternate):
        ours = run_steps(program_, _data(), validate_plan(PLAN), state, start=start,
                         end=end).last_state
        if not alternate:
            return state_bytes({k: v + 1e-3 for k, v in load_state(ours).items()})
        return state_bytes({k: v + 1.0 for k, v in load_state(ours).items()})

    judge = TrainingJudge(run=run, seed_of=lambda record: b"seed")
    auditor = Auditor(store, lambda *a: b"", compare_outputs, evidence_hash,
                      Journal(tmp_path / "journal.json"), verifier="0x" + "44" * 20,
                      chain_id=31337, job_market="0x" + "55" * 20, training=judge)
    with pytest.raises(NotReproducible, match="cannot be judged"):
        auditor.audit(1, record, missing_output_is_final=True)
    appeal = auditor.appeal(1, record, b"\x01" * 32, missing_output_is_final=True)
    assert appeal.verdict and "cannot stand" in appeal.evidence.comparisons[0].reason


def _drifting_verifier(tmp_path: Path, store: MemoryStore) -> Auditor:
    """A verifier whose runs of a whole segment land 1e-2 from the worker's (as if drift had
    carried them past the tolerance) while a single step is computed exactly: the case where
    only a step-by-step judgement can be fair."""
    from safetensors.torch import load as load_state

    from meshcompute.execution.training import state_bytes

    def run(spec, program_, data, state, start, end, alternate):
        ours = run_steps(program_, _data(), validate_plan(PLAN), state, start=start,
                         end=end, micro_batches=2 if alternate else 1).last_state
        if end - start == 1:
            return ours
        return state_bytes({k: v + 1e-2 for k, v in load_state(ours).items()})

    return Auditor(store, lambda *a: b"", compare_outputs, evidence_hash,
                   Journal(tmp_path / "journal.json"), verifier="0x" + "44" * 20,
                   chain_id=31337, job_market="0x" + "55" * 20,
                   training=TrainingJudge(run=run, seed_of=lambda record: b"seed"))


def test_an_honest_worker_failed_by_drift_wins_its_appeal_step_by_step(
        program: bytes, tmp_path: Path) -> None:
    store = MemoryStore()
    honest = run_steps(program, _data(), validate_plan(PLAN), record="states")
    record, _ = _post(store, program, honest)
    auditor = _drifting_verifier(tmp_path, store)
    ready = auditor.audit(1, record, missing_output_is_final=True)
    assert not ready.verdict  # the segment as a whole is past the tolerance
    # the worker has not uploaded its states: the segment's verdict stands
    appeal = auditor.appeal(1, record, ready.evidence_hash, missing_output_is_final=True)
    assert not appeal.verdict
    assert "states within the segment are unavailable" in appeal.evidence.comparisons[0].reason
    for state in honest.step_states:  # what the worker's node uploads when it appeals
        store.put_blob(state)
    appeal = auditor.appeal(1, record, ready.evidence_hash, missing_output_is_final=True)
    assert appeal.verdict, appeal.evidence.comparisons[0].reason
    ours = json.loads(store.get_blob(appeal.evidence.output_hashes[-1]))
    narrowed = [row["narrowed"] for row in ours["segments"]]
    assert narrowed and all(n["agree"] and n["steps_run"] == 4 for n in narrowed)


def test_a_cheaters_appeal_is_judged_at_the_one_step_it_did_not_compute(
        program: bytes, recomputer, tmp_path: Path) -> None:
    # the worker skipped step 13 (its state after 13 is the one after 12) and ran the rest of
    # the last segment honestly from there; it uploads all its states and appeals
    plan = validate_plan(PLAN)
    honest = run_steps(program, _data(), plan, record="states")
    rest = run_steps(program, _data(), plan, honest.step_states[12], start=14, record="states")
    forged = [*honest.step_states[:13], honest.step_states[12], *rest.step_states]
    store = MemoryStore()
    record, _ = _post(store, program, honest, step_states=forged)
    for state in forged:
        store.put_blob(state)
    auditor = _auditor(store, tmp_path, recomputer)
    ready = auditor.audit(1, record, missing_output_is_final=True)
    assert not ready.verdict
    appeal = auditor.appeal(1, record, ready.evidence_hash, missing_output_is_final=True)
    assert not appeal.verdict
    reason = appeal.evidence.comparisons[0].reason
    assert "segment 3 (steps 12-16): step 13 does not follow from the worker's own state" \
        in reason, reason


def test_a_checkpoint_no_run_can_be_in_fails_its_segments_before_anything_runs(
        program: bytes, tmp_path: Path) -> None:
    # the checkpoint before the last segment (always audited) holds a NaN: our recomputation
    # from it could only fail or void the audit; the worker claimed an impossible state
    from safetensors.torch import load as load_state

    from meshcompute.execution.training import state_bytes

    honest = run_steps(program, _data(), validate_plan(PLAN), record="states")
    states = list(honest.step_states)
    broken = load_state(states[11])
    name = min(k for k in broken if k.startswith("opt."))
    broken[name][0] = float("nan")
    states[11] = state_bytes(broken)
    store = MemoryStore()
    record, _ = _post(store, program, honest, step_states=states)
    ready = _drifting_verifier(tmp_path, store).audit(1, record, missing_output_is_final=True)
    assert not ready.verdict
    reason = ready.evidence.comparisons[0].reason
    assert "segment 3 (steps 12-16): the worker's checkpoint before it" in reason, reason
    assert "not finite" in reason


def test_a_result_from_a_worker_before_step_records_is_judged_by_segments_alone(
        program: bytes, tmp_path: Path) -> None:
    store = MemoryStore()
    honest = run_steps(program, _data(), validate_plan(PLAN), record="states")
    record, _ = _post(store, program, honest, with_step_records=False)
    auditor = _drifting_verifier(tmp_path, store)
    ready = auditor.audit(1, record, missing_output_is_final=True)
    assert not ready.verdict and "is not a training manifest" not in \
        ready.evidence.comparisons[0].reason  # a valid result, judged by its segments
    appeal = auditor.appeal(1, record, ready.evidence_hash, missing_output_is_final=True)
    assert not appeal.verdict
    assert "names no step records" in appeal.evidence.comparisons[0].reason
