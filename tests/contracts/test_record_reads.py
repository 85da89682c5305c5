"""Reading a job's record (MeshContracts.job_records): a job read before is read from just
before its first event, not from the deployment block (a node's log query slows with the
blocks it spans), and a remembered start that is wrong (a reorg moved the job further back)
is caught and read again from the beginning. Real anvil."""

from __future__ import annotations

import pytest

from meshcompute.chain import contracts as contracts_module
from meshcompute.core.job import JobState
from tests.contracts.world import World

pytestmark = pytest.mark.anvil


def _reads(actor, monkeypatch) -> list[int | None]:
    """The from_block of each job_events call the actor makes from now on."""
    seen: list[int | None] = []
    real = actor.job_events

    def spy(job_ids=None, from_block=None, to_block="latest", **kw):
        seen.append(from_block)
        return real(job_ids, from_block, to_block, **kw)

    monkeypatch.setattr(actor, "job_events", spy)
    return seen


def test_a_job_read_before_is_read_from_just_before_its_first_event(world: World,
                                                                     monkeypatch) -> None:
    reader = world.outsider
    world.chain.mine(100)  # the job is posted well after the deployment
    job_id = world.committed_job()
    posted = world.w3.eth.block_number
    seen = _reads(reader, monkeypatch)
    first = reader.job(job_id)
    assert first.state == JobState.COMMITTED and seen == [None]  # unknown: from deployment
    world.chain.mine(30)
    again = reader.job(job_id)
    assert again == first
    assert seen[1] is not None and posted - 70 <= seen[1] <= posted - 60, (seen, posted)
    # a job it does not know yet is read from the deployment block, with the ones it knows
    (other,) = world.post()
    both = reader.job_records([job_id, other])
    assert set(both) == {job_id, other} and seen[2] is None


def test_a_remembered_start_past_the_jobs_first_event_is_caught(world: World,
                                                                monkeypatch) -> None:
    reader = world.outsider
    world.chain.mine(100)
    job_id = world.committed_job()
    truth = reader.job(job_id)
    world.chain.mine(200)
    # as if a reorg had moved the job's JobPosted back, far past the margin
    with reader._first_blocks_lock:
        reader._first_blocks[job_id] = world.w3.eth.block_number
    seen = _reads(reader, monkeypatch)
    assert reader.job(job_id) == truth
    assert seen[0] is not None and seen[-1] is None, seen  # tried from there, then all
    # the job's posting block is known again from the full read
    assert reader._first_blocks[job_id] < world.w3.eth.block_number - 150
    assert len(seen) == 2, seen


def test_what_it_remembers_is_bounded(world: World, monkeypatch) -> None:
    monkeypatch.setattr(contracts_module, "_FIRST_BLOCKS_KEPT", 3)
    reader = world.outsider
    ids = world.post(n=5)
    for job_id in ids:
        reader.job(job_id)
    assert list(reader._first_blocks) == ids[-3:]


def test_records_as_of_a_block_leave_out_what_came_after(world: World) -> None:
    reader = world.outsider
    (job_id,) = world.post()
    posted = world.w3.eth.block_number
    world.assign(world.workers[0], [job_id])
    world.commit(world.workers[0], [job_id])
    assert reader.job_records([job_id], verify=False, at_block=posted)[job_id].state \
        == JobState.POSTED
    assert reader.job(job_id).state == JobState.COMMITTED
