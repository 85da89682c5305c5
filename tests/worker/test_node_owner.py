"""A worker that yields to its owner (``--when idle``), on the real market, anvil and sandbox,
the owner played by the test: when the owner comes back mid-job the running training job's
processes are frozen (stopped, not killed) and no new job is leased; when the owner leaves,
the job goes on from where it was and is committed as a local run gives it. A frozen job whose
lease would run out is handed back first, and done again once the worker may work."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from meshcompute.core.availability import ACTIVE, PAUSED, Availability
from meshcompute.core.job import JobState
from meshcompute.core.spec import TRAINING_SPEC_VERSION
from meshcompute.core.training import parse_manifest, validate_plan
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
        owner.state = PAUSED
        _wait(lambda: events.named("paused"), timeout=5, what="the freeze")
        frozen = dict(node.freezer.frozen)
        assert frozen and all(run_state(pid) == "T" for pid in frozen)
        other = _post(stack, program)  # posted while the owner is at the machine
        time.sleep(2.0)  # ten of the node's polls for work
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


def test_a_frozen_job_whose_lease_would_run_out_is_handed_back_and_done_later(
        stack: MarketStack, program: bytes) -> None:
    job_id = _post(stack, program)
    owner = Owner()
    node, events = _node(stack, owner, 1, hand_back_margin_s=18)  # leases are of 20 s
    with _running(node):
        _wait(lambda: any(e.get("phase") == "running" and e.get("job_id") == job_id
                          for e in events.named("phase")), what="the training to start")
        owner.state = PAUSED
        _wait(lambda: events.named("job_released"), timeout=10, what="the hand-back")
        (released,) = events.named("job_released")
        assert released["job_id"] == job_id and "lease would run out" in released["reason"]
        # its training process is gone, not left stopped (idle warm sandboxes of the runner
        # pool started meanwhile are frozen too while the owner is there: they hold no job)
        _wait(lambda: not _training_processes(), timeout=10, what="the job's process to end")
        assert stack.world.job(job_id).state in (JobState.POSTED, JobState.ASSIGNED)
        owner.state = ACTIVE
        _wait(lambda: events.named("committed"), timeout=120, what="the job done again")
    assert stack.world.job(job_id).state == JobState.COMMITTED
