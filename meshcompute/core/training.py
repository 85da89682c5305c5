"""Training jobs, the pure part: the plan a client asks for, and what everyone derives from it.

A training job trains the program's parameters (the program is the model's forward pass with
its loss, returning a scalar) for ``steps`` optimizer steps on a data shard, and returns the
final state, the loss of every step and a checkpoint every ``checkpoint_every`` steps. Nothing
here runs torch: the worker (:mod:`meshcompute.execution.training`) and the verifier derive
the same learning rates, the same batches and the same audit segments from the plan alone.

- :func:`validate_plan` -> :class:`TrainingPlan`: the optimizer comes from an allowlist (SGD
  with momentum, AdamW), its hyperparameters are data within bounds, the learning-rate
  schedule is constant or cosine with linear warm-up.
- :func:`learning_rate`: the rate of one step.
- :func:`batch_rows`: the rows of the shard one step trains on: an epoch-by-epoch shuffle
  from the plan's seed by a SHA-256 counter generator, so it is the same on every machine,
  Python and torch version.
- :func:`segments`, :func:`audit_segments`: the checkpoint segments, and the ones a drawn audit
  recomputes (always the last, whose end is the final state the client receives, plus others
  drawn from the audit's seed).
- :func:`manifest_bytes` / :func:`parse_manifest`: the worker's result is a manifest naming
  every checkpoint, the loss curve, the final state and each segment's step record by their
  sha256; the result hash the worker commits on chain is the manifest's, so no checkpoint can
  change after the commit.
- :func:`steps_bytes` / :func:`parse_steps`: a segment's step record, the sha256 of the state
  after each of its steps. The states themselves stay with the worker; it uploads those of a
  segment when it appeals that segment's failure, and the appeal judges them one step at a
  time (:func:`meshcompute.execution.training.check_links`), where drift cannot blur.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from meshcompute.errors import BadInput

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
MAX_STEPS = 1_000_000
MAX_BATCH = 1 << 16
#: Checkpoints a plan may ask for: each is a blob the worker uploads and the manifest names.
MAX_SEGMENTS = 1024
#: Steps between two checkpoints: a segment's step record names each step's state (about
#: 67 bytes a step), and an appeal may recompute each of them.
MAX_SEGMENT_STEPS = 10_000
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: name -> {hyperparameter: (default, low, high)}; booleans are (default, None, None).
_HYPER: dict[str, dict[str, tuple[Any, Any, Any]]] = {
    "sgd": {"lr": (None, 0.0, 10.0), "momentum": (0.0, 0.0, 0.999),
            "weight_decay": (0.0, 0.0, 1.0), "nesterov": (False, None, None)},
    "adamw": {"lr": (None, 0.0, 10.0), "beta1": (0.9, 0.0, 0.9999),
              "beta2": (0.999, 0.0, 0.999999), "eps": (1e-8, 1e-12, 1e-2),
              "weight_decay": (0.01, 0.0, 1.0)},
}


@dataclass(frozen=True)
class TrainingPlan:
    """What a training job asks for; :func:`validate_plan` builds it from JSON."""

    optimizer: str
    hyper: dict[str, Any]
    steps: int
    batch_size: int
    seed: int
    checkpoint_every: int
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    start_step: int = 0
    end_step: int = 0
    """The job runs steps ``[start_step, end_step)`` of a training of ``steps`` steps (a
    part of it, when the training is split into jobs run one after another): the learning
    rate, the batches and AdamW's step count are the whole training's; the job's initial
    state is the state after step ``start_step - 1``. ``end_step`` 0 (as built by
    :func:`validate_plan` when absent) means ``steps``."""

    @property
    def last(self) -> int:
        """The end of the job's steps (exclusive)."""
        return self.end_step or self.steps

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "optimizer": {"name": self.optimizer, **self.hyper},
            "schedule": {"kind": self.schedule, "warmup_steps": self.warmup_steps,
                         "min_lr_ratio": self.min_lr_ratio},
            "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
        }
        if self.start_step or self.last != self.steps:
            doc["part"] = [self.start_step, self.last]
        return doc

    def part(self, start_step: int, end_step: int) -> TrainingPlan:
        """Steps ``[start_step, end_step)`` of this plan as the plan of one job (a checkpoint
        at least at its end)."""
        every = max(1, min(self.checkpoint_every, end_step - start_step))
        return validate_plan({**self.to_json(), "part": [start_step, end_step],
                              "checkpoint_every": every})


def _integer(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"training plan: {key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadInput(f"training plan: {key} must be in [{low}, {high}], got {value}")
    return value


def _number(where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"training plan: {where} must be a finite number, got {value!r}")
    if not low <= float(value) <= high:
        raise BadInput(f"training plan: {where} must be in [{low:g}, {high:g}], got {value}")
    return float(value)


def _optimizer(doc: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(doc, dict) or doc.get("name") not in OPTIMIZERS:
        name = doc.get("name") if isinstance(doc, dict) else doc
        raise BadInput(f"training plan: optimizer {name!r} is not on the allowlist; choose one "
                       f"of {list(OPTIMIZERS)}")
    name = doc["name"]
    allowed = _HYPER[name]
    unknown = sorted(set(doc) - set(allowed) - {"name"})
    if unknown:
        raise BadInput(f"training plan: {name} has no hyperparameter {unknown[0]!r}; it takes "
                       f"{sorted(allowed)}")
    hyper: dict[str, Any] = {}
    for key, (default, low, high) in allowed.items():
        value = doc.get(key, default)
        if value is None:
            raise BadInput(f"training plan: {name} needs {key}")
        if low is None:
            if not isinstance(value, bool):
                raise BadInput(f"training plan: {name}.{key} must be true or false")
            hyper[key] = value
        else:
            hyper[key] = _number(f"{name}.{key}", value, low, high)
    if hyper["lr"] <= 0:
        raise BadInput(f"training plan: {name}.lr must be above 0")
    return name, hyper


def validate_plan(doc: Any) -> TrainingPlan:
    """The plan in ``doc`` (JSON), or :class:`BadInput` naming the first field that is wrong."""
    if not isinstance(doc, dict):
        raise BadInput("training plan must be a JSON object")
    known = {"optimizer", "schedule", "steps", "batch_size", "seed", "checkpoint_every", "part"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise BadInput(f"training plan: unknown field {unknown[0]!r}")
    name, hyper = _optimizer(doc.get("optimizer"))
    steps = _integer(doc, "steps", 1, MAX_STEPS)
    batch = _integer(doc, "batch_size", 1, MAX_BATCH)
    seed = _integer(doc, "seed", 0, (1 << 63) - 1)
    first, last = _part(doc.get("part", [0, steps]), steps)
    every = _integer(doc, "checkpoint_every", 1, min(last - first, MAX_SEGMENT_STEPS))
    count = -(-(last - first) // every)
    if count > MAX_SEGMENTS:
        raise BadInput(f"training plan: {last - first} steps with a checkpoint every {every} "
                       f"make {count} checkpoints; at most {MAX_SEGMENTS}")
    schedule = doc.get("schedule", {"kind": "constant"})
    if not isinstance(schedule, dict) or schedule.get("kind") not in SCHEDULES:
        raise BadInput(f"training plan: schedule must be one of {list(SCHEDULES)}, got "
                       f"{schedule!r}")
    extra = sorted(set(schedule) - {"kind", "warmup_steps", "min_lr_ratio"})
    if extra:
        raise BadInput(f"training plan: schedule has no field {extra[0]!r}")
    warmup = _integer({"schedule.warmup_steps": schedule.get("warmup_steps", 0)},
                      "schedule.warmup_steps", 0, steps)
    floor = _number("schedule.min_lr_ratio", schedule.get("min_lr_ratio", 0.0), 0.0, 1.0)
    return TrainingPlan(optimizer=name, hyper=hyper, steps=steps, batch_size=batch, seed=seed,
                        checkpoint_every=every, schedule=schedule["kind"], warmup_steps=warmup,
                        min_lr_ratio=floor, start_step=first,
                        end_step=0 if last == steps else last)


def _part(value: Any, steps: int) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise BadInput(f"training plan: part must be [first step, end step], got {value!r}")
    first, last = value
    if not 0 <= first < last <= steps:
        raise BadInput(f"training plan: part [{first}, {last}) is not within the {steps} steps")
    return first, last


def learning_rate(plan: TrainingPlan, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up over ``warmup_steps``,
    then constant, or cosine down to ``min_lr_ratio`` of the base rate at the last step."""
    base = float(plan.hyper["lr"])
    if step < plan.warmup_steps:
        return base * (step + 1) / plan.warmup_steps
    if plan.schedule == "constant":
        return base
    span = max(1, plan.steps - plan.warmup_steps - 1)
    progress = min(1.0, (step - plan.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * (plan.min_lr_ratio + (1.0 - plan.min_lr_ratio) * cosine)


def _stream(seed: int, epoch: int) -> Any:
    counter = 0
    while True:
        digest = hashlib.sha256(f"mesh-train:{seed}:{epoch}:{counter}".encode()).digest()
        counter += 1
        for i in range(0, 32, 8):
            yield int.from_bytes(digest[i:i + 8], "big")


def epoch_order(seed: int, epoch: int, rows: int) -> list[int]:
    """The shard's rows in the order epoch ``epoch`` visits them (Fisher-Yates, unbiased)."""
    order = list(range(rows))
    numbers = _stream(seed, epoch)
    for i in range(rows - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        value = next(numbers)
        while value >= limit:
            value = next(numbers)
        j = value % bound
        order[i], order[j] = order[j], order[i]
    return order


def batch_rows(plan: TrainingPlan, rows: int, step: int) -> list[int]:
    """The shard rows step ``step`` trains on: the next ``batch_size`` rows of the epoch
    stream (each epoch a fresh shuffle), so every row is seen once per epoch."""
    if rows < 1:
        raise BadInput("training data has no rows")
    start = step * plan.batch_size
    out: list[int] = []
    while len(out) < plan.batch_size:
        epoch, offset = divmod(start + len(out), rows)
        take = min(plan.batch_size - len(out), rows - offset)
        out += epoch_order(plan.seed, epoch, rows)[offset:offset + take]
    return out


def shard_rows(rows: int, shards: int, seed: int) -> list[list[int]]:
    """A dataset of ``rows`` rows split into ``shards`` disjoint shards of near-equal size
    (a shuffle by the seed, then contiguous runs): the data of each job of a training round."""
    if not 1 <= shards <= rows:
        raise BadInput(f"cannot split {rows} rows into {shards} shards")
    order = epoch_order(seed, 0, rows)
    cuts = [rows * i // shards for i in range(shards + 1)]
    return [sorted(order[cuts[i]:cuts[i + 1]]) for i in range(shards)]


def segments(plan: TrainingPlan) -> list[tuple[int, int]]:
    """The checkpoint segments ``(first step, end step)`` of the job's steps (its part of the
    plan): checkpoint ``i`` is the state after step ``end_i - 1``; the last segment may be
    shorter and ends with the final state."""
    every = plan.checkpoint_every
    return [(start, min(start + every, plan.last)) for start in range(plan.start_step, plan.last, every)]


def audit_segments(plan: TrainingPlan, seed: bytes, count: int) -> list[int]:
    """The segments a drawn audit recomputes: always the last (its end is what the client is
    given), plus ``count - 1`` others drawn from ``seed`` (the audit draw's, unknown to the
    worker when it commits), in increasing order."""
    total = len(segments(plan))
    chosen = {total - 1}
    counter = 0
    while len(chosen) < min(count, total):
        digest = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        chosen.add(int.from_bytes(digest[:8], "big") % total)
        counter += 1
    return sorted(chosen)


#: How a training audit compares the worker's checkpoint with the verifier's recomputation of
#: the segment before it, element by element (plus the verifier's own spread where its two
#: runs differ: :func:`meshcompute.execution.training.compare_states`). Chosen from
#: measurement: BENCHMARKS.md "Training verification".
DEFAULT_TRAINING_TOLERANCE = {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}
#: Segments a drawn audit recomputes: the last and one more drawn.
DEFAULT_AUDITED_SEGMENTS = 2

MANIFEST_KIND = "mesh-training-result"
#: A manifest names at most MAX_SEGMENTS checkpoints and step records: about 140 KB; anything
#: larger is not one.
MAX_MANIFEST_BYTES = 1 << 20


def _check_sha(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _SHA256_HEX.match(value):
        raise BadInput(f"training manifest: {name} must be a lowercase sha256 hex digest")


def manifest_bytes(*, plan_sha256: str, checkpoints: list[str], losses: str,
                   final_state: str, steps: list[str] | None) -> bytes:
    """The canonical manifest of a training result: the sha256 of each checkpoint (in order,
    the last is the final state), of the loss curve, of the final state and of each segment's
    step record (:func:`steps_bytes`; None: a manifest of a worker from before step records,
    still a valid result, whose appeal cannot be judged step by step). Its own sha256 is the
    result hash committed on chain."""
    for name, value in (("plan", plan_sha256), ("losses", losses), ("final_state", final_state),
                        *(("checkpoint", c) for c in checkpoints),
                        *(("step record", c) for c in steps or ())):
        _check_sha(name, value)
    if not checkpoints or checkpoints[-1] != final_state:
        raise BadInput("training manifest: the last checkpoint must be the final state")
    if steps is not None and len(steps) != len(checkpoints):
        raise BadInput("training manifest: one step record per checkpoint")
    doc: dict[str, Any] = {"kind": MANIFEST_KIND, "plan": plan_sha256,
                           "checkpoints": list(checkpoints), "losses": losses,
                           "final_state": final_state}
    if steps is not None:
        doc["steps"] = list(steps)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _canonical_json(data: bytes, limit: int, what: str) -> dict[str, Any]:
    if len(data) > limit:
        raise BadInput(f"{what} is {len(data)} bytes, over {limit}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{what} is not a JSON object")
    return doc


def parse_manifest(data: bytes, plan: TrainingPlan) -> dict[str, Any]:
    """A worker's manifest checked against ``plan`` (one checkpoint and, unless it is from a
    worker before step records, one step record per segment); BadInput otherwise. The bytes
    must be canonical, so one result has one hash."""
    doc = _canonical_json(data, MAX_MANIFEST_BYTES, "training manifest")
    if doc.get("kind") != MANIFEST_KIND:
        raise BadInput("training manifest: not a training result")
    checkpoints, steps = doc.get("checkpoints"), doc.get("steps")
    count = len(segments(plan))
    if not isinstance(checkpoints, list) or len(checkpoints) != count:
        raise BadInput(f"training manifest: expected {count} checkpoints")
    if steps is not None and (not isinstance(steps, list) or len(steps) != count):
        raise BadInput(f"training manifest: expected {count} step records")
    canonical = manifest_bytes(plan_sha256=doc.get("plan"), checkpoints=checkpoints,
                               losses=doc.get("losses"), final_state=doc.get("final_state"),
                               steps=steps)
    if canonical != data:
        raise BadInput("training manifest is not in canonical form")
    return doc


STEPS_KIND = "mesh-training-steps"
MAX_STEPS_BYTES = 70 * MAX_SEGMENT_STEPS + 1024


def steps_bytes(*, segment: int, first_step: int, states: list[str]) -> bytes:
    """The canonical step record of one segment: ``states[i]`` is the sha256 of the state
    after step ``first_step + i`` (the last is the segment's checkpoint)."""
    for value in states:
        _check_sha("step state", value)
    doc = {"kind": STEPS_KIND, "segment": segment, "first_step": first_step,
           "states": list(states)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_steps(data: bytes, plan: TrainingPlan, segment: int, checkpoint: str) -> list[str]:
    """The state hashes of segment ``segment``'s step record, checked against the plan (one
    per step) and the segment's checkpoint (the last one); BadInput otherwise."""
    doc = _canonical_json(data, MAX_STEPS_BYTES, "step record")
    bounds = segments(plan)
    if doc.get("kind") != STEPS_KIND or doc.get("segment") != segment \
            or not 0 <= segment < len(bounds):
        raise BadInput(f"not the step record of segment {segment}")
    start, end = bounds[segment]
    states = doc.get("states")
    if doc.get("first_step") != start or not isinstance(states, list) \
            or len(states) != end - start:
        raise BadInput(f"step record of segment {segment}: expected {end - start} states from "
                       f"step {start}")
    if steps_bytes(segment=segment, first_step=start, states=states) != data:
        raise BadInput(f"step record of segment {segment} is not in canonical form")
    if states[-1] != checkpoint:
        raise BadInput(f"step record of segment {segment}: its last state is not the "
                       "segment's checkpoint")
    return states


def plan_sha256(plan: TrainingPlan) -> str:
    return hashlib.sha256(json.dumps(plan.to_json(), sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()
