"""The market's Celery tasks run in-process against anvil and Redis: a sharded job posted on
chain is indexed, matched, leased over HTTP, committed by the worker with the lease's ticket,
settled after the challenge window, and its assembled output served."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from safetensors.numpy import load, save

from meshcompute.core.job import JobState
from meshcompute.core.spec import client_group
from meshcompute.errors import Conflict
from meshcompute.market import tasks
from meshcompute.units import TOKEN
from tests.contracts.world import TEST_PARAMS
from tests.market.helpers import pass_chain_time, post, register, upload_spec

pytestmark = pytest.mark.anvil
REDIS_DB = 12


@pytest.fixture
def in_process_tasks(mk):
    tasks.use_runtime(mk.rt)
    yield tasks
    tasks.use_runtime(None)


def test_posted_sharded_job_is_matched_leased_committed_and_paid(mk, in_process_tasks):
    world = mk.world
    # the shared anvil's clock can lag the wall clock after snapshot reverts; the market's
    # clock is the later of both, so catch the chain up first or the jump to the end of the
    # challenge window below could also close the audit window of a job committed "earlier"
    lag = int(time.time()) - int(world.w3.eth.get_block("latest")["timestamp"])
    if lag > 0:
        world.chain.increase_time(lag + 1)
    worker_actor = world.workers[0]
    worker = register(mk, worker_actor, slots=2)
    client = mk.client(world.clients[0].account)
    group = hashlib.sha256(b"integration group").hexdigest()
    specs = [upload_spec(client, group=group, shard=i, shards=2) for i in range(2)]
    group = client_group(client.address, group)  # the market's id of this client's group
    # collateral large against the reward keeps the audit rate low; an audit, if drawn, is
    # resolved by a verifier below, so the test holds either way
    job_ids = [post(mk, spec, reward=TOKEN, audit_fee=TOKEN // 10, collateral=100 * TOKEN)
               for spec in specs]

    indexed = tasks.index_chain()
    assert indexed["new_events"] >= 2
    matched = tasks.match_jobs()
    assert sorted(matched["offered"]) == sorted([[j, worker.address] for j in job_ids])
    assert tasks.match_jobs()["offered"] == []  # idempotent: offers are not made twice

    leases = worker.lease(max_jobs=2)
    assert sorted(lease.job_id for lease in leases) == sorted(job_ids)
    outputs = {}
    for lease in leases:
        tensor = np.full((2, 3), float(lease.spec.shard), dtype=np.float32)
        output = save({"out.0": tensor})
        sha = worker.put_blob(output)
        worker.submit_result(lease.job_id, sha)
        outputs[lease.spec.shard] = tensor
        worker_actor.assign_and_commit(
            lease.ticket, lease.signature, [bytes.fromhex(sha)], records=[lease.record]
        )

    tasks.index_chain()
    assert sorted(tasks.match_jobs()["finished_leases"]) == sorted(job_ids)
    for job_id in job_ids:
        view = client.job(job_id)
        assert view.state == JobState.COMMITTED and view.worker == worker.address
    with pytest.raises(Conflict, match="open shards"):
        client.group_output(group)

    pass_chain_time(mk, mk.rt.chain_now() + TEST_PARAMS.challenge_window_s + 1)
    world.chain.mine(2)
    for _ in range(6):
        tasks.settle_jobs()
        tasks.index_chain()
        records = {j: mk.rt.indexer.job_record(j) for j in job_ids}
        if all(r.state == JobState.FINALIZED for r in records.values()):
            break
        for job_id, record in records.items():
            if record.state == JobState.AUDITED and record.resolved_at == 0:
                world.verifier_for(job_id).resolve_audit(job_id, True, b"\x01" * 32,
                                                         record=record)
        # a passed audit is paid once its appeal window has closed
        audited = any(r.state in (JobState.AUDITED, JobState.AUDIT_PASSED)
                      for r in records.values())
        pass_chain_time(mk, mk.rt.chain_now() + 1
                        + (TEST_PARAMS.appeal_window_s if audited else 0))
    states = {j: mk.rt.indexer.job_record(j).state for j in job_ids}
    assert states == dict.fromkeys(job_ids, JobState.FINALIZED)

    again = tasks.settle_jobs()
    assert again["job_ids"] == [] and again["tx_hash"] is None  # nobody is paid twice
    tasks.index_chain()
    paid = [e.args["jobId"] for e in mk.rt.indexer.events(name="JobPaid")]
    assert sorted(paid) == sorted(job_ids)
    assert world.admin.account_of(worker.address).earned > 0

    view = client.group(group)
    assert view.complete and view.job_ids == tuple(job_ids)
    merged = load(client.group_output(group))["out.0"]
    assert np.array_equal(merged, np.concatenate([outputs[0], outputs[1]]))
    # assembled once: the second download is the stored blob
    stored = mk.rt.state.group_output(group)
    assert stored is not None and mk.rt.blobs.read(stored) == client.group_output(group)
    metrics = mk.client().health()
    assert metrics["indexed_block"] == world.w3.eth.block_number


def test_a_round_never_runs_twice_at_once_and_frees_its_lock(mk, in_process_tasks):
    with tasks.round_lock(mk.rt, "match") as held:
        assert held
        assert in_process_tasks.match_jobs() == tasks._SKIPPED  # another run holds it
        assert in_process_tasks.index_chain() != tasks._SKIPPED  # other rounds go on
        with tasks.round_lock(mk.rt, "match") as again:
            assert not again
    assert "queued" in in_process_tasks.match_jobs()  # released: the next run goes ahead
    assert "queued" in in_process_tasks.match_jobs()  # and frees it again
    with pytest.raises(RuntimeError), tasks.round_lock(mk.rt, "settle"):
        raise RuntimeError("a round that fails still frees its lock")
    assert in_process_tasks.settle_jobs() != tasks._SKIPPED
