"""A worker that yields to its owner (``--when idle``), on the real market, anvil and sandbox,
the owner played by the test: when the owner comes back mid-job the running training job's
processes are frozen (stopped, not killed) and no new job is leased; when the owner leaves,
the job goes on from where it was and is committed as a local run gives it. A frozen job whose
lease would run out is handed back first, stopped after the step under way, with every step
it finished offered to its client, who pays for them with a job reserved for this worker
(which this worker then commits without computing)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from meshcompute.core.availability import ACTIVE, PAUSED, Availability
from meshcompute.core.job import JobState
from meshcompute.core.spec import TRAINING_SPEC_VERSION
from meshcompute.core.training import parse_manifest, validate_plan
from meshcompute.errors import NotFound
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.training import run_steps
from meshcompute.mesh.models import MLPClassifier
from meshcompute.worker.node import WorkerConfig, WorkerNode
from meshcompute.worker.owner import descendants, run_state
from tests.worker.market_stack import MarketStack, market_stack
from tests.worker.test_node_market import ALLOW_UNSANDBOXED, HARDWARE, Events, _running, _wait

pytestmark = pytest.mark.anvil

PLAN = {"optimizer": {"name": "sgd", "lr": 0.01}, "steps": 3000, "batch_size": 8, "seed": 1,
        "checkpoint_every": 1000}


class Owner:
    """The machine's owner as the node asks about them."""

    def __init__(self) -> None:
        self.state = ACTIVE

    def availability(self) -> Availability:
        return Availability(self.state, "the test's owner" if self.state != ACTIVE else "idle")


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(64, 6, generator=gen), torch.randint(0, 3, (64,), generator=gen)]


@pytest.fixture(scope="module")
def stack(anvil, redis_url, tmp_path_factory) -> Iterator[MarketStack]:
    with market_stack(anvil, redis_url, tmp_path_factory.mktemp("market"), lease_s=20) as s:
        yield s


@pytest.fixture(scope="module")
def program() -> bytes:
    torch.manual_seed(4)
    return export_program(MLPClassifier(d_in=6, d_hidden=64, d_out=3, depth=2).train(),
                          tuple(t[:4] for t in _data()))


def _node(stack: MarketStack, owner: Owner, index: int, **config) -> tuple[WorkerNode, Events]:
    events = Events()
    actor = stack.world.workers[index]
    settings = {"market_url": stack.url, "poll_interval_s": 0.2, "audit_poll_s": 0.5,
                "earnings_poll_s": 1.0, "grace_s": 5.0, "allow_unsandboxed": ALLOW_UNSANDBOXED,
                "threads": 1, **config}
    node = WorkerNode(WorkerConfig(**settings), actor.account, stack.client_for(actor), actor,
                      hardware=HARDWARE, on_event=events.append, owner=owner)
    return node, events



def _training_processes() -> list[int]:
    """This test process's training job processes (the node runs in it)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"meshcompute.execution.train_job" in argv:
            found.append(pid)
    return found


def _post(stack: MarketStack, program: bytes) -> int:
    return stack.post_job(program, save_tensors(_data()), training=PLAN,
                          version=TRAINING_SPEC_VERSION)


def test_the_owner_back_freezes_the_running_job_and_leases_nothing_until_they_leave(
        stack: MarketStack, program: bytes) -> None:
    job_id = _post(stack, program)
    owner = Owner()
    node, events = _node(stack, owner, 0, hand_back_margin_s=0.5)
    with _running(node):
        _wait(lambda: any(e.get("phase") == "running" for e in events.named("phase")),
              what="the training to start")
        cpu = time.process_time()
        time.sleep(1.0)
        assert time.process_time() - cpu < 0.3  # its one slot busy: the node waits, no spin
        owner.state = PAUSED
        _wait(lambda: events.named("paused"), timeout=5, what="the freeze")
        frozen = dict(node.freezer.frozen)
        assert frozen and all(run_state(pid) == "T" for pid in frozen)
        other = _post(stack, program)  # posted while the owner is at the machine
        cpu = time.process_time()
        time.sleep(2.0)  # ten of the node's polls for work
        # a paused node waits for its owner, it does not spin (the job is a child process)
        assert time.process_time() - cpu < 0.5
        assert stack.lease_of(other) is None and len(node._active) == 1
        assert not events.named("committed")
        owner.state = ACTIVE
        _wait(lambda: events.named("resumed"), timeout=5, what="the thaw")
        _wait(lambda: len(events.named("committed")) == 2, timeout=120, what="both commits")
    assert [e["state"] for e in events.named("availability")] == [PAUSED, ACTIVE]
    record = stack.world.job(job_id)
    assert record.state == JobState.COMMITTED
    with stack.client_for(stack.world.clients[0]) as market:
        doc = parse_manifest(market.get_blob(record.result_hash.hex()), validate_plan(PLAN))
        final = market.get_blob(doc["final_state"])
    assert final == run_steps(program, _data(), validate_plan(PLAN)).final_state


LONG_PLAN = {**PLAN, "steps": 200_000, "checkpoint_every": 500, "seed": 7}  # its own states


def test_a_frozen_training_job_is_handed_back_with_its_finished_checkpoints_and_paid_for_them(
        stack: MarketStack, program: bytes, tmp_path: Path) -> None:
    """The owner comes back once the job has finished checkpoints, and stays past the lease:
    the job is handed back with the steps it finished: the manifest of those steps as a job of
    their own is uploaded (the market shows it on the job), their states are withheld. The
    client pays for them
    with a job reserved for this worker (postJobsFor), which the worker, still paused, leases
    and commits at once without computing, then uploads the states: the committed result is
    those steps as a local run gives them, and nobody else could have taken it."""
    from meshcompute.chain.contracts import JobParams
    from meshcompute.units import TOKEN

    job_id = stack.post_job(program, save_tensors(_data()), training=LONG_PLAN,
                            version=TRAINING_SPEC_VERSION)
    owner = Owner()
    node, events = _node(stack, owner, 2, hand_back_margin_s=18, scratch_dir=tmp_path)
    client = stack.world.clients[0]
    with _running(node), stack.client_for(client) as market:
        def finished() -> bool:
            return any(json.loads(p.read_text())["checkpoints"] >= 2
                       for p in tmp_path.glob("mesh-train-*/box/progress.json"))
        _wait(finished, timeout=120, what="two finished checkpoints")
        owner.state = PAUSED
        _wait(lambda: events.named("job_handed_back"), timeout=15, what="the hand-back")
        (back,) = events.named("job_handed_back")
        assert back["job_id"] == job_id  # stopped after its step under way: none is lost
        assert "lease would run out" in back["reason"]
        # its training process is gone, not left stopped (idle warm sandboxes of the runner
        # pool started meanwhile are frozen too while the owner is there: they hold no job)
        _wait(lambda: not _training_processes(), timeout=10, what="the job's process to end")
        assert stack.world.job(job_id).state == JobState.POSTED
        (partial,) = market.job(job_id).partials
        assert partial.worker.lower() == stack.world.workers[2].address.lower()
        end = partial.end_step
        assert end == back["partial_end_step"] and 1000 <= end < LONG_PLAN["steps"]
        part = validate_plan(LONG_PLAN).part(0, end)
        doc = parse_manifest(market.get_blob(partial.manifest_sha256), part)
        assert doc["final_state"] == partial.state_sha256
        # the states are withheld until a job paying for them is committed: the client
        # cannot go on from them unpaid
        for checkpoint in doc["checkpoints"]:
            with pytest.raises(NotFound):
                market.get_blob(checkpoint)
        spec = market.job(job_id).spec
        paying = replace(spec, training=part.to_json())
        market.put_spec(paying)
        # a stranger (the spec and the claim are public) offers a wei over the floor to buy
        # the withheld states: refused, never computed, and the work stays for its client
        stranger = stack.world.clients[1]
        (bought,) = stranger.post_jobs_for([JobParams(
            spec_hash=bytes.fromhex(paying.sha256), reward=TOKEN, audit_fee=0, collateral=0,
            deadline=stack.world.now() + 3600, audit_bps=0)], partial.worker)
        _wait(lambda: events.named("job_failed"), timeout=30, what="the stranger refused")
        (refused,) = events.named("job_failed")
        assert refused["job_id"] == bought and "reserved" in refused["reason"]
        # the client pays for the steps done: cancel, and a job reserved for this worker
        client.reclaim(job_id)
        (paid,) = client.post_jobs_for([JobParams(
            spec_hash=bytes.fromhex(paying.sha256), reward=10 * TOKEN, audit_fee=TOKEN,
            collateral=5 * TOKEN, deadline=stack.world.now() + 3600, audit_bps=0)],
            partial.worker)
        _wait(lambda: events.named("partial_states_uploaded"), timeout=60,
              what="the reserved job committed and its checkpoints uploaded")
        assert events.named("committed") and events.named("partial_claimed")
        assert not events.named("resumed")
    record = stack.world.job(paid)
    assert record.state == JobState.COMMITTED
    assert record.result_hash.hex() == partial.manifest_sha256
    local = run_steps(program, _data(), part)
    with stack.client_for(client) as market:
        assert market.get_blob(partial.state_sha256) == local.final_state


def test_a_job_reserved_for_the_worker_that_pays_for_nothing_it_did_is_never_computed(
        stack: MarketStack, program: bytes) -> None:
    """A reserved job is offered to its worker whatever it pays: were it computed, anyone
    could have this worker train for them at any price. The worker refuses one that pays for
    no work it handed back, before downloading or running anything."""
    from meshcompute.chain.contracts import JobParams
    from meshcompute.core.spec import JobSpec
    from meshcompute.units import TOKEN

    client = stack.world.clients[0]
    worker = stack.world.workers[0]
    with stack.client_for(client) as market:
        spec = JobSpec(program=market.put_blob(program),
                       inputs=market.put_blob(save_tensors(_data())), training=PLAN,
                       version=TRAINING_SPEC_VERSION)
        market.put_spec(spec)
    (job_id,) = client.post_jobs_for([JobParams(
        spec_hash=bytes.fromhex(spec.sha256), reward=TOKEN, audit_fee=0, collateral=0,
        deadline=stack.world.now() + 3600, audit_bps=0)], worker.address)
    node, events = _node(stack, Owner(), 0)
    with _running(node):
        _wait(lambda: events.named("job_failed"), timeout=30, what="the refusal")
    (failed,) = events.named("job_failed")
    assert failed["job_id"] == job_id and "reserved" in failed["reason"]
    assert not [e for e in events.named("phase") if e.get("phase") == "running"]
    assert stack.world.job(job_id).state == JobState.POSTED
