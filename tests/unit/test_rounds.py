"""A training run across machines (meshcompute.rounds) around a stand-in for the marketplace:
the client's jobs are trained here by the real training code, so the round logic is what is
tested: the outer Nesterov step, one job per shard from the global parameters with each
shard's own optimizer slots, a straggler left out of its round (and reclaimed), a run resumed
after the client stopped mid-round without paying for its jobs twice, and a run that gets
close to one machine's loss. The real marketplace runs it in tests/e2e/test_training.py."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load

from meshcompute.core.training import shard_rows, validate_plan
from meshcompute.errors import BadInput, JobFailed
from meshcompute.execution.outer import OuterOptimizer, outer_step
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import run_steps
from meshcompute.mesh.models import MLPClassifier
from meshcompute.rounds import CURVE_FILE, RUN_FILE, WEIGHTS_FILE, RunConfig, TrainingRun


def _data(rows: int = 96) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 8, generator=gen)
    return [x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()]  # learnable labels


@pytest.fixture(scope="module")
def program() -> bytes:
    torch.manual_seed(0)
    return export_program(MLPClassifier(d_in=8, d_hidden=16, d_out=3, depth=2).train(),
                          tuple(t[:2] for t in _data()))


class Market:
    """Trains each posted job here, at once, as an honest worker would; ``late`` names the
    (round, shard) jobs nobody finishes in time; ``stop_after`` waits raise KeyboardInterrupt
    (the client stopped)."""

    def __init__(self, late: set[tuple[int, int]] | None = None,
                 stop_after: int | None = None, stop_posting_after: int | None = None,
                 refuse_reclaims: int = 0) -> None:
        self.posted: list[dict[str, Any]] = []
        self.reclaimed: list[int] = []
        self.late = late or set()
        self.stop_after = stop_after
        self.stop_posting_after = stop_posting_after
        self.refuse_reclaims = refuse_reclaims
        self.waits = 0
        self._ids = itertools.count(1)
        self._funds = 10**24

    def submit_training(self, program: bytes, data: list[torch.Tensor], plan: dict[str, Any],
                        *, state: bytes, **job: Any) -> Any:
        if self.stop_posting_after is not None and len(self.posted) >= self.stop_posting_after:
            raise KeyboardInterrupt
        job_id = next(self._ids)
        self.posted.append({"job_id": job_id, "plan": plan, "state": state, "data": data,
                            "program": program})
        self._funds -= 10**18
        return SimpleNamespace(job_ids=[job_id], to_json=lambda: {"job_id": job_id})

    def submission_from_json(self, doc: dict[str, Any]) -> Any:
        return SimpleNamespace(job_ids=[doc["job_id"]], to_json=lambda: dict(doc))

    def wait_training(self, submission: Any, *, timeout_s: float) -> Any:
        self.waits += 1
        if self.stop_after is not None and self.waits > self.stop_after:
            raise KeyboardInterrupt
        (job_id,) = submission.job_ids
        job = next(j for j in self.posted if j["job_id"] == job_id)
        plan = validate_plan(job["plan"])
        key = (job["plan"]["part"][0] // CONFIG.steps_per_round, job["plan"]["seed"])
        if key in self.late:
            raise JobFailed(f"timed out after {timeout_s:.0f}s waiting for shards")
        run = run_steps(job["program"], job["data"], plan, job["state"])
        return SimpleNamespace(state=run.final_state, losses=run.losses, job_ids=[job_id])

    def reclaim(self, job_id: int) -> None:
        if self.refuse_reclaims > 0:  # not past its deadline yet
            self.refuse_reclaims -= 1
            raise JobFailed(f"job {job_id} is not past its deadline")
        self.reclaimed.append(job_id)

    def funds(self) -> int:
        return self._funds


CONFIG = RunConfig(workers=2, rounds=4, steps_per_round=6, batch_size=8,
                   optimizer={"name": "adamw", "lr": 0.01})


def test_the_outer_step_is_nesterov_momentum_on_the_mean_of_the_moves() -> None:
    start = {"param.w": torch.tensor([1.0, 2.0])}
    moved = [{"param.w": torch.tensor([0.0, 2.0])}, {"param.w": torch.tensor([1.0, 0.0])}]
    outer = OuterOptimizer(lr=0.5, momentum=0.9)
    params, buffer = outer_step(outer, start, moved, {})
    delta = torch.tensor([0.5, 1.0])  # mean of (start - moved)
    torch.testing.assert_close(buffer["param.w"], delta)
    torch.testing.assert_close(params["param.w"], start["param.w"] - 0.5 * (delta + 0.9 * delta))
    again, buffer2 = outer_step(outer, params, [params], buffer)  # nobody moved
    torch.testing.assert_close(buffer2["param.w"], 0.9 * delta)
    torch.testing.assert_close(again["param.w"], params["param.w"] - 0.5 * 0.81 * delta)
    with pytest.raises(BadInput, match="momentum in \\[0, 1\\), got 0.5 and 1.0"):
        OuterOptimizer(lr=0.5, momentum=1.0)


def test_shards_split_every_row_once() -> None:
    shards = shard_rows(10, 3, seed=4)
    assert sorted(r for s in shards for r in s) == list(range(10))
    assert [len(s) for s in shards] == [3, 3, 4]
    with pytest.raises(BadInput, match="cannot split 2 rows into 3 shards"):
        shard_rows(2, 3, seed=0)


def test_a_run_trains_each_shard_from_the_global_parameters_and_lowers_the_loss(
        program: bytes, tmp_path: Path) -> None:
    market = Market()
    reports: list[dict[str, Any]] = []
    result = TrainingRun(market, program, _data(), CONFIG, tmp_path / "run",
                         progress=reports.append).run()
    assert len(market.posted) == 2 * 4 and len(result.rounds) == 4
    # each round's two jobs start from the same parameters, on disjoint shards
    for first, second in zip(market.posted[::2], market.posted[1::2], strict=True):
        assert first["data"][0].shape[0] + second["data"][0].shape[0] == 96
        a, b = (load(j["state"]) for j in (first, second))
        assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("param."))
    assert result.losses[-1] < 0.8 * result.losses[0]
    assert result.spent_wei == 8 * 10**18
    assert (tmp_path / "run" / WEIGHTS_FILE).exists()
    assert (tmp_path / "run" / CURVE_FILE).read_bytes()[:4] == b"\x89PNG"
    assert reports[-1]["round"] == 4 and reports[-1]["loss"] == result.losses[-1]


def test_a_straggler_is_left_out_of_its_round_and_its_escrow_reclaimed(
        program: bytes, tmp_path: Path) -> None:
    market = Market(late={(1, 1)}, refuse_reclaims=1)  # too early at round 2, fine at 3
    result = TrainingRun(market, program, _data(), CONFIG, tmp_path / "run").run()
    assert list(result.rounds[1].skipped) == ["1"]
    assert "timed out" in result.rounds[1].skipped["1"]
    assert market.reclaimed == [4]  # round 1, shard 1
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["to_reclaim"] == []
    assert len(result.rounds[1].jobs) == 1 and len(result.rounds[2].jobs) == 2


def test_a_run_resumed_after_the_client_stopped_mid_round_pays_for_no_job_twice(
        program: bytes, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stopped = Market(stop_after=3)  # round 0's two waits, then round 1's first
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(stopped, program, _data(), CONFIG, run_dir).run()
    doc = json.loads((run_dir / RUN_FILE).read_text())
    assert len(doc["rounds"]) == 1 and doc["in_flight"]["round"] == 1
    # the same market (its jobs are on chain), the client started again
    stopped.stop_after = None
    result = TrainingRun(stopped, program, _data(), CONFIG, run_dir).run()
    assert len(stopped.posted) == 2 * 4  # round 1's jobs were not posted again
    uninterrupted = TrainingRun(Market(), program, _data(), CONFIG, tmp_path / "other").run()
    assert result.losses == uninterrupted.losses
    assert hashlib.sha256((run_dir / WEIGHTS_FILE).read_bytes()).digest() == \
        hashlib.sha256((tmp_path / "other" / WEIGHTS_FILE).read_bytes()).digest()
    # stopped between posting a round's two jobs: the second is posted on resuming, once
    half = Market(stop_posting_after=3)
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(half, program, _data(), CONFIG, tmp_path / "half").run()
    half.stop_posting_after = None
    again = TrainingRun(half, program, _data(), CONFIG, tmp_path / "half").run()
    assert len(half.posted) == 2 * 4 and again.losses == uninterrupted.losses
    with pytest.raises(BadInput, match="holds another training run"):
        TrainingRun(Market(), program, _data(), RunConfig(**{**CONFIG.__dict__, "rounds": 5}),
                    run_dir).run()
