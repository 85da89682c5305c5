"""Lease batches on the real market, Redis and anvil: one multi-job ticket per batch of jobs of
one client and one program, committed in one transaction; a failed job drops out of the ticket
on renewal and the rest still commit."""

from __future__ import annotations

import os

from meshcompute.core.job import JobState
from meshcompute.core.spec import JobSpec
from tests.market.helpers import index_and_match, post, register


def _specs(mk, count: int, *, program: str | None = None) -> list[JobSpec]:
    client = mk.client(mk.world.clients[0].account)
    program = program or client.put_blob(b"program " + os.urandom(16))
    specs = []
    for _ in range(count):
        inputs = client.put_blob(b"inputs " + os.urandom(16))
        spec = JobSpec(program=program, inputs=inputs)
        client.put_spec(spec)
        specs.append(spec)
    return specs


def test_jobs_of_one_client_and_program_lease_as_one_ticket_and_commit_together(mk):
    worker = register(mk, mk.world.workers[0], slots=1)
    job_ids = [post(mk, spec) for spec in _specs(mk, 4)]
    report = index_and_match(mk)
    assert sorted(job for job, _ in report.offered) == sorted(job_ids)
    leases = worker.lease(1)  # one slot: the whole batch
    assert sorted(lease.job_id for lease in leases) == sorted(job_ids)
    (ticket,) = {lease.ticket for lease in leases}
    assert sorted(ticket.job_ids) == sorted(job_ids) and ticket.worker == worker.address
    assert len({lease.signature for lease in leases}) == 1
    by_id = {lease.job_id: lease for lease in leases}
    actor = mk.world.workers[0]
    hashes = [bytes([i + 1]) * 32 for i in range(len(ticket.job_ids))]
    actor.assign_and_commit(ticket, leases[0].signature, hashes,
                            [by_id[i].record for i in ticket.job_ids])
    mk.rt.indexer.sync()
    records = mk.rt.indexer.job_records()
    assert all(records[i].state == JobState.COMMITTED for i in job_ids)
    assert index_and_match(mk).finished_leases  # the batch's leases end with the commit


def test_failed_job_drops_out_of_the_renewed_ticket_and_the_rest_commit(mk):
    worker = register(mk, mk.world.workers[0], slots=1)
    job_ids = [post(mk, spec) for spec in _specs(mk, 3)]
    index_and_match(mk)
    leases = worker.lease(1)
    assert len(leases) == 3
    failed, kept = job_ids[1], [job_ids[0], job_ids[2]]
    worker.fail(failed, "program failed while running: boom")
    renewed = worker.renew(kept[0])
    assert sorted(renewed.ticket.job_ids) == sorted(kept)
    assert renewed.signature != leases[0].signature
    records = {lease.job_id: lease.record for lease in leases}
    mk.world.workers[0].assign_and_commit(
        renewed.ticket, renewed.signature, [b"\x07" * 32] * 2,
        [records[i] for i in renewed.ticket.job_ids])
    mk.rt.indexer.sync()
    states = {i: r.state for i, r in mk.rt.indexer.job_records().items() if i in job_ids}
    assert states == {kept[0]: JobState.COMMITTED, failed: JobState.POSTED,
                      kept[1]: JobState.COMMITTED}


def test_different_programs_are_separate_batches_each_one_slot(mk):
    worker = register(mk, mk.world.workers[0], slots=1)
    first = [post(mk, spec) for spec in _specs(mk, 2)]
    second = [post(mk, spec) for spec in _specs(mk, 2)]
    index_and_match(mk)
    leases = worker.lease(1)
    got = sorted(lease.job_id for lease in leases)
    assert got in (sorted(first), sorted(second))  # one slot: one program's batch only
    assert worker.lease(1) == []  # the other batch waits for a free slot
