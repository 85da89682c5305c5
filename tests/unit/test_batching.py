"""Lease batching (meshcompute.core.batching): grouping rules, sizes, the batch demand."""

from __future__ import annotations

import pytest

from meshcompute.core.batching import QueuedJob, batch_demand, plan_batches
from meshcompute.core.matching import JobDemand
from meshcompute.errors import BadInput

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20


def _job(job_id: int, *, client: str = A, program: str = "p1", device: str = "cpu",
         posted_at: float | None = None, collateral: int = 10, reward: int = 5,
         memory_mb: int = 100, exclude: frozenset[str] = frozenset()) -> QueuedJob:
    demand = JobDemand(job_id=job_id, device=device, memory_mb=memory_mb,
                       collateral=collateral, reward=reward,
                       posted_at=float(job_id if posted_at is None else posted_at),
                       exclude_workers=exclude)
    return QueuedJob(demand=demand, client=client, program=program)


def test_one_client_one_program_is_one_batch_up_to_the_cap():
    jobs = [_job(i) for i in range(10)]
    (batch,) = plan_batches(jobs, max_batch=32, free_slots=1)
    assert batch.job_ids == tuple(range(10))
    parts = plan_batches(jobs, max_batch=4, free_slots=1)
    assert [len(b.job_ids) for b in parts] == [4, 3, 3]
    assert sorted(i for b in parts for i in b.job_ids) == list(range(10))


def test_free_slots_spread_a_group_evenly_but_never_below_one_job():
    jobs = [_job(i) for i in range(10)]
    assert [len(b.job_ids) for b in plan_batches(jobs, max_batch=32, free_slots=4)] == \
        [3, 3, 2, 2]
    assert len(plan_batches(jobs[:3], max_batch=32, free_slots=8)) == 3
    assert len(plan_batches(jobs, max_batch=32, free_slots=0)) == 1


def test_clients_programs_devices_and_exclusions_never_share_a_batch():
    jobs = [_job(1), _job(2, client=B), _job(3, program="p2"), _job(4, device="cuda"),
            _job(5, exclude=frozenset({"0xw"})), _job(6), _job(7, client=A.upper())]
    batches = plan_batches(jobs, max_batch=32, free_slots=1)
    groups = sorted(b.job_ids for b in batches)
    assert groups == [(1, 6, 7), (2,), (3,), (4,), (5,)]
    for batch in batches:
        members = [j for j in jobs if j.demand.job_id in batch.job_ids]
        assert len({(j.client.lower(), j.program) for j in members}) == 1


def test_batches_come_oldest_first_and_keep_serving_order_inside():
    jobs = [_job(1, posted_at=50), _job(2, posted_at=10, program="p2"), _job(3, posted_at=5)]
    batches = plan_batches(jobs, max_batch=32, free_slots=1)
    assert [b.job_ids for b in batches] == [(3, 1), (2,)]


def test_batch_demand_sums_stake_and_takes_the_strictest_limits():
    jobs = [_job(1, collateral=10, reward=7, memory_mb=100, exclude=frozenset({"0xw"})),
            _job(2, collateral=15, reward=3, memory_mb=300, posted_at=0.5,
                 exclude=frozenset({"0xw"}))]
    demand = batch_demand([j.demand for j in jobs])
    assert (demand.collateral, demand.reward, demand.memory_mb) == (25, 3, 300)
    assert demand.posted_at == 0.5 and demand.job_id == 1
    assert demand.exclude_workers == frozenset({"0xw"})


def test_max_batch_one_is_one_job_per_batch():
    jobs = [_job(i) for i in range(5)]
    assert [b.job_ids for b in plan_batches(jobs, max_batch=1)] == [(i,) for i in range(5)]


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_batch": 1.5}, {"free_slots": -1}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(BadInput):
        plan_batches([_job(1)], **kwargs)


def test_duplicates_and_empty_batches_are_refused():
    with pytest.raises(BadInput, match="duplicate"):
        plan_batches([_job(1), _job(1)])
    with pytest.raises(BadInput):
        batch_demand([])
    assert plan_batches([]) == []
