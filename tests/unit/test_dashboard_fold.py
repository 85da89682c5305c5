"""The dashboard's pure folds (meshcompute.core.dashboard): series buckets, earnings by day,
the audit story of a job, a verifier's record, workers online, reclaimability."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from meshcompute.core import dashboard as fold
from meshcompute.core.job import JobRecord, JobState

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20


@dataclass(frozen=True)
class Ev:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    block_number: int = 1
    tx_hash: str = "0x01"
    log_index: int = 0


def test_the_series_start_and_the_ended_counts_by_final_state() -> None:
    now = 10_000.0
    start = fold.series_start(now)
    assert start == (10_000 // 60 - 59) * 60 and start <= now < start + 60 * 60
    series = fold.ended_series({"finalized": [1, 2], "slashed": [0, 1], "refunded": [3, 0]},
                               start)
    assert series == {"bucket_s": 60, "start": start, "settled": [1, 2], "slashed": [0, 1],
                      "refunded": [3, 0]}


def _money(wei: int) -> dict[str, str]:
    return {"wei": str(wei), "mesh": "x"}


def test_earnings_by_day_sums_the_reports_own_rows() -> None:
    day = 86_400
    report = {
        "rows": [{"amount": _money(5), "status": "final", "timestamp": 1 * day + 10},
                 {"amount": _money(7), "status": "final", "timestamp": 1 * day + 20},
                 {"amount": _money(11), "status": "pending", "timestamp": 2 * day}],
        "slashes": [{"amount": _money(3), "timestamp": 0}],
    }
    by_day, by_status = fold.earnings_by_day(report)
    assert by_day == [
        {"day": "1970-01-01", "final_wei": "0", "pending_wei": "0", "slashed_wei": "3"},
        {"day": "1970-01-02", "final_wei": "12", "pending_wei": "0", "slashed_wei": "0"},
        {"day": "1970-01-03", "final_wei": "0", "pending_wei": "11", "slashed_wei": "0"},
    ]
    assert by_status == {"paid_wei": "12", "pending_wei": "11", "slashed_wei": "3"}


def test_the_audit_story_follows_draw_verdict_and_appeal_in_chain_order() -> None:
    events = [  # given out of order: the story sorts them
        Ev("AppealResolved", {"verifier": B, "workerWins": True, "evidenceHash": b"\x02" * 32},
           block_number=5),
        Ev("AuditDrawn", {"audited": True}, block_number=2),
        Ev("AuditResolved", {"verifier": A, "passed": False, "evidenceHash": b"\x01" * 32},
           block_number=3),
        Ev("AuditAppealed", {"appellant": A}, block_number=4),
    ]
    story = fold.audit_story(events)
    assert story["drawn"] is True and story["verdict"] == "failed" and story["verifier"] == A
    assert story["evidence"] == "0x" + "01" * 32
    assert story["appeal"] == {"by": A, "verifier": B, "worker_wins": True,
                               "evidence": "0x" + "02" * 32}
    assert fold.audit_story([Ev("AuditDrawn", {"audited": False})])["drawn"] is False
    assert fold.audit_story([Ev("AuditVoided", {"verifier": A, "evidenceHash": b"\x03" * 32})]
                            )["verdict"] == "void"


def test_a_verifiers_record_counts_verdicts_fees_and_overturns() -> None:
    events = [
        Ev("AuditResolved", {"jobId": 1, "passed": True}, block_number=1),
        Ev("AuditFeePaid", {"jobId": 1, "amount": 10}, block_number=2),
        Ev("AuditVoided", {"jobId": 2}, block_number=3),
        Ev("AuditFeePaid", {"jobId": 2, "amount": 10}, block_number=3, log_index=1),
        Ev("AuditResolved", {"jobId": 3, "passed": False}, block_number=4),
        Ev("VerifierSlashed", {"jobId": 3, "amount": 100}, block_number=6),
        Ev("AppealResolved", {"jobId": 4, "workerWins": False}, block_number=7),
    ]
    story = fold.verifier_story(events, lambda block: 1000 + block, recent=3)
    assert story["audits"] == 3
    assert story["verdicts"] == {"passed": 1, "failed": 1, "void": 1}
    assert story["appeals_judged"] == 1 and story["overturned"] == 1
    assert story["fees_earned_wei"] == "20" and story["bonds_lost_wei"] == "100"
    assert [(r["job_id"], r["verdict"]) for r in story["recent"]] == [
        (4, "worker loses"), (3, "failed"), (2, "void")]
    assert story["recent"][0]["time"] == 1007


def test_workers_online_leaves_out_the_silent_and_groups_by_device() -> None:
    rows = [fold.WorkerRow(A, "cpu", 5, 2, 100.0), fold.WorkerRow(B, "cuda", 9, 1, 100.0),
            fold.WorkerRow("0x" + "cc" * 20, "cpu", 3, 1, 10.0)]  # silent since 10
    online = fold.workers_online(rows, now=105.0, timeout_s=30)
    assert online["online"] == 2
    assert online["by_device"] == [
        {"device": "cpu", "count": 1, "min_price_wei": "5", "max_price_wei": "5"},
        {"device": "cuda", "count": 1, "min_price_wei": "9", "max_price_wei": "9"}]
    assert [w["address"] for w in online["list"]] == [A, B]  # cheapest first


def test_reclaimable_when_nobody_holds_it_or_its_deadline_passed() -> None:
    record = JobRecord(client=A, worker=fold.ZERO_ADDRESS, auditor=fold.ZERO_ADDRESS,
                       reward=1, audit_fee=0, collateral=0, deadline=100, lease_expiry=0,
                       committed_at=0, committed_block=0, resolved_at=0, audit_bps=0,
                       state=JobState.POSTED, spec_hash=b"\x00" * 32,
                       result_hash=b"\x00" * 32)
    assert fold.reclaimable(record, 0)
    assigned = replace(record, state=JobState.ASSIGNED, worker=B)
    assert not fold.reclaimable(assigned, 100) and fold.reclaimable(assigned, 101)
    assert not fold.reclaimable(replace(record, state=JobState.COMMITTED), 10**9)
    assert fold.record_json(record)[3] == "1" and fold.record_json(record)[12] == "1"


def test_sampled_series_aligns_the_minutes_samples_with_the_buckets() -> None:
    start = 600 * 60
    samples = {600: {"workers_online": 2, "open_jobs": 5, "backlog": 1},
               602: {"workers_online": 3, "open_jobs": 0, "backlog": 0},
               599: {"workers_online": 9, "open_jobs": 9, "backlog": 9}}  # before the hour
    series = fold.sampled_series(samples, start, minutes=4)
    assert series == {"workers_online": [2, None, 3, None], "open_jobs": [5, None, 0, None],
                      "backlog": [1, None, 0, None]}
