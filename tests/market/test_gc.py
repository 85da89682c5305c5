"""Blob garbage collection against the real market's store, Redis and anvil: what an open job
needs is kept, an ended job's blobs stay the retention period, an upload no job names stays
the grace period, and anything past its time is deleted."""

from __future__ import annotations

import os
import time

import pytest

from meshcompute.core.spec import JobSpec
from meshcompute.market import gc
from tests.market.helpers import index_and_match, pass_chain_time, post, upload_spec

pytestmark = pytest.mark.anvil
REDIS_DB = 4
GRACE = 86_400
RETENTION = 7 * 86_400


def _round(mk, at: float) -> dict:
    mk.rt.indexer.sync()
    return gc.collect_round(mk.rt, now=at)


def test_an_upload_no_job_names_lives_out_its_grace_period(mk):
    client = mk.client(mk.world.clients[0].account)
    sha = client.put_blob(os.urandom(100))
    now = time.time()
    assert _round(mk, now + GRACE - 60)["deleted"] == 0
    assert mk.rt.blobs.exists(sha)
    report = _round(mk, now + GRACE + 60)
    assert report["deleted"] >= 1 and report["freed_bytes"] >= 100
    assert not mk.rt.blobs.exists(sha)


def test_an_open_jobs_blobs_are_kept_and_an_ended_jobs_stay_the_retention(mk):
    actor = mk.world.clients[0]
    client = mk.client(actor.account)
    spec = JobSpec(program=client.put_blob(os.urandom(50)), inputs=client.put_blob(os.urandom(50)))
    spec_sha = client.put_spec(spec)
    unrelated = client.put_blob(os.urandom(60))
    deadline = mk.world.now() + 100
    job_id = post(mk, spec, deadline=deadline)
    index_and_match(mk)
    now = time.time()
    # long past the grace period, the job still open: its blobs stay, the stray upload goes
    later = now + 3 * GRACE
    _round(mk, later)
    for sha in (spec.program, spec.inputs, spec_sha):
        assert mk.rt.blobs.exists(sha), sha
    assert not mk.rt.blobs.exists(unrelated)
    # the job ends (refunded after its deadline): its blobs stay the retention period
    pass_chain_time(mk, deadline)
    actor.reclaim(job_id)
    _round(mk, later + RETENTION - 60)
    assert mk.rt.blobs.exists(spec.program)
    _round(mk, later + RETENTION + 60)
    for sha in (spec.program, spec.inputs, spec_sha):
        assert not mk.rt.blobs.exists(sha), sha


def test_files_without_a_time_get_the_grace_period_and_a_reupload_renews_it(mk):
    data = os.urandom(70)
    sha, created = mk.rt.blobs.put_bytes(data)  # straight into the store: untracked
    assert created
    now = time.time()
    assert _round(mk, now - GRACE - 10)["adopted"] >= 1  # first seen a day ago: due now
    assert mk.rt.state.expired_blobs(now, 100) == [sha]
    # uploaded again: its grace period starts over, so this round keeps it
    mk.client(mk.world.clients[0].account).put_blob(data)
    assert _round(mk, now)["deleted"] == 0
    assert mk.rt.blobs.exists(sha)
    _round(mk, time.time() + GRACE + 1)
    assert not mk.rt.blobs.exists(sha)


def test_a_job_that_ends_between_two_rounds_still_gets_the_retention(mk):
    actor = mk.world.clients[0]
    client = mk.client(actor.account)
    now = time.time()
    _round(mk, now)
    spec = JobSpec(program=client.put_blob(os.urandom(40)), inputs=client.put_blob(os.urandom(40)))
    client.put_spec(spec)
    job_id = post(mk, spec)
    actor.reclaim(job_id)  # cancelled at once: it never was open at a round
    _round(mk, now + 10)
    _round(mk, now + GRACE + 3600)  # past the uploads' grace period
    assert mk.rt.blobs.exists(spec.program) and mk.rt.blobs.exists(spec.inputs)


def test_jobs_ended_past_the_retention_are_forgotten_with_their_keys_and_idle_workers_too(
        mk, monkeypatch):
    import hashlib

    import httpx

    from meshcompute.core.spec import client_group
    from meshcompute.market import indexer as indexer_module
    from tests.market.helpers import register

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 8)
    actor = mk.world.clients[0]
    client = mk.client(actor.account)
    name = hashlib.sha256(b"my group").hexdigest()
    specs = [JobSpec(program=client.put_blob(os.urandom(40)), inputs=client.put_blob(
        os.urandom(40)), group=name, shards=2, shard=i) for i in range(2)]
    for spec in specs:
        client.put_spec(spec)
    ended, still_open = (post(mk, spec) for spec in specs)
    register(mk, mk.world.workers[0])
    index_and_match(mk)
    group = client_group(actor.address, name)
    assert mk.rt.state.group(group) == {0: ended, 1: still_open}
    mk.rt.state.record_failure(ended, mk.world.workers[0].address, "it broke")
    actor.reclaim(ended)
    now = time.time()
    _round(mk, now)
    mk.world.chain.mine(10)  # its events deeper than any reorg the index handles
    report = _round(mk, now + RETENTION - 60)
    assert report["jobs_pruned"] == 0 and mk.rt.indexer.job_record(ended) is not None
    report = _round(mk, now + RETENTION + 60)
    assert report["jobs_pruned"] == 1 and report["groups_pruned"] == 0
    assert mk.rt.indexer.job_record(ended) is None
    assert mk.rt.state.failures(ended) == {}
    assert mk.rt.state.group(group) == {1: still_open}  # the open shard keeps the group
    answer = httpx.get(f"{mk.url}/jobs/{ended}")
    assert answer.status_code == 410 and "was pruned" in answer.json()["detail"]
    assert httpx.get(f"{mk.url}/jobs/{still_open}").status_code == 200
    # the worker, not seen for longer than the retention, was forgotten; it registers again
    assert report["workers_pruned"] == 1 and mk.rt.state.worker(
        mk.world.workers[0].address) is None
    register(mk, mk.world.workers[0])
    # the last shard ends: the whole group goes
    actor.reclaim(still_open)
    _round(mk, now + RETENTION + 120)
    mk.world.chain.mine(10)
    report = _round(mk, now + 2 * RETENTION + 240)
    assert report["jobs_pruned"] == 1 and report["groups_pruned"] == 1
    assert mk.rt.state.group(group) == {} and mk.rt.state.group_owner(group) is None


def test_a_training_jobs_state_checkpoints_and_loss_curve_are_kept_while_it_is_open(mk):
    import hashlib

    from meshcompute.core.spec import TRAINING_SPEC_VERSION
    from meshcompute.core.training import manifest_bytes, steps_bytes
    from meshcompute.market.gc import _manifest_blobs

    client = mk.client(mk.world.clients[0].account)
    plan = {"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 4, "batch_size": 2, "seed": 0,
            "checkpoint_every": 2}
    spec = JobSpec(program=client.put_blob(os.urandom(50)), inputs=client.put_blob(os.urandom(50)),
                   state=client.put_blob(os.urandom(40)), training=plan,
                   version=TRAINING_SPEC_VERSION)
    client.put_spec(spec)
    checkpoints = [client.put_blob(os.urandom(30)) for _ in range(2)]
    losses = client.put_blob(b"[1.0, 0.5, 0.4, 0.3]")
    # each segment's step record: the state after its first step (uploaded only for an
    # appeal), then its checkpoint
    between = [client.put_blob(os.urandom(30)) for _ in range(2)]
    records = [client.put_blob(steps_bytes(segment=i, first_step=2 * i,
                                           states=[between[i], checkpoints[i]]))
               for i in range(2)]
    manifest = manifest_bytes(plan_sha256=hashlib.sha256(b"plan").hexdigest(),
                              checkpoints=checkpoints, losses=losses, final_state=checkpoints[-1],
                              steps=records)
    result = client.put_blob(manifest)
    job_id = post(mk, spec, deadline=mk.world.now() + 100)
    mk.rt.state.save_result(job_id, mk.world.workers[0].address, result, time.time())
    index_and_match(mk)
    _round(mk, time.time() + 3 * GRACE)
    for sha in (spec.state, result, losses, *checkpoints, *records):
        assert mk.rt.blobs.exists(sha), sha
    # the states within segments are kept only once the job may be appealed
    assert not any(mk.rt.blobs.exists(sha) for sha in between)
    assert _manifest_blobs(mk.rt, result, with_step_states=True) == {
        *checkpoints, losses, *records, *between}


# ---------------------------------------------------------------------------- pruning


def _keys_naming(mk, job_id: int) -> list[str]:
    """The Redis keys named after ``job_id`` (``...:<id>``) and the hashes, sets and sorted
    sets that hold it as a field or member (the index's records, open, ended; the market's
    first-seen, lease-expiry, offer-ids, ticket-live)."""
    r = mk.rt.redis
    found = [key.decode() for key in r.scan_iter(count=1000)
             if key.decode().endswith(f":{job_id}")]
    idx, mkt = mk.rt.indexer.prefix, mk.rt.state.prefix
    for key in (f"{idx}records", f"{mkt}first-seen"):
        if r.hexists(key, str(job_id)):
            found.append(f"{key}[{job_id}]")
    for key in (f"{idx}open", f"{mkt}offer-ids"):
        if r.sismember(key, str(job_id)):
            found.append(f"{key}[{job_id}]")
    for key in (f"{idx}ended", f"{mkt}lease-expiry", f"{mkt}ticket-live"):
        if r.zscore(key, str(job_id)) is not None:
            found.append(f"{key}[{job_id}]")
    return sorted(found)


def _market_keys_of(mk, job_id: int, worker: str) -> None:
    """What the market writes about a job while it runs: a failure, an exclusion, a submitted
    result, a lease left over, a ticket hold."""
    from meshcompute.market.state import LeaseInfo

    state = mk.rt.state
    state.record_failure(job_id, worker, "it broke")
    state.exclude(job_id, worker, time.time() + 60)
    state.save_result(job_id, worker, "ab" * 32, time.time())
    state.hold_for_ticket(job_id, mk.world.now() + 10**6)
    with state.r.pipeline() as pipe:
        state._write_lease(pipe, LeaseInfo(job_id=job_id, worker=worker, collateral=1,
                                           expiry=mk.world.now() + 10**6, audit_bps=0,
                                           ticket={}, signature="0x", leased_at=time.time()))
        pipe.execute()


def test_prune_round_forgets_an_ended_job_past_job_retention_with_all_its_keys(mk, monkeypatch):
    import httpx

    from meshcompute.market import indexer as indexer_module
    from meshcompute.market import operations

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 8)
    retention = 2 * 86_400  # its own setting: shorter than the blobs' week
    monkeypatch.setattr(mk.rt, "settings", mk.settings.model_copy(
        update={"job_retention_s": retention}))
    actor, worker = mk.world.clients[0], mk.world.workers[0].address
    client = mk.client(actor.account)
    old, still_open, young = (post(mk, upload_spec(client)) for _ in range(3))
    index_and_match(mk)  # first-seen times, the queue
    for job_id in (old, still_open, young):
        _market_keys_of(mk, job_id, worker)
    actor.reclaim(old)
    now = time.time()
    monkeypatch.setattr(mk.rt.indexer, "clock", lambda: now)
    _round(mk, now)  # the index saw it end now
    mk.world.chain.mine(10)  # deeper than any reorg the index handles
    assert _keys_naming(mk, old)
    report = _round(mk, now + retention - 60)
    assert report["jobs_pruned"] == 0 and mk.rt.indexer.job_record(old) is not None
    actor.reclaim(young)
    monkeypatch.setattr(mk.rt.indexer, "clock", lambda: now + retention - 30)
    _round(mk, now + retention - 30)  # the index saw the young one end a day later
    mk.world.chain.mine(10)
    report = _round(mk, now + retention + 60)
    assert report["jobs_pruned"] == 1 and report["prune_backlog"] == 0
    assert _keys_naming(mk, old) == []
    assert mk.rt.indexer.events(job_id=old) == []
    # the open job of the same age keeps everything, as does the job that ended lately
    assert mk.rt.indexer.job_record(still_open).state.name == "POSTED"
    assert mk.rt.state.failures(still_open) and mk.rt.state.lease(still_open) is not None
    assert mk.rt.state.result(still_open) is not None
    assert mk.rt.indexer.job_record(young).state.name == "REFUNDED"
    assert mk.rt.state.failures(young) and mk.rt.state.result(young) is not None
    # the API says what happened to the pruned job, and tells it from one never posted
    answer = httpx.get(f"{mk.url}/jobs/{old}")  # (the API's runtime has its own settings)
    assert answer.status_code == 410
    detail = answer.json()["detail"]
    assert f"job {old} ended more than 7 days ago and was pruned" in detail
    assert "The chain's events remain its record" in detail
    with pytest.raises(operations.JobPruned, match="ended more than 2 days ago"):
        operations.job_view(mk.rt, old)
    answer = httpx.get(f"{mk.url}/jobs/{young + 1000}")
    assert answer.status_code == 404 and "not posted yet" in answer.json()["detail"]
    assert httpx.get(f"{mk.url}/jobs/{still_open}").status_code == 200
    assert httpx.get(f"{mk.url}/jobs/{young}").status_code == 200
    # the young job goes once it too is older than the retention
    report = _round(mk, now + 2 * retention)
    assert report["jobs_pruned"] == 1 and _keys_naming(mk, young) == []
    assert httpx.get(f"{mk.url}/jobs/{young}").status_code == 410


def test_prune_round_forgets_at_most_its_bound_per_round_and_the_rest_next(mk, monkeypatch):
    from meshcompute.market import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 4)
    actor = mk.world.clients[0]
    jobs = mk.world.post(actor, n=7)
    for job_id in jobs:
        actor.reclaim(job_id)
    mk.world.chain.mine(6)
    mk.rt.indexer.sync()
    later = time.time() + RETENTION + 60
    steps = []
    real_prune = mk.rt.indexer.prune

    def counted(*args, **kwargs):
        forgotten = real_prune(*args, **kwargs)
        steps.append(len(forgotten))
        return forgotten

    monkeypatch.setattr(mk.rt.indexer, "prune", counted)
    first = gc.prune_round(mk.rt, now=later, batch=2, batches=2)
    assert first["jobs_pruned"] == 4 and first["prune_backlog"] == 1
    assert steps == [2, 2]  # two steps of at most two jobs: the bound
    assert len(mk.rt.indexer.records_of(jobs)) == 3
    assert first["events_pruned"] == 4  # the deep events about no job: bounded the same way
    second = gc.prune_round(mk.rt, now=later, batch=2, batches=2)
    assert second["jobs_pruned"] == 3 and steps == [2, 2, 2, 1]
    assert mk.rt.indexer.records_of(jobs) == {}


def test_a_flood_of_spam_jobs_is_pruned_back_to_the_baseline_key_count(mk, monkeypatch):
    """The attacker posts many cheap jobs naming no spec, has them fail at a worker, cancels
    them, and waits: once the retention passes the market holds no key more than before,
    only the all-history counts (metrics, pruned and running tallies)."""
    from meshcompute.market import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 4)
    r, idx, mkt = mk.rt.redis, mk.rt.indexer.prefix, mk.rt.state.prefix
    attacker, worker = mk.world.clients[1], mk.world.workers[0].address
    now = time.time()
    mk.world.chain.mine(6)
    _round(mk, now)  # the market as it stands before the flood
    mk.rt.state.incr_metric("blobs_deleted", 0)
    baseline = {key.decode() for key in r.scan_iter(count=1000)}
    sizes = {name: r.hlen(f"{idx}{name}") for name in ("records", "events")}

    spam = mk.world.post(attacker, n=40, reward=10**15, audit_fee=0)
    index_and_match(mk)  # queued: first seen, the missing spec recorded as its problem
    for job_id in spam:
        mk.rt.state.record_failure(job_id, worker, "junk")
        mk.rt.state.exclude(job_id, worker, now + 60)
    assert len({key.decode() for key in r.scan_iter(count=1000)} - baseline) >= 40
    for job_id in spam:
        attacker.reclaim(job_id)
    _round(mk, now + 60)
    mk.world.chain.mine(6)
    report = _round(mk, now + RETENTION + 3600)
    assert report["jobs_pruned"] == len(spam)
    left = {key.decode() for key in r.scan_iter(count=1000)} - baseline
    assert left <= {f"{mkt}metric", f"{idx}pruned", f"{idx}pruned-max", f"{idx}tallies"}, left
    assert r.hlen(f"{idx}records") == sizes["records"]
    assert r.hlen(f"{idx}events") <= sizes["events"]
    assert r.hlen(f"{mkt}first-seen") == 0 and r.scard(f"{idx}open") == 0
    assert not any(_keys_naming(mk, job_id) for job_id in spam)
    assert mk.rt.indexer.pruned_tallies()["state:refunded"] == len(spam)
