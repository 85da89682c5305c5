"""The worker node end to end: real market (FastAPI + Redis), real anvil, real sandbox.

One market per module (fresh contracts on the session anvil, reverted afterwards); each test
runs one or more WorkerNodes in-process against it with real signed HTTP, real tickets and
real transactions, and runs real exported torch programs through ``meshcompute.execution.sandbox.run_job``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load

from meshcompute.chain.contracts import MeshActor
from meshcompute.core.job import JobState
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.wire.market_client import MarketClient
from meshcompute.worker.hardware import detect_hardware
from meshcompute.worker.node import WorkerConfig, WorkerNode
from tests.worker.market_stack import MarketStack, market_stack, mlp_job

pytestmark = pytest.mark.anvil

ALLOW_UNSANDBOXED = not sandbox_available()
HARDWARE = detect_hardware(with_cuda=False)


@pytest.fixture(scope="module")
def stack(anvil, redis_url, tmp_path_factory) -> Iterator[MarketStack]:
    with market_stack(anvil, redis_url, tmp_path_factory.mktemp("market")) as s:
        yield s


def _wait(condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class Events(list):
    def named(self, name: str) -> list[dict]:
        return [e for e in list(self) if e["event"] == name]


def _node(stack: MarketStack, actor: MeshActor, market: MarketClient | None = None,
          **config) -> tuple[WorkerNode, Events]:
    events = Events()
    values = {"market_url": stack.url, "poll_interval_s": 0.2, "audit_poll_s": 0.5,
              "earnings_poll_s": 1.0, "grace_s": 5.0, "allow_unsandboxed": ALLOW_UNSANDBOXED}
    values.update(config)
    node = WorkerNode(WorkerConfig(**values), actor.account,
                      market or stack.client_for(actor), actor, hardware=HARDWARE,
                      on_event=events.append)
    return node, events


@contextmanager
def _running(node: WorkerNode) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=node.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "worker node did not stop"


def test_worker_runs_posted_job_and_commits_hash_of_uploaded_output(stack: MarketStack):
    program, inputs, expected = mlp_job(batch=8, seed=1)
    job_id = stack.post_job(program, inputs)
    actor = stack.world.workers[0]
    node, events = _node(stack, actor, threads=1)
    with _running(node):
        _wait(lambda: events.named("committed"), what="the commit")
    record = stack.world.job(job_id)
    assert record.state == JobState.COMMITTED and record.worker == actor.address
    (done,) = events.named("job_done")
    output_sha = done["output_sha256"]
    assert record.result_hash == bytes.fromhex(output_sha)
    with stack.client_for(stack.world.clients[0]) as market:
        output = market.get_blob(output_sha)  # what the client downloads from the market
        # The market learns of the commit from the chain, on its indexer's next round.
        _wait(lambda: market.job(job_id).output_sha256 == output_sha,
              what="the market to index the commit")
    assert hashlib.sha256(output).digest() == record.result_hash
    torch.testing.assert_close(load(output)["out.0"], expected, rtol=1e-4, atol=1e-5)
    phases = [e["phase"] for e in events.named("phase") if e["job_id"] == job_id]
    assert phases == ["leased", "downloading", "running", "uploading", "committing"]
    assert stack.world.admin.stake_of(actor.address).locked == record.collateral


def test_hash_mismatch_on_download_fails_job_and_worker_takes_next(stack: MarketStack):
    program, inputs, _ = mlp_job(batch=4, seed=2)
    tampered_job = stack.post_job(program, inputs, time_limit_s=120.0)
    # The store on disk rots (or lies): the inputs blob no longer hashes to its name.
    path = stack.runtime.blobs.path(hashlib.sha256(inputs).hexdigest())
    path.chmod(0o644)
    path.write_bytes(inputs[:-4] + b"\x00\x00\x00\x00")
    program2, inputs2, _ = mlp_job(batch=4, seed=3)
    good_job = stack.post_job(program2, inputs2)
    actor = stack.world.workers[1]
    node, events = _node(stack, actor)
    with _running(node):
        _wait(lambda: events.named("job_failed") and events.named("committed"),
              what="one failed and one committed job")
    (failed,) = events.named("job_failed")
    assert failed["job_id"] == tampered_job
    assert "failed its hash check" in failed["reason"]
    with stack.client_for(stack.world.clients[0]) as market:
        view = market.job(tampered_job)
    assert view.failure is not None and "failed its hash check" in view.failure
    assert stack.world.job(tampered_job).state == JobState.POSTED  # never committed
    assert stack.world.job(good_job).state == JobState.COMMITTED
    assert [e["job_id"] for e in events.named("phase") if e["phase"] == "running"] == [good_job]


class _SigtermOnLease(MarketClient):
    """Delivers a real SIGTERM to this process as soon as a lease arrives."""

    leased: list[int]

    def lease(self, max_jobs: int = 1):  # type: ignore[override]
        leases = super().lease(max_jobs)
        if leases:
            self.leased = [lease.job_id for lease in leases]
            os.kill(os.getpid(), signal.SIGTERM)
        return leases


def test_sigterm_releases_unstarted_lease(stack: MarketStack):
    program, inputs, _ = mlp_job(batch=4, seed=4)
    stack.post_job(program, inputs)  # (the market may offer an older open job instead)
    actor = stack.world.workers[2]
    market = _SigtermOnLease(stack.url, actor.account, stack.chain_id)
    node, events = _node(stack, actor, market=market)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # as `mesh worker start`
    try:
        node.run(stop)  # on the main thread, where Python runs signal handlers
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.is_set() and market.leased
    assert [e["job_id"] for e in events.named("job_released")] == market.leased
    assert not events.named("phase")  # never started: not even downloaded
    for job_id in market.leased:
        assert stack.lease_of(job_id) is None  # the market has it back
        assert stack.world.job(job_id).state == JobState.POSTED
    assert events.named("stopped")[0]["released"] == len(market.leased)


def test_honest_worker_appeals_failed_audit_once(stack: MarketStack):
    program, inputs, _ = mlp_job(batch=4, seed=5)
    job_id = stack.post_job(program, inputs, audit_bps=10_000)  # always audited
    actor = stack.world.workers[0]
    node, events = _node(stack, actor)
    with _running(node):
        _wait(lambda: job_id in node.watch.job_ids(), what="the commit")
        stack.world.chain.mine(2)  # the audit draw needs the block after the commit's
        verifier = stack.world.verifier_for(job_id)
        verifier.resolve_audit(job_id, False, b"\x0e" * 32)
        _wait(lambda: events.named("appealed"), what="the appeal")
        time.sleep(1.5)  # a few more watch passes: still exactly one appeal
    assert [e["job_id"] for e in events.named("audit_failed")] == [job_id]
    assert [e["job_id"] for e in events.named("appealed")] == [job_id]
    record = stack.world.job(job_id)
    assert record.state == JobState.APPEALED and record.worker == actor.address


class _CancelsOne:
    """Honest, except that while the batch runs the client cancels one of its jobs (a real
    ``reclaim`` on chain), as a client may at any time before the commit."""

    name = "honest (a client cancels mid-batch)"
    appeals = True

    def __init__(self, client: MeshActor, victim: int) -> None:
        self.client, self.victim, self.done = client, victim, False

    def before_run(self, job_id, program_sha256, inputs, emit):
        return None

    def after_run(self, job_id, program_sha256, inputs, output, emit):
        if not self.done:
            self.done = True
            self.client.reclaim(self.victim)
        return output


def test_a_cancel_mid_batch_costs_the_worker_only_the_cancelled_job(stack: MarketStack):
    from meshcompute.chain.contracts import JobParams
    from meshcompute.core.spec import JobSpec
    from meshcompute.units import TOKEN

    client = stack.world.clients[1]
    program, _, _ = mlp_job(batch=4, seed=3)
    with stack.client_for(client) as market:
        program_sha = market.put_blob(program)
        specs = [market.put_spec(JobSpec(program=program_sha,
                                         inputs=market.put_blob(mlp_job(batch=4, seed=10 + i)[1])))
                 for i in range(3)]
    deadline = stack.world.now() + 3600
    ids = client.post_jobs([JobParams(spec_hash=bytes.fromhex(sha), reward=100 * TOKEN,
                                      audit_fee=10 * TOKEN, collateral=50 * TOKEN,
                                      deadline=deadline, audit_bps=0) for sha in specs])
    victim = ids[1]
    actor = stack.world.workers[2]
    node, events = _node(stack, actor, threads=1)
    node.policy = _CancelsOne(client, victim)
    rest = (ids[0], ids[2])
    with _running(node):
        # (another module test's stopped worker may be offered a job first: its offer lapses)
        _wait(lambda: all(stack.world.job(j).state == JobState.COMMITTED for j in rest),
              timeout=120, what="the commit of the rest")
    assert stack.world.job(victim).state == JobState.REFUNDED
    for job_id in rest:
        assert stack.world.job(job_id).worker == actor.address
    # only the cancelled job was lost, never a batch partner
    assert {e["job_id"] for e in events.named("commit_reverted")} <= {victim}
