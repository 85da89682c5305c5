"""The off-chain lease lifecycle (meshcompute.core.lease): its rules at their boundaries, a
match round's plan, and the verdict windows (checked against the settlement rules)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from meshcompute.core.job import ZERO_ADDRESS, ZERO_HASH, JobRecord, JobState
from meshcompute.core.lease import (
    DEADLINE_MARGIN_S,
    MAX_FAILURES,
    QueuedEntry,
    appeal_verdict_closes_at,
    audit_closes_at,
    batch_id,
    committed_by_holder,
    final_margin,
    given_up,
    heartbeating,
    in_final_margin,
    leasable,
    lease_expired,
    lease_unit,
    match_candidates,
    moved_on,
    offer_lapsed,
    pending_collateral,
    plan_match,
    queued,
    window_open,
    worker_load,
)
from meshcompute.core.settlement import SettleAction, settle_action
from meshcompute.core.spec import JobSpec, client_group
from meshcompute.errors import BadInput

W1 = "0x" + "11" * 20
W2 = "0x" + "22" * 20
CLIENT = "0x" + "aa" * 20
OTHER_CLIENT = "0x" + "bb" * 20
NOW = 1_000_000
PROGRAM = "01" * 32
GROUP = "0f" * 32


def record(state: JobState = JobState.POSTED, *, worker: str = ZERO_ADDRESS,
           deadline: int = NOW + 3_600, lease_expiry: int = 0, collateral: int = 50,
           client: str = CLIENT, committed_at: int = 0, resolved_at: int = 0) -> JobRecord:
    return JobRecord(
        client=client, worker=worker, auditor=ZERO_ADDRESS, reward=100, audit_fee=10,
        collateral=collateral, deadline=deadline, lease_expiry=lease_expiry,
        committed_at=committed_at, committed_block=7, resolved_at=resolved_at, audit_bps=0,
        state=state, spec_hash=b"\x01" * 32,
        result_hash=ZERO_HASH if state < JobState.COMMITTED else b"\x02" * 32,
    )


@dataclass(frozen=True)
class Held:
    job_id: int
    worker: str
    collateral: int = 5
    batch: str = ""


@dataclass(frozen=True)
class Worker:
    address: str
    operator: str = "op"
    device: str = "cpu"
    memory_mb: int = 8_192
    gpu_memory_mb: int = 0
    price_wei: int = 0
    slots: int = 4
    last_assigned_at: float = 0.0


@dataclass(frozen=True)
class Standing:
    free_stake: int = 1_000
    completed: int = 0
    missed: int = 0
    slashed: int = 0


def spec(**fields) -> JobSpec:
    return JobSpec(program=fields.pop("program", PROGRAM), inputs="02" * 32, **fields)


def entry(job_id: int, rec: JobRecord | None = None, *, spec_: JobSpec | None = None,
          spec_error: str | None = None, **fields) -> QueuedEntry:
    if spec_ is None and spec_error is None:
        spec_ = spec()
    values = {"first_seen": float(job_id), "failures": 0, "excluded": frozenset(),
              "known_problem": None, "in_group": False}
    values.update(fields)
    return QueuedEntry(job_id=job_id, record=rec or record(), spec=spec_, spec_error=spec_error,
                       **values)


def plan(queue, *, records=None, leases=(), offers=(), owners=None, workers=None, max_batch=32):
    records = records if records is not None else {e.job_id: e.record for e in queue}
    workers = workers if workers is not None else [(Worker(W1), Standing())]
    return plan_match(now=float(NOW), records=records, leases=list(leases), offers=list(offers),
                      queue=queue, group_owners=owners or {}, workers=workers,
                      max_batch=max_batch)


# ---------------------------------------------------------------------- queued and leasable
def test_queued_stops_at_the_deadline_margin() -> None:
    assert queued(record(deadline=NOW + DEADLINE_MARGIN_S + 1), NOW)
    assert not queued(record(deadline=NOW + DEADLINE_MARGIN_S), NOW)
    assert not leasable(record(deadline=NOW + DEADLINE_MARGIN_S), W1, NOW)


def test_an_assigned_job_is_queued_from_its_chain_lease_expiry_on() -> None:
    assigned = record(JobState.ASSIGNED, worker=W1, lease_expiry=NOW + 1)
    assert not queued(assigned, NOW)
    assert leasable(assigned, W1, NOW)  # its holder may renew
    assert not leasable(assigned, W2, NOW)
    lapsed = replace(assigned, lease_expiry=NOW)
    assert queued(lapsed, NOW) and leasable(lapsed, W2, NOW)


def test_a_holder_cannot_renew_past_the_deadline_margin() -> None:
    assigned = record(JobState.ASSIGNED, worker=W1, lease_expiry=NOW + 60,
                      deadline=NOW + DEADLINE_MARGIN_S)
    assert not leasable(assigned, W1, NOW)


@pytest.mark.parametrize("state", [s for s in JobState
                                   if s not in (JobState.POSTED, JobState.ASSIGNED)])
def test_a_job_past_assignment_is_neither_queued_nor_leasable(state: JobState) -> None:
    rec = record(state, worker=W1)
    assert not queued(rec, NOW)
    assert not leasable(rec, W1, NOW)


# ---------------------------------------------------------------------- ends of a lease
def test_moved_on_and_committed_by_holder() -> None:
    assert not moved_on(record(JobState.POSTED), W1)
    assert not moved_on(record(JobState.ASSIGNED, worker=W1), W1)
    assert moved_on(record(JobState.ASSIGNED, worker=W2), W1)
    assert moved_on(record(JobState.COMMITTED, worker=W1), W1)
    assert moved_on(record(JobState.REFUNDED), W1)
    assert committed_by_holder(record(JobState.COMMITTED, worker=W1), W1)
    assert not committed_by_holder(record(JobState.COMMITTED, worker=W2), W1)
    assert not committed_by_holder(record(JobState.ASSIGNED, worker=W1), W1)


def test_time_boundaries_of_leases_offers_and_heartbeats() -> None:
    assert lease_expired(NOW, NOW) and not lease_expired(NOW + 1, NOW)
    assert not offer_lapsed(100.0, 100.0) and offer_lapsed(99.999, 100.0)
    assert heartbeating(70.0, 100.0, 30.0) and not heartbeating(69.9, 100.0, 30.0)


def test_given_up_after_max_failures() -> None:
    assert not given_up(MAX_FAILURES - 1)
    assert given_up(MAX_FAILURES)


def test_lease_units_and_batch_ids() -> None:
    assert lease_unit(Held(7, W1)) == "job-7"
    assert lease_unit(Held(7, W1, batch="7-2-1.0")) == "7-2-1.0"
    assert batch_id([7], 1.5) == ""
    assert batch_id([7, 9, 12], 1.5) == "7-3-1.500000"


def test_pending_collateral_ends_when_the_chain_locks_it() -> None:
    records = {1: record(JobState.ASSIGNED, worker=W1), 2: record(JobState.COMMITTED, worker=W1)}
    offers = [Held(5, W2, collateral=3)]
    leases = [Held(1, W1, collateral=10), Held(2, W1, collateral=20), Held(3, W1, collateral=40)]
    # job 2 is committed (locked on chain); job 3 has no record and still counts
    assert pending_collateral(offers, leases, records) == {W1: 50, W2: 3}


def test_worker_load_counts_a_lease_batch_once() -> None:
    offers = [Held(1, W1, batch="b"), Held(2, W1, batch="b"), Held(3, W2)]
    leases = [Held(4, W1), Held(5, W1, batch="b")]
    assert worker_load(offers, leases) == {W1: 2, W2: 1}


# ---------------------------------------------------------------------- a match round
def test_candidates_skip_offered_and_leased_jobs_but_not_moved_on_leases() -> None:
    records = {1: record(), 2: record(), 3: record(),
               4: record(JobState.ASSIGNED, worker=W2, lease_expiry=NOW - 1),
               5: record(JobState.COMMITTED, worker=W1)}
    offers = [Held(1, W1)]
    leases = [Held(2, W1), Held(4, W1)]  # W1's lease on 4 moved on: W2 took it (and lapsed)
    assert match_candidates(records, leases, offers, NOW) == [3, 4]


def test_plan_offers_a_queued_job_to_a_worker() -> None:
    result = plan([entry(1)])
    assert (result.queued, result.workers, result.batches) == (1, 1, 1)
    assert [(o.job_id, o.worker, o.collateral, o.batch) for o in result.offers] == [
        (1, W1, 50, "")]
    assert result.ending == [] and result.problems == {} and result.problem_changes == {}


def test_plan_batches_jobs_of_one_client_and_program() -> None:
    one_slot = [(Worker(W1, slots=1), Standing())]
    result = plan([entry(1), entry(2), entry(3)], workers=one_slot)
    assert [o.job_id for o in result.offers] == [1, 2, 3]
    assert {o.batch for o in result.offers} == {batch_id([1, 2, 3], float(NOW))}
    spread = plan([entry(1), entry(2), entry(3)])  # four free slots: one job each
    assert [o.batch for o in spread.offers] == ["", "", ""]


def test_plan_ends_leases_that_moved_on_and_frees_their_collateral() -> None:
    moved = Held(9, W1, collateral=990)
    records = {1: record(), 9: record(JobState.ASSIGNED, worker=W2, lease_expiry=NOW + 60)}
    result = plan([entry(1)], records=records, leases=[moved])
    assert result.ending == [moved]
    assert [o.worker for o in result.offers] == [W1]  # 1000 - 990 would leave too little


def test_plan_nets_pending_collateral_from_free_stake() -> None:
    records = {1: record()}
    offers = [Held(5, W1, collateral=1_000)]
    result = plan([entry(1)], records=records, offers=offers)
    assert result.workers == 0 and result.offers == []


def test_plan_reports_registry_entries_the_matcher_refuses() -> None:
    result = plan([entry(1)], workers=[(Worker(W1, device=""), Standing()),
                                       (Worker(W2), Standing())])
    assert [address for address, _ in result.bad_workers] == [W1]
    assert [o.worker for o in result.offers] == [W2]


def test_plan_records_spec_problems_once_and_clears_them() -> None:
    missing = "spec blob is not in the market's blob store"
    result = plan([
        entry(1, spec_error=missing),
        entry(2, spec_error=missing, known_problem=missing),
        entry(3, known_problem="old problem"),
    ])
    assert result.problems == {1: missing, 2: missing}
    assert result.problem_changes == {1: missing, 3: None}
    assert [o.job_id for o in result.offers] == [3]


def test_plan_skips_jobs_given_up() -> None:
    result = plan([entry(1, failures=MAX_FAILURES, known_problem="stale")])
    assert result.queued == 0 and result.offers == []
    assert result.problem_changes == {1: None}


def test_a_copied_group_id_joins_the_copiers_own_group_and_blocks_nobody() -> None:
    # a front-runner copies the victim's group id (public in its spec) into its own job,
    # even posted first: each client's shards join the group of that client
    squat = spec(group=GROUP, shard=0, shards=2)
    victim = spec(group=GROUP, shard=0, shards=2)
    queue = [entry(1, record(client=OTHER_CLIENT), spec_=squat), entry(2, spec_=victim)]
    result = plan(queue)
    assert result.joins == [(client_group(OTHER_CLIENT, GROUP), 0, 1, OTHER_CLIENT),
                            (client_group(CLIENT, GROUP), 0, 2, CLIENT)]
    assert result.problems == {}
    assert sorted(o.job_id for o in result.offers) == [1, 2]
    assert client_group(CLIENT, GROUP) != client_group(OTHER_CLIENT, GROUP)


def test_plan_respects_a_recorded_group_owner() -> None:
    shard = spec(group=GROUP, shards=2)
    mine = client_group(CLIENT, GROUP)
    refused = plan([entry(1, spec_=shard)], owners={mine: OTHER_CLIENT.lower()})
    assert refused.joins == [] and 1 in refused.problems
    joined = plan([entry(1, spec_=shard)], owners={mine: CLIENT.lower()})
    assert joined.joins == [(mine, 0, 1, CLIENT)]
    member = plan([entry(1, spec_=shard, in_group=True)], owners={mine: OTHER_CLIENT.lower()})
    assert member.joins == [] and member.problems == {}  # already recorded: nothing to join


def test_client_group_names_bad_input() -> None:
    with pytest.raises(BadInput, match="client_group needs"):
        client_group("0x1234", GROUP)
    with pytest.raises(BadInput, match="client_group needs"):
        client_group(CLIENT, "zz")


def test_plan_keeps_excluded_workers_out() -> None:
    result = plan([entry(1, excluded=frozenset({W1}))],
                  workers=[(Worker(W1), Standing()), (Worker(W2), Standing())])
    assert [o.worker for o in result.offers] == [W2]


# ---------------------------------------------------------------------- verdict windows
CHALLENGE, AUDIT, APPEAL = 60, 300, 200


def test_audit_window_closes_after_challenge_and_audit_windows() -> None:
    rec = record(JobState.AUDITED, worker=W1, committed_at=NOW)
    closes = audit_closes_at(rec, challenge_window=CHALLENGE, audit_window=AUDIT)
    assert closes == NOW + CHALLENGE + AUDIT
    assert window_open(closes, closes) and not window_open(closes + 1, closes)


def test_appeal_verdict_window_closes_after_appeal_and_audit_windows() -> None:
    rec = record(JobState.APPEALED, worker=W1, committed_at=NOW, resolved_at=NOW + 100)
    closes = appeal_verdict_closes_at(rec, appeal_window=APPEAL, audit_window=AUDIT)
    assert closes == NOW + 100 + APPEAL + AUDIT


@pytest.mark.parametrize("state", [JobState.AUDITED, JobState.APPEALED])
def test_settlement_acts_exactly_when_the_verdict_window_is_closed(state: JobState) -> None:
    rec = record(state, worker=W1, committed_at=NOW, resolved_at=NOW + 100)
    if state == JobState.AUDITED:
        closes = audit_closes_at(rec, challenge_window=CHALLENGE, audit_window=AUDIT)
    else:
        closes = appeal_verdict_closes_at(rec, appeal_window=APPEAL, audit_window=AUDIT)
    for now in (closes - 1, closes, closes + 1):
        action = settle_action(1, rec, now=now, challenge_window=CHALLENGE, audit_window=AUDIT,
                               appeal_window=APPEAL, audited=lambda _i, _r: False)
        assert (action is None) == window_open(now, closes)
        assert action in (None, SettleAction.PAY, SettleAction.VOID, SettleAction.SLASH)


def test_final_margin_is_at_most_half_the_audit_window() -> None:
    assert final_margin(60, 600) == 60
    assert final_margin(60, 100) == 50
    assert final_margin(60, 1) == 0


def test_in_final_margin_boundaries() -> None:
    assert not in_final_margin(939, 1_000, 60)
    assert in_final_margin(940, 1_000, 60)
    assert in_final_margin(1_000, 1_000, 0) and not in_final_margin(999, 1_000, 0)
