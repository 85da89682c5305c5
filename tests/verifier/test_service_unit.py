"""Unit tests of the verifier's logic with an in-memory blob store and a fake recomputation:
evidence documents, the appeal majority rule, the journal, blind ordering, missing blobs.
The anvil + market + sandbox tests are in test_service_chain.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hexbytes import HexBytes

from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.core.tolerance import evidence_hash
from meshcompute.errors import BadInput, ConfigError, NotFound
from meshcompute.execution.programs import save_tensors
from meshcompute.verifier.audit import (
    Auditor,
    MissingBlob,
    NotReproducible,
    WorkerOutputMissing,
    load_claim,
)
from meshcompute.verifier.evidence import (
    NO_OUTPUT,
    EvidenceRecord,
    appeal_worker_wins,
    claim_document,
    parse_claim,
)
from meshcompute.verifier.journal import POSTED, Journal
from meshcompute.verifier.outputs import compare_outputs

POLICY = {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}


class MemoryStore:
    """Blob store in memory; records the order of reads so blindness can be checked."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.on_read = None

    def get_blob(self, sha256: str, *, verify: bool = True) -> bytes:
        self.reads.append(sha256)
        if self.on_read is not None:
            self.on_read(sha256)
        if sha256 not in self.blobs:
            raise NotFound(f"blob {sha256} is not in the store")
        return self.blobs[sha256]

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = bytes(data)
        return sha


def outputs(*tensors: torch.Tensor) -> bytes:
    return save_tensors(list(tensors), "out")


def make_job(store: MemoryStore, policy=POLICY) -> tuple[JobSpec, bytes]:
    program = store.put_blob(b"program bytes")
    inputs = store.put_blob(save_tensors([torch.linspace(-1, 1, 6).reshape(2, 3)], "args"))
    spec = JobSpec(program=program, inputs=inputs, tolerance=policy)
    spec_sha = store.put_blob(spec.canonical_bytes())
    return spec, bytes.fromhex(spec_sha)


def record(spec_hash: bytes, result: bytes, state=JobState.AUDITED, auditor="0x" + "00" * 20):
    return JobRecord(
        client="0x" + "11" * 20, worker="0x" + "22" * 20, auditor=auditor, reward=100,
        audit_fee=10, collateral=50, deadline=2_000_000_000, lease_expiry=0, committed_at=1,
        committed_block=1, resolved_at=5, audit_bps=10_000, state=state, spec_hash=spec_hash,
        result_hash=result,
    )


def auditor(store, journal, truth: bytes, address="0x" + "77" * 20):
    calls = []

    def recompute(spec, program, inputs, client=None):
        calls.append(spec.sha256)
        return truth

    a = Auditor(store, recompute, compare_outputs, evidence_hash, journal, verifier=address,
                chain_id=31337, job_market="0x" + "99" * 20)
    a.calls = calls  # type: ignore[attr-defined]
    return a


TRUTH = outputs(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7)
NEAR = outputs(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7 + 1e-7)
WRONG = outputs(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7 * 1.01)


# ---------------------------------------------------------------------- evidence
def test_claim_document_hashes_to_the_tolerance_evidence_hash() -> None:
    hashes = [sha256_hex(b"a"), sha256_hex(b"b"), NO_OUTPUT]
    for policy in (POLICY, {"kind": "exact"}, {"kind": "topk", "k": 3, "min_agreement": 0.9}):
        assert hashlib.sha256(claim_document(hashes, policy)).digest() == evidence_hash(
            hashes, policy
        )


def test_parse_claim_refuses_a_document_that_does_not_match_the_chain() -> None:
    hashes = [sha256_hex(b"a"), sha256_hex(b"b")]
    doc = claim_document(hashes, POLICY)
    onchain = evidence_hash(hashes, POLICY)
    claim = parse_claim(doc, onchain, evidence_hash)
    assert claim.output_hashes == tuple(hashes)
    tampered = json.loads(doc)
    tampered["outputs"][1] = sha256_hex(b"c")
    with pytest.raises(BadInput, match="not the on-chain evidence"):
        parse_claim(json.dumps(tampered).encode(), onchain, evidence_hash)
    with pytest.raises(BadInput, match="malformed"):
        parse_claim(b"not json", onchain, evidence_hash)


@pytest.mark.parametrize(
    ("worker_vs_first", "worker_vs_appeal", "wins"),
    [(True, True, True), (True, False, True), (False, True, True), (False, False, False),
     (None, True, True), (None, False, False)],
)
def test_appeal_majority(worker_vs_first, worker_vs_appeal, wins) -> None:
    assert appeal_worker_wins(worker_vs_first, worker_vs_appeal) is wins


def test_evidence_record_round_trip_and_validation() -> None:
    rec = EvidenceRecord(
        kind="audit", chain_id=1, job_market="0x" + "99" * 20, job_id=3,
        spec_sha256=sha256_hex(b"s"), policy=POLICY,
        output_hashes=(sha256_hex(b"w"), sha256_hex(b"v")), verifier="0x" + "77" * 20,
        verdict=True, evidence_hash="0x" + "ab" * 32,
    )
    assert EvidenceRecord.from_bytes(rec.to_bytes()) == rec
    with pytest.raises(BadInput, match="needs 3 output hashes"):
        EvidenceRecord(**{**rec.__dict__, "kind": "appeal"})


# ---------------------------------------------------------------------- journal
def test_journal_persists_and_refuses_to_change_a_fixed_output(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path)
    journal.ensure(4, "audit")
    journal.record_own_output(4, "audit", "aa" * 32)
    journal.set_cursor(17)
    again = Journal(path)
    assert again.cursor == 17
    assert again.own_output(4, "audit") == "aa" * 32
    assert again.pending() == [(4, "audit")]
    with pytest.raises(ConfigError, match="refusing to replace"):
        again.record_own_output(4, "audit", "bb" * 32)
    again.mark_posted(4, "audit", verdict=True)
    assert Journal(path).status(4, "audit") == POSTED
    assert Journal(path).pending() == []
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        Journal(path)


# ---------------------------------------------------------------------- audit logic
def test_audit_is_blind_our_hash_is_on_disk_before_the_worker_output_is_read(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    worker_sha = store.put_blob(NEAR)
    journal = Journal(tmp_path / "j.json")
    seen_on_disk: list[str | None] = []

    def on_read(sha: str) -> None:
        if sha == worker_sha:
            seen_on_disk.append(Journal(journal.path).own_output(1, "audit"))

    store.on_read = on_read
    a = auditor(store, journal, TRUTH)
    ready = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert seen_on_disk == [sha256_hex(TRUTH)]
    assert ready.verdict is True
    assert ready.evidence.output_hashes == (worker_sha, sha256_hex(TRUTH))
    assert sha256_hex(TRUTH) in store.blobs  # our output is public too
    claim = load_claim(store, ready.evidence_hash, evidence_hash)
    assert claim.output_hashes == (worker_sha, sha256_hex(TRUTH))
    assert EvidenceRecord.from_bytes(store.blobs[ready.evidence_sha256]) == ready.evidence


def _confirmed(store, journal, first: bytes, second: bytes):
    a = auditor(store, journal, first)
    seconds = []

    def confirm(spec, program, inputs):
        seconds.append(spec.sha256)
        return second

    a.confirm = confirm
    return a, seconds


def test_a_fail_stands_only_when_a_second_numeric_setup_confirms_it(tmp_path: Path) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    worker_sha = store.put_blob(WRONG)
    a, seconds = _confirmed(store, Journal(tmp_path / "j.json"), TRUTH, NEAR)
    ready = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert ready.verdict is False and len(seconds) == 1


def test_own_setups_disagreeing_is_not_reproducible_and_accuses_nobody(tmp_path: Path) -> None:
    """A program whose result depends on the numeric setup beyond its tolerance (a chaotic
    program) cannot be judged: no verdict, the job is void; the disagreeing outputs of ours
    are named and stored."""
    store = MemoryStore()
    _, spec_hash = make_job(store, policy={"kind": "exact"})
    chaotic = outputs(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7 * 1.001)
    worker_sha = store.put_blob(WRONG)  # an honest worker on another CPU, far from ours
    a, _ = _confirmed(store, Journal(tmp_path / "j.json"), TRUTH, chaotic)
    with pytest.raises(NotReproducible, match="two numeric setups disagree") as info:
        a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)), missing_output_is_final=False)
    assert info.value.output_hashes == (sha256_hex(TRUTH), sha256_hex(chaotic))
    assert sha256_hex(chaotic) in store.blobs


def test_exact_on_float_outputs_is_judged_at_the_rounding_floor(tmp_path: Path) -> None:
    """`exact` on float outputs would fail any honest worker whose last bit differs: the audit
    compares at the rounding floor instead, and says so in its evidence."""
    store = MemoryStore()
    _, spec_hash = make_job(store, policy={"kind": "exact"})
    worker_sha = store.put_blob(NEAR)  # one ulp off: another CPU's rounding
    a, seconds = _confirmed(store, Journal(tmp_path / "j.json"), TRUTH, TRUTH)
    ready = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert ready.verdict is True and seconds == []
    assert ready.evidence.policy == {"kind": "exact"}  # the job's policy, as on chain
    assert "effective policy allclose" in ready.evidence.comparisons[0].reason


def test_worker_output_matching_the_second_setup_passes_with_it_as_evidence(
    tmp_path: Path,
) -> None:
    """Tolerance is not transitive: ours and the second run agree, the worker's output is out
    of tolerance of ours but within tolerance of the second run, a legitimate computation."""
    store = MemoryStore()
    _, spec_hash = make_job(store, policy={"kind": "allclose", "rtol": 1e-9, "atol": 1.5e-7})
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 700
    ours, other, theirs = (outputs(base + shift) for shift in (0.0, 1e-7, 2e-7))
    worker_sha = store.put_blob(theirs)
    a, seconds = _confirmed(store, Journal(tmp_path / "j.json"), ours, other)
    ready = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert ready.verdict is True and len(seconds) == 1
    assert ready.evidence.output_hashes == (worker_sha, sha256_hex(other))
    assert store.get_blob(sha256_hex(other)) == other


def test_audit_fails_a_wrong_output_and_reuses_the_fixed_answer(tmp_path: Path) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    worker_sha = store.put_blob(WRONG)
    journal = Journal(tmp_path / "j.json")
    a = auditor(store, journal, TRUTH)
    ready = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert ready.verdict is False
    assert "outside" in ready.evidence.comparisons[0].reason
    again = a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                    missing_output_is_final=False)
    assert again.evidence_hash == ready.evidence_hash
    assert len(a.calls) == 1  # the second run read our fixed output back, no recomputation


def test_missing_worker_output_waits_then_fails(tmp_path: Path) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    missing = bytes.fromhex(sha256_hex(b"never uploaded"))
    a = auditor(store, Journal(tmp_path / "j.json"), TRUTH)
    with pytest.raises(WorkerOutputMissing):
        a.audit(1, record(spec_hash, missing), missing_output_is_final=False)
    ready = a.audit(1, record(spec_hash, missing), missing_output_is_final=True)
    assert ready.verdict is False
    assert "never uploaded" in ready.evidence.note


def test_missing_program_is_not_the_workers_fault(tmp_path: Path) -> None:
    store = MemoryStore()
    spec, spec_hash = make_job(store)
    del store.blobs[spec.program]
    worker_sha = store.put_blob(TRUTH)
    a = auditor(store, Journal(tmp_path / "j.json"), TRUTH)
    with pytest.raises(MissingBlob) as info:
        a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)), missing_output_is_final=True)
    assert info.value.role == "program"
    assert worker_sha not in store.reads  # blind: nothing computed, nothing looked at
    assert a.worker_output_present(1, record(spec_hash, bytes.fromhex(worker_sha)))
    with pytest.raises(BadInput, match="present"):
        a.fail_without_output(1, record(spec_hash, bytes.fromhex(worker_sha)), "x")


def test_malformed_worker_output_is_a_fail_not_a_crash(tmp_path: Path) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    bad = store.put_blob(b"\x00\x01 not safetensors")
    wrong_names = store.put_blob(save_tensors([torch.zeros(2)], "args"))
    half = store.put_blob(outputs((torch.arange(12).reshape(3, 4) / 7).to(torch.float16)))
    a = auditor(store, Journal(tmp_path / "j.json"), TRUTH)
    for job_id, sha in enumerate((bad, wrong_names, half), start=1):
        ready = a.audit(job_id, record(spec_hash, bytes.fromhex(sha)),
                        missing_output_is_final=False)
        assert ready.verdict is False, ready.evidence.comparisons


def test_appeal_majority_over_three_outputs(tmp_path: Path) -> None:
    store = MemoryStore()
    _, spec_hash = make_job(store)
    worker_sha = store.put_blob(NEAR)
    # a faulty first verifier: its evidence names an output that disagrees with everyone
    bogus = store.put_blob(WRONG)
    store.put_blob(claim_document([worker_sha, bogus], POLICY))
    first_evidence = evidence_hash([worker_sha, bogus], POLICY)
    rec = record(spec_hash, bytes.fromhex(worker_sha), state=JobState.APPEALED)
    a = auditor(store, Journal(tmp_path / "j.json"), TRUTH, address="0x" + "88" * 20)
    ready = a.appeal(7, rec, first_evidence, missing_output_is_final=False)
    assert ready.verdict is True
    assert ready.evidence.output_hashes == (worker_sha, bogus, sha256_hex(TRUTH))
    agree = {(c.a, c.b): c.agree for c in ready.evidence.comparisons}
    assert agree == {(0, 2): True, (0, 1): False, (1, 2): False}
    assert ready.evidence_hash == evidence_hash([worker_sha, bogus, sha256_hex(TRUTH)], POLICY)

    # a cheating worker whose first verifier was right loses
    cheat_sha = store.put_blob(WRONG)
    right = store.put_blob(TRUTH)
    store.put_blob(claim_document([cheat_sha, right], POLICY))
    rec2 = record(spec_hash, bytes.fromhex(cheat_sha), state=JobState.APPEALED)
    lost = a.appeal(8, rec2, evidence_hash([cheat_sha, right], POLICY),
                    missing_output_is_final=False)
    assert lost.verdict is False

    # first verifier's evidence missing: the two remaining computations decide
    unknown = bytes.fromhex(sha256_hex(b"no such evidence"))
    ready3 = a.appeal(9, rec, unknown, missing_output_is_final=False)
    assert ready3.verdict is True
    assert ready3.evidence.output_hashes[1] == NO_OUTPUT
    assert "unavailable" in ready3.evidence.note


def test_appeal_of_a_fail_that_could_not_be_judged_goes_to_the_worker(tmp_path: Path) -> None:
    """A first verifier failed a worker on a program that is unstable under its tolerance (our
    own second setup lands far from our first run): such a job should have been void, so the
    failure cannot stand. A stable program's cheat still loses its appeal with the checks on."""
    store = MemoryStore()
    _, spec_hash = make_job(store)
    worker_sha = store.put_blob(WRONG)
    first_out = store.put_blob(TRUTH)
    store.put_blob(claim_document([worker_sha, first_out], POLICY))
    first_evidence = evidence_hash([worker_sha, first_out], POLICY)
    rec = record(spec_hash, bytes.fromhex(worker_sha), state=JobState.APPEALED)
    unstable = auditor(store, Journal(tmp_path / "a.json"), TRUTH, address="0x" + "88" * 20)
    unstable.confirm = lambda spec, program, inputs: outputs(
        torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7 * 1.5)
    ready = unstable.appeal(7, rec, first_evidence, missing_output_is_final=False)
    assert ready.verdict is True and "cannot stand" in ready.evidence.note

    stable = auditor(store, Journal(tmp_path / "b.json"), TRUTH, address="0x" + "88" * 20)
    stable.confirm = lambda spec, program, inputs: TRUTH
    lost = stable.appeal(8, rec, first_evidence, missing_output_is_final=False)
    assert lost.verdict is False


class _Boom(Exception):
    pass


def _erring_service(tmp_path: Path, error: Exception):
    """A VerifierService whose one pending appeal task raises ``error`` when processed (the
    chain and the journal's surroundings stubbed: only the error handling runs)."""
    from types import SimpleNamespace

    from meshcompute.verifier.journal import Journal
    from meshcompute.verifier.service import ServiceConfig, VerifierService

    service = VerifierService.__new__(VerifierService)
    service.actor = SimpleNamespace(w3=SimpleNamespace(eth=SimpleNamespace(
        get_block=lambda _tag: {"timestamp": 1000}, block_number=10)))
    service.journal = Journal(tmp_path / "journal.json")
    service.journal.ensure(7, "appeal")
    service.config = ServiceConfig(poll_interval_s=0.01, max_errors=4, max_backoff_s=0.05)
    service.health_path = None
    service._commits = {}
    service._retry_at = {}
    service._others_until = {}
    service._follow_events = lambda: 10
    calls = []

    def process(job_id, kind, now):
        calls.append(job_id)
        raise error

    service._process = process
    return service, calls


def test_an_erring_task_backs_off_then_is_given_up(tmp_path: Path) -> None:
    import time

    service, calls = _erring_service(tmp_path, _Boom("unexpected"))
    service.poll_once()
    second = service.poll_once()  # within the backoff: not tried again
    assert calls == [7] and second.waiting == [7]
    deadline = time.monotonic() + 5
    while service.journal.pending() and time.monotonic() < deadline:
        service.poll_once()
        time.sleep(0.01)
    assert service.journal.pending() == [] and len(calls) == 4
    task = service.journal.task(7, "appeal")
    assert task["status"] == "skipped" and "gave up after 4 errors" in task["skip_reason"]


def test_an_unreachable_market_never_gives_a_task_up(tmp_path: Path) -> None:
    import time

    from meshcompute.errors import ServiceUnavailable

    service, calls = _erring_service(tmp_path, ServiceUnavailable("market down"))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        service.poll_once()
        time.sleep(0.01)
    assert len(calls) > 4 and service.journal.pending() == [(7, "appeal")]


def _posting_service(tmp_path: Path, wallet: int):
    """A VerifierService whose actor refuses its first appeal verdict with DepositReserved
    (free 40, needed 100) and records top-ups (the chain stubbed: only the posting runs)."""
    from types import SimpleNamespace

    from meshcompute.chain.custom_errors import revert_class
    from meshcompute.verifier.journal import Journal
    from meshcompute.verifier.service import VerifierService

    service = VerifierService.__new__(VerifierService)
    service.journal = Journal(tmp_path / "journal.json")
    service.journal.ensure(7, "appeal")
    calls: dict[str, list] = {"sent": [], "top_up": []}
    reserved = revert_class("DepositReserved")

    def resolve_appeal(job_id, verdict, evidence, rec):
        calls["sent"].append(job_id)
        if not calls["top_up"]:
            raise reserved("DepositReserved", {"verifier": "0x" + "77" * 20, "free": 40, "needed": 100})
        return {"transactionHash": HexBytes(bytes(32))}

    service.actor = SimpleNamespace(
        address="0x" + "77" * 20, resolve_appeal=resolve_appeal,
        balance_of=lambda _a: wallet, job=lambda _j: None,
        top_up_verifier_deposit=lambda amount: calls["top_up"].append(amount))
    return service, calls


def _ready_appeal():
    from meshcompute.verifier.audit import VerdictReady

    evidence = EvidenceRecord(kind="appeal", chain_id=1, job_market="0x" + "33" * 20, job_id=7,
                              spec_sha256="ee" * 32, policy=POLICY,
                              output_hashes=("ab" * 32, "ac" * 32, "ab" * 32),
                              verifier="0x" + "77" * 20, verdict=True,
                              evidence_hash="0x" + "01" * 32, note="overturn")
    return VerdictReady(job_id=7, kind="appeal", verdict=True, evidence_hash=b"\x01" * 32,
                        evidence=evidence, evidence_sha256="cd" * 32)


def test_an_overturn_short_of_unreserved_deposit_tops_up_from_the_wallet(tmp_path: Path) -> None:
    service, calls = _posting_service(tmp_path, wallet=1_000)
    posted = service._post(_ready_appeal(), None)
    assert calls == {"sent": [7, 7], "top_up": [60]}  # the shortfall, then the verdict again
    assert posted != "skipped" and service.journal.task(7, "appeal")["status"] == POSTED


def test_an_overturn_the_wallet_cannot_back_is_skipped_with_the_fix(tmp_path: Path) -> None:
    service, calls = _posting_service(tmp_path, wallet=59)
    assert service._post(_ready_appeal(), None) == "skipped"
    assert calls == {"sent": [7], "top_up": []}
    assert "unreserved deposit" in service.journal.task(7, "appeal")["skip_reason"]


def test_job_verdicts_tell_the_appeal_seat_from_the_third_seat() -> None:
    """An appeal verdict a third seat may judge is posted as AppealUpheld (or AppealContested);
    the third seat's verdict then comes as AppealResolved: each is read as what it is."""
    from types import SimpleNamespace

    from meshcompute.verifier.verdicts import job_verdicts

    def ev(n, name, **args):
        return SimpleNamespace(name=name, args=args, block_number=n, tx_hash=f"0x{n:02x}")

    first, second, third = ("0x" + c * 40 for c in "abc")
    events = [
        ev(1, "AuditResolved", verifier=first, passed=False, evidenceHash=b"\x01" * 32),
        ev(2, "AuditAppealed", appellant="0x" + "22" * 20),
        ev(3, "AppealUpheld", verifier=second, workerWins=False, evidenceHash=b"\x02" * 32),
        ev(4, "AppealEscalated", appellant="0x" + "22" * 20, bond=60),
        ev(5, "AppealResolved", verifier=third, workerWins=True, evidenceHash=b"\x03" * 32),
    ]
    verdicts = job_verdicts(SimpleNamespace(job_events=lambda _ids: events), 7)
    assert verdicts.appealed and verdicts.audit.verifier == first
    assert (verdicts.appeal.kind, verdicts.appeal.verifier, verdicts.appeal.verdict) == \
        ("appeal", second, False)
    assert (verdicts.third.kind, verdicts.third.verifier, verdicts.third.verdict) == \
        ("escalation", third, True)
    contested = [events[0], events[1],
                 ev(3, "AppealContested", verifier=second, workerWins=True,
                    evidenceHash=b"\x02" * 32), events[4]]
    verdicts = job_verdicts(SimpleNamespace(job_events=lambda _ids: contested), 7)
    assert verdicts.appeal.verifier == second and verdicts.third.kind == "contest"
    plain = job_verdicts(SimpleNamespace(job_events=lambda _ids: [*events[:2], events[4]]), 7)
    assert plain.appeal.verifier == third and plain.third is None


def test_a_verdict_whose_draw_is_not_seeded_yet_is_read_again_next_poll(tmp_path: Path) -> None:
    """A verdict assigned to another seat is not read again until it may escalate to us; but
    one whose draw is not seeded yet (``assignedVerifier`` answers nobody until the block
    after the transaction that opened it) may be ours: it must be read again at once, or the
    seat the draw picks would stay silent until its window is half gone."""
    from types import SimpleNamespace

    from meshcompute.verifier.service import VerifierService

    me, other = "0x" + "77" * 20, "0x" + "88" * 20
    answers = {1: None, 2: other}
    service = VerifierService.__new__(VerifierService)
    service.actor = SimpleNamespace(address=me,
                                    assigned_verifier=lambda job_id, _record: answers[job_id])
    service._windows = {"audit_window_s": 600}
    service._others_until = {}
    now, closes = 1_000, 1_000 + 500  # in the first half of the window
    assert service._not_ours(1, "appeal", None, now, closes) == "wait"
    assert service._not_ours(2, "appeal", None, now, closes) == "wait"
    assert service._others_until == {(2, "appeal"): closes - 300}
