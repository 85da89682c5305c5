"""The worker node runs a training job posted on chain: real market, anvil and sandbox. The
committed result is the manifest; every checkpoint, the loss curve and the step records it
names are in the market's store, and the final state is the one a local run of the same plan
gives, bit for bit. Preparing an appeal uploads the state after every step of the audited
segments. A run whose loss stops being finite is reported failed with its step, not
committed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
import torch

from meshcompute.chain.draws import draw_seed
from meshcompute.core.job import JobState
from meshcompute.core.spec import TRAINING_SPEC_VERSION
from meshcompute.core.training import (
    DEFAULT_AUDITED_SEGMENTS,
    audit_segments,
    parse_manifest,
    parse_steps,
    validate_plan,
)
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.training import run_steps
from meshcompute.mesh.models import MLPClassifier
from tests.worker.market_stack import MarketStack, market_stack
from tests.worker.test_node_market import _node, _running, _wait

pytestmark = pytest.mark.anvil

PLAN = {"optimizer": {"name": "adamw", "lr": 0.01}, "steps": 12, "batch_size": 8, "seed": 4,
        "checkpoint_every": 4}


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    return [torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)]


@pytest.fixture(scope="module")
def stack(anvil, redis_url, tmp_path_factory) -> Iterator[MarketStack]:
    with market_stack(anvil, redis_url, tmp_path_factory.mktemp("market")) as s:
        yield s


@pytest.fixture(scope="module")
def program() -> bytes:
    torch.manual_seed(3)
    return export_program(MLPClassifier(d_in=6, d_hidden=16, d_out=3, depth=2).train(),
                          tuple(t[:4] for t in _data()))


def test_a_training_job_is_trained_uploaded_and_committed_as_its_manifest(
        anvil, stack: MarketStack, program: bytes) -> None:
    job_id = stack.post_job(program, save_tensors(_data()), training=PLAN,
                            version=TRAINING_SPEC_VERSION)
    actor = stack.world.workers[0]
    node, events = _node(stack, actor, threads=1)
    with _running(node):
        _wait(lambda: events.named("committed") or events.named("job_failed"),
              what="the commit")
    assert not events.named("job_failed"), events.named("job_failed")
    record = stack.world.job(job_id)
    assert record.state == JobState.COMMITTED and record.worker == actor.address
    with stack.client_for(stack.world.clients[0]) as market:
        manifest = market.get_blob(record.result_hash.hex())
        doc = parse_manifest(manifest, validate_plan(PLAN))
        checkpoints = [market.get_blob(sha) for sha in doc["checkpoints"]]
        losses = json.loads(market.get_blob(doc["losses"]))
        records = [parse_steps(market.get_blob(sha), validate_plan(PLAN), i,
                               doc["checkpoints"][i]) for i, sha in enumerate(doc["steps"])]
    local = run_steps(program, _data(), validate_plan(PLAN), record="states")
    assert checkpoints == local.checkpoints and losses == local.losses
    assert hashlib.sha256(checkpoints[-1]).hexdigest() == doc["final_state"]
    assert [h for r in records for h in r] == local.step_hashes  # the state after every step
    assert not any(stack.runtime.blobs.exists(h) for h in local.step_hashes[:3])  # kept by the worker

    # its appeal: the node runs the audited segments again and uploads each step's state
    anvil.mine(2)  # the audit draw's seed block
    node._prepare_appeal(job_id, stack.world.job(job_id))
    audited = audit_segments(validate_plan(PLAN), draw_seed(anvil.w3(), record),
                             DEFAULT_AUDITED_SEGMENTS)
    for index in audited:
        assert all(stack.runtime.blobs.exists(h) for h in records[index]), index
    assert any(e["segment"] == audited[0] for e in events.named("appeal_states"))


def test_a_training_run_whose_loss_stops_being_finite_is_reported_with_its_step(
        stack: MarketStack, program: bytes) -> None:
    data = _data()
    data[0][0, 0] = float("nan")
    job_id = stack.post_job(program, save_tensors(data), training=PLAN,
                            version=TRAINING_SPEC_VERSION)
    node, events = _node(stack, stack.world.workers[1], threads=1)
    with _running(node):
        _wait(lambda: events.named("job_failed"), what="the failure")
    (failed,) = events.named("job_failed")
    assert failed["job_id"] == job_id
    assert "training diverged: the loss was not finite at step" in failed["reason"]
    assert "not this worker's fault" in failed["reason"]
    assert stack.world.job(job_id).state == JobState.POSTED  # nothing committed, no stake lost
