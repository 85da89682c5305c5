"""A training run across machines (:meth:`meshcompute.client.Client.train`, ``mesh train``):
rounds of training jobs, one per data shard, combined by an outer optimizer.

Each round posts one training job per shard from the current global parameters (each shard
keeps its own inner optimizer slots from round to round), waits for the verified results, and
takes one outer step with those that came back (:func:`meshcompute.execution.outer.outer_step`:
local SGD, DiLoCo style). Everything a round needs to go on lives in the run's folder:

- ``run.json``: the configuration, the hashes of the program and data it was started with, the
  rounds done (per round: the loss of the global parameters over the whole dataset, the
  workers' losses, the jobs paid, the shards skipped and why, the credits spent), and the
  round in flight with its posted jobs, so a client restarted mid-round waits on those jobs
  instead of paying for them twice;
- ``global.safetensors``: the global parameters, the outer momentum and each shard's slots.

At the end the folder holds ``weights.safetensors`` (the trained parameters) and
``loss.png`` (the loss curve). A shard whose worker was slashed is posted again by
:meth:`~meshcompute.client.Client.wait_training`, and one handed back with finished
checkpoints is paid for them and goes on from the last (its worker's owner came back); a
shard still missing when the round's time is up
(a straggler, or a job nobody took) is left out of that round, said so in the report, and its
escrow reclaimed once its deadline has passed (tried at each later round and at the end; what
is still out then is listed in ``run.json``, ``to_reclaim``, for ``mesh job reclaim``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as st_load

from meshcompute.core.training import shard_rows, validate_plan
from meshcompute.errors import BadInput, JobFailed, MeshError
from meshcompute.execution.outer import (
    OuterOptimizer,
    join_state,
    mean_loss,
    outer_step,
    split_state,
)
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.execution.training import PARAM, initial_state, state_bytes


class RunClient(Protocol):
    """What a run needs of :class:`meshcompute.client.Client` (which runs it: this module is
    a floor below the client and never imports it)."""

    def submit_training(self, model: Any, data: Any, plan: dict[str, Any],
                        **job: Any) -> Any: ...

    def wait_training(self, submission: Any, *, timeout_s: float) -> Any: ...

    def reclaim(self, job_id: int) -> None: ...

    def funds(self) -> int: ...

    def submission_from_json(self, doc: dict[str, Any]) -> Any: ...

RUN_FILE = "run.json"
STATE_FILE = "global.safetensors"
WEIGHTS_FILE = "weights.safetensors"
CURVE_FILE = "loss.png"
_MOMENTUM = "outer."
_SLOTS = "shard{}."


@dataclass(frozen=True)
class RunConfig:
    """A training run: ``workers`` shards (one job each per round), ``rounds`` rounds of
    ``steps_per_round`` inner steps of ``optimizer`` (a training plan's optimizer) on batches
    of ``batch_size`` rows; the outer optimizer's rate and momentum; each job's pay, audit
    rate and deadline (``round_timeout_s``: how long a round waits for its shards)."""

    workers: int
    rounds: int
    steps_per_round: int
    batch_size: int
    optimizer: dict[str, Any]
    seed: int = 0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    pay: str = "1"
    audit_bps: int = 0
    round_timeout_s: float = 1800.0

    def plan(self, round_index: int, shard: int) -> dict[str, Any]:
        """Shard ``shard``'s job in round ``round_index``: its part of one long inner run of
        ``rounds * steps_per_round`` steps (so the inner optimizer's slots, its step count and
        the shard's batch order carry on from round to round; only the parameters are reset to
        the global ones)."""
        h = self.steps_per_round
        return {"optimizer": dict(self.optimizer), "steps": self.rounds * h,
                "batch_size": self.batch_size, "seed": self.seed + shard,
                "checkpoint_every": max(1, h // 4),
                "part": [round_index * h, (round_index + 1) * h]}

    def check(self, rows: int) -> None:
        if not 1 <= self.workers <= rows or self.rounds < 1:
            raise BadInput(f"a training run needs 1 to {rows} workers (shards) and at least "
                           f"one round, got {self.workers} and {self.rounds}")
        validate_plan(self.plan(0, 0))
        OuterOptimizer(self.outer_lr, self.outer_momentum)


@dataclass
class RoundReport:
    round: int
    loss: float
    """The loss of the round's global parameters over the whole dataset."""
    worker_loss: float
    """The mean of the returned shards' last-step losses."""
    jobs: list[int]
    skipped: dict[str, str] = field(default_factory=dict)
    """Shard index -> why it is not in this round's mean."""
    spent_wei: int = 0


@dataclass
class TrainRunResult:
    parameters: dict[str, torch.Tensor]
    rounds: list[RoundReport]
    initial_loss: float
    run_dir: Path
    weights_path: Path
    curve_path: Path | None

    @property
    def losses(self) -> list[float]:
        return [self.initial_loss] + [r.loss for r in self.rounds]

    @property
    def spent_wei(self) -> int:
        return sum(r.spent_wei for r in self.rounds)


Progress = Callable[[dict[str, Any]], None]


class TrainingRun:
    """One run in ``run_dir`` (started fresh, or resumed when the folder holds a run of the
    same program, data and configuration)."""

    def __init__(self, client: RunClient, model: torch.nn.Module | bytes,
                 data: Sequence[torch.Tensor], config: RunConfig, run_dir: Path,
                 *, progress: Progress | None = None) -> None:
        self.client = client
        self.data = [t.contiguous() for t in data]
        rows = int(self.data[0].shape[0])
        config.check(rows)
        if isinstance(model, torch.nn.Module):
            model = export_program(model.train(), tuple(t[:2] for t in self.data))
        self.program = model
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.shards = shard_rows(rows, config.workers, config.seed)
        self.identity = {
            "program": hashlib.sha256(self.program).hexdigest(),
            "data": hashlib.sha256(save_tensors(self.data, prefix="args")).hexdigest(),
            "config": asdict(config),
        }

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainRunResult:
        from meshcompute.execution.loader import load_program

        self.run_dir.mkdir(parents=True, exist_ok=True)
        loaded = load_program(self.program)
        doc, tensors = self._load_or_start(loaded)
        first_plan = validate_plan(self.config.plan(0, 0))
        while len(doc["rounds"]) < self.config.rounds:
            index = len(doc["rounds"])
            self._reclaim(doc)
            report = self._round(index, doc, tensors, loaded, first_plan)
            doc["rounds"].append(asdict(report))
            doc.pop("in_flight", None)
            self._save(doc, tensors)
        self._reclaim(doc)
        self._save(doc, tensors)
        params = {k: v for k, v in tensors.items() if k.startswith(PARAM)}
        weights = self.run_dir / WEIGHTS_FILE
        weights.write_bytes(state_bytes(params))
        rounds = [RoundReport(**r) for r in doc["rounds"]]
        curve = self._draw(doc["initial_loss"], rounds)
        return TrainRunResult({k[len(PARAM):]: v for k, v in params.items()}, rounds,
                              doc["initial_loss"], self.run_dir, weights, curve)

    def _round(self, index: int, doc: dict[str, Any], tensors: dict[str, torch.Tensor],
               loaded: Any, plan: Any) -> RoundReport:
        cfg = self.config
        params = {k: v for k, v in tensors.items() if k.startswith(PARAM)}
        before = self.client.funds()
        started = time.monotonic()
        flight = doc.get("in_flight")
        submissions: dict[int, Any] = {}
        if flight is not None and flight.get("round") == index:
            # resumed mid-round: wait on the jobs already paid for, post only the others
            before = int(flight.get("funds_before", before))
            submissions = {int(s): self.client.submission_from_json(j)
                           for s, j in flight["jobs"].items()}
        for shard in range(cfg.workers):
            if shard in submissions:
                continue
            slots = {k[len(_SLOTS.format(shard)):]: v for k, v in tensors.items()
                     if k.startswith(_SLOTS.format(shard))}
            state = join_state(params, slots or _fresh_slots(loaded, plan))
            rows = torch.tensor(self.shards[shard])
            submissions[shard] = self.client.submit_training(
                self.program, [t.index_select(0, rows) for t in self.data],
                cfg.plan(index, shard), state=state, pay=cfg.pay,
                deadline=f"{int(cfg.round_timeout_s)}s", audit_bps=cfg.audit_bps)
            doc["in_flight"] = {"round": index, "funds_before": str(before),
                                "jobs": {str(s): sub.to_json()
                                         for s, sub in submissions.items()}}
            self._save(doc, tensors)  # posted jobs are remembered before any wait
        returned: list[dict[str, torch.Tensor]] = []
        worker_losses: list[float] = []
        skipped: dict[str, str] = {}
        jobs: list[int] = []
        for shard, submission in sorted(submissions.items()):
            self._report(index, len(returned), doc)
            left = cfg.round_timeout_s - (time.monotonic() - started)
            try:
                result = self.client.wait_training(submission, timeout_s=max(1.0, left))
            except MeshError as exc:
                skipped[str(shard)] = str(exc)
                doc.setdefault("to_reclaim", []).extend(submission.job_ids)
                continue
            finally:  # a shard re-posted after a slash is remembered by its new job
                doc["in_flight"]["jobs"][str(shard)] = submission.to_json()
                self._save(doc, tensors)
            new_params, new_slots = split_state(st_load(result.state))
            returned.append(new_params)
            worker_losses.append(result.losses[-1])
            jobs += result.job_ids
            prefix = _SLOTS.format(shard)
            for name, value in new_slots.items():
                tensors[prefix + name] = value
        if not returned:
            raise JobFailed(f"round {index}: no shard came back ({skipped}); the run is saved "
                            f"in {self.run_dir} and resumes from this round")
        momentum = {k[len(_MOMENTUM):]: v for k, v in tensors.items()
                    if k.startswith(_MOMENTUM)}
        new_params, new_momentum = outer_step(
            OuterOptimizer(cfg.outer_lr, cfg.outer_momentum), params, returned, momentum)
        tensors.update(new_params)
        tensors.update({_MOMENTUM + k: v for k, v in new_momentum.items()})
        loss = mean_loss(loaded, self.data, new_params, cfg.batch_size)
        report = RoundReport(index, loss, sum(worker_losses) / len(worker_losses), jobs,
                             skipped, before - self.client.funds())
        self._report(index + 1, len(returned), {**doc, "rounds": [*doc["rounds"],
                                                                 asdict(report)]})
        return report

    # ------------------------------------------------------------------ the folder
    def _load_or_start(self, loaded: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        path = self.run_dir / RUN_FILE
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("identity") != self.identity:
                raise BadInput(f"{self.run_dir} holds another training run (other program, data "
                               "or settings): give another folder, or remove it to start over")
            return doc, dict(st_load((self.run_dir / STATE_FILE).read_bytes()))
        plan = validate_plan(self.config.plan(0, 0))
        params, _ = split_state(initial_state(loaded, plan))
        doc = {"version": 1, "identity": self.identity, "rounds": [],
               "initial_loss": mean_loss(loaded, self.data, params, self.config.batch_size)}
        tensors = dict(params)
        self._save(doc, tensors)
        return doc, tensors

    def _save(self, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for name, data in ((STATE_FILE, state_bytes(tensors)),
                           (RUN_FILE, json.dumps(doc, indent=1).encode())):
            part = self.run_dir / (name + ".part")
            part.write_bytes(data)
            part.replace(self.run_dir / name)  # a crash leaves the old file whole

    def _draw(self, initial: float, rounds: list[RoundReport]) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            return None  # the `client` extra is not installed: the curve is in run.json
        figure, axes = pyplot.subplots(figsize=(6, 3.5), dpi=120)
        axes.plot(range(len(rounds) + 1), [initial] + [r.loss for r in rounds], marker="o",
                  label="global parameters, whole dataset")
        axes.plot(range(1, len(rounds) + 1), [r.worker_loss for r in rounds], marker=".",
                  linestyle="--", label="workers' last step (their shard)")
        axes.set_xlabel("round")
        axes.set_ylabel("loss")
        axes.legend()
        figure.tight_layout()
        path = self.run_dir / CURVE_FILE
        figure.savefig(path)
        pyplot.close(figure)
        return path

    # ------------------------------------------------------------------ helpers
    def _reclaim(self, doc: dict[str, Any]) -> None:
        """Take back the escrow of the shards left out, once their deadline has passed (tried
        at every round and at the end; one taken and committed meanwhile is paid as usual,
        and one the chain refuses now is tried again later)."""
        left = []
        for job_id in doc.get("to_reclaim", []):
            try:
                self.client.reclaim(int(job_id))
            except MeshError:
                left.append(job_id)
        doc["to_reclaim"] = left

    def _report(self, round_index: int, returned: int, doc: dict[str, Any]) -> None:
        if self.progress is None:
            return
        rounds = doc.get("rounds") or []
        self.progress({"round": round_index, "rounds": self.config.rounds,
                       "returned": returned, "shards": self.config.workers,
                       "loss": rounds[-1]["loss"] if rounds else doc.get("initial_loss"),
                       "spent_wei": sum(int(r["spent_wei"]) for r in rounds)})


def _fresh_slots(loaded: Any, plan: Any) -> dict[str, torch.Tensor]:
    return split_state(initial_state(loaded, plan))[1]
