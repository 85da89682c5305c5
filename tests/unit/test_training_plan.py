"""The pure part of training jobs: the plan, its schedule, its batches, its segments and the
result manifest (meshcompute.core.training)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from meshcompute.core.training import (
    audit_segments,
    batch_rows,
    epoch_order,
    learning_rate,
    manifest_bytes,
    parse_manifest,
    parse_steps,
    segments,
    steps_bytes,
    validate_plan,
)
from meshcompute.errors import BadInput

PLAN = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "steps": 10,
        "batch_size": 4, "seed": 3, "checkpoint_every": 4}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_plan_takes_the_optimizer_defaults_and_round_trips() -> None:
    plan = validate_plan(PLAN)
    assert plan.hyper == {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
    assert validate_plan(plan.to_json()) == plan
    adamw = validate_plan({**PLAN, "optimizer": {"name": "adamw", "lr": 1e-3}})
    assert adamw.hyper["beta2"] == 0.999 and adamw.hyper["weight_decay"] == 0.01


@pytest.mark.parametrize(("change", "named"), [
    ({"optimizer": {"name": "lbfgs", "lr": 1}}, "not on the allowlist"),
    ({"optimizer": {"name": "sgd"}}, "sgd needs lr"),
    ({"optimizer": {"name": "sgd", "lr": 0}}, "lr must be above 0"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 1.5}}, "sgd.momentum must be in"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9]}}, "no hyperparameter 'betas'"),
    ({"optimizer": {"name": "sgd", "lr": float("nan")}}, "sgd.lr must be a finite number"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": 1}}, "nesterov must be true or false"),
    ({"steps": 0}, "steps must be in"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"checkpoint_every": 11}, "checkpoint_every must be in"),
    ({"schedule": {"kind": "step"}}, "schedule must be one of"),
    ({"schedule": {"kind": "cosine", "gamma": 1}}, "schedule has no field 'gamma'"),
    ({"code": "import os"}, "unknown field 'code'"),
    ({"steps": 5000, "checkpoint_every": 4}, "make 1250 checkpoints; at most 1024"),
])
def test_a_plan_outside_the_allowlist_is_refused_naming_the_field(change, named) -> None:
    with pytest.raises(BadInput, match=named):
        validate_plan({**PLAN, **change})


def test_the_schedule_warms_up_linearly_then_follows_the_cosine_to_its_floor() -> None:
    plan = validate_plan({**PLAN, "steps": 12, "schedule": {"kind": "cosine", "warmup_steps": 2,
                                                            "min_lr_ratio": 0.1}})
    rates = [learning_rate(plan, s) for s in range(12)]
    assert rates[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert rates[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))
    assert learning_rate(validate_plan(PLAN), 9) == 0.1


def test_batches_visit_every_row_once_an_epoch_and_are_the_same_everywhere() -> None:
    plan = validate_plan({**PLAN, "batch_size": 3})
    stream = [r for step in range(7) for r in batch_rows(plan, 10, step)]  # 2.1 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # each epoch its own shuffle
    # fixed by the algorithm (SHA-256 counter words, Fisher-Yates with rejection), not by this
    # Python's random: a second writing of that algorithm gives the same order
    words = [int.from_bytes(hashlib.sha256(f"mesh-train:3:0:{c}".encode()).digest()[i:i + 8],
                            "big") for c in range(4) for i in range(0, 32, 8)]
    order = list(range(10))
    for i in range(9, 0, -1):
        word = words.pop(0)
        while word >= (1 << 64) - (1 << 64) % (i + 1):
            word = words.pop(0)
        j = word % (i + 1)
        order[i], order[j] = order[j], order[i]
    assert epoch_order(3, 0, 10) == order
    assert batch_rows(plan, 10, 1) == batch_rows(plan, 10, 1)
    with pytest.raises(BadInput, match="no rows"):
        batch_rows(plan, 0, 0)


def test_segments_end_at_the_checkpoints_and_the_last_is_always_audited() -> None:
    plan = validate_plan(PLAN)
    assert segments(plan) == [(0, 4), (4, 8), (8, 10)]
    for seed in (b"a", b"b", b"c"):
        chosen = audit_segments(plan, seed, 2)
        assert chosen[-1] == 2 and len(chosen) == 2 and chosen == sorted(set(chosen))
    assert audit_segments(plan, b"a", 9) == [0, 1, 2]
    drawn = {tuple(audit_segments(validate_plan({**PLAN, "steps": 40}), bytes([i]), 2))
             for i in range(30)}
    assert len(drawn) > 3  # the other segment depends on the seed


def test_the_manifest_binds_every_checkpoint_and_has_one_form() -> None:
    plan = validate_plan(PLAN)
    checkpoints = [_sha("c0"), _sha("c1"), _sha("final")]
    steps = [_sha("s0"), _sha("s1"), _sha("s2")]
    data = manifest_bytes(plan_sha256=_sha("plan"), checkpoints=checkpoints,
                          losses=_sha("losses"), final_state=_sha("final"), steps=steps)
    assert parse_manifest(data, plan)["checkpoints"] == checkpoints
    assert parse_manifest(data, plan)["steps"] == steps
    with pytest.raises(BadInput, match="canonical"):
        parse_manifest(data.replace(b",", b", ", 1), plan)
    with pytest.raises(BadInput, match="expected 3 checkpoints"):
        parse_manifest(manifest_bytes(plan_sha256=_sha("plan"), checkpoints=checkpoints[1:],
                                      losses=_sha("l"), final_state=_sha("final"),
                                      steps=steps[1:]), plan)
    # a manifest from a worker before step records is still a result (its appeal cannot be
    # judged step by step)
    older = manifest_bytes(plan_sha256=_sha("plan"), checkpoints=checkpoints,
                           losses=_sha("losses"), final_state=_sha("final"), steps=None)
    assert b"steps" not in older and "steps" not in parse_manifest(older, plan)
    with pytest.raises(BadInput, match="one step record per checkpoint"):
        manifest_bytes(plan_sha256=_sha("plan"), checkpoints=checkpoints, losses=_sha("l"),
                       final_state=_sha("final"), steps=steps[1:])
    with pytest.raises(BadInput, match="last checkpoint must be the final state"):
        manifest_bytes(plan_sha256=_sha("plan"), checkpoints=checkpoints, losses=_sha("l"),
                       final_state=_sha("other"), steps=steps)
    with pytest.raises(BadInput, match="over 1048576"):
        parse_manifest(b" " * (1 << 20) + data, plan)  # not read as JSON at all
    with pytest.raises(BadInput, match="sha256"):
        manifest_bytes(plan_sha256="x", checkpoints=checkpoints, losses=_sha("l"),
                       final_state=_sha("final"), steps=steps)


def test_a_step_record_names_one_state_per_step_and_ends_at_the_checkpoint() -> None:
    plan = validate_plan(PLAN)  # 10 steps, a checkpoint every 4: segments 0-4, 4-8, 8-10
    states = [_sha(f"after {i}") for i in range(4, 8)]
    data = steps_bytes(segment=1, first_step=4, states=states)
    assert parse_steps(data, plan, 1, states[-1]) == states
    with pytest.raises(BadInput, match="last state is not the segment's checkpoint"):
        parse_steps(data, plan, 1, _sha("another checkpoint"))
    with pytest.raises(BadInput, match="not the step record of segment 2"):
        parse_steps(data, plan, 2, states[-1])
    with pytest.raises(BadInput, match="expected 4 states from step 4"):
        parse_steps(steps_bytes(segment=1, first_step=4, states=states[1:]), plan, 1,
                    states[-1])
    with pytest.raises(BadInput, match="canonical"):
        parse_steps(data.replace(b",", b", ", 1), plan, 1, states[-1])
    with pytest.raises(BadInput, match="not JSON"):
        parse_steps(b"\xff", plan, 1, states[-1])
    with pytest.raises(BadInput, match="checkpoint_every must be in"):
        validate_plan({**PLAN, "steps": 20_000, "checkpoint_every": 10_001})


def test_a_part_of_a_plan_keeps_the_whole_runs_schedule_and_checkpoints_at_its_steps() -> None:
    plan = validate_plan({**PLAN, "schedule": {"kind": "cosine", "warmup_steps": 2}})
    part = plan.part(4, 8)
    assert (part.start_step, part.last, part.steps) == (4, 8, 10)
    assert segments(part) == [(4, 8)] and segments(plan.part(8, 10)) == [(8, 10)]
    assert [learning_rate(part, s) for s in range(4, 8)] == \
        [learning_rate(plan, s) for s in range(4, 8)]
    assert validate_plan(part.to_json()) == part
    assert plan.part(0, 10) == plan and "part" not in plan.to_json()
    with pytest.raises(BadInput, match="part \\[8, 12\\) is not within the 10 steps"):
        plan.part(8, 12)
    with pytest.raises(BadInput, match="part must be \\[first step, end step\\]"):
        validate_plan({**PLAN, "part": [1]})
