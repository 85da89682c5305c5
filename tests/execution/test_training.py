"""Training over a loaded program (meshcompute.execution.training): the update rules against
torch's own optimizers, resuming from a checkpoint, bad input, divergence, and the segment
check that audits use (an honest segment passes, a tampered one is caught)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from torch import nn

from meshcompute.core.training import DEFAULT_TRAINING_TOLERANCE, validate_plan
from meshcompute.errors import BadInput
from meshcompute.execution.loader import load_program
from meshcompute.execution.programs import export_program
from meshcompute.execution.training import (
    check_links,
    check_segment,
    compare_states,
    initial_state,
    links_in_process,
    load_state,
    run_steps,
    state_bytes,
)
from meshcompute.mesh.models import MLPClassifier


def Regression() -> nn.Module:
    return MLPClassifier(d_in=6, d_hidden=8, d_out=3, depth=2)


class NotScalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _data(rows: int = 24) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(rows, 6, generator=gen), torch.randint(0, 3, (rows,), generator=gen)]


def small_program() -> bytes:
    """The small MLP with its loss these tests train (also tests/execution/test_training_
    device.py)."""
    torch.manual_seed(0)
    return export_program(Regression().train(), tuple(t[:4] for t in _data()))


@pytest.fixture(scope="module")
def program() -> bytes:
    return small_program()


def _plan(optimizer: dict, steps: int = 6, every: int = 2) -> object:
    return validate_plan({"optimizer": optimizer, "steps": steps, "batch_size": 4, "seed": 1,
                          "checkpoint_every": every})


@pytest.mark.parametrize(("ours", "theirs"), [
    ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ({"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False)),
])
def test_the_update_rules_are_torchs_optimizers(program: bytes, ours: dict, theirs) -> None:
    plan = _plan(ours)
    data = _data()
    run = run_steps(program, data, plan)
    # the same steps with torch's optimizer on an eager copy of the model
    from meshcompute.core.training import batch_rows

    torch.manual_seed(0)
    model = Regression().train()
    optimizer = theirs(list(model.parameters()))
    for step in range(plan.steps):
        index = torch.tensor(batch_rows(plan, 24, step))
        optimizer.zero_grad()
        model(*(t[index] for t in data)).backward()
        optimizer.step()
    final = st_load(run.final_state)
    for name, param in model.named_parameters():
        torch.testing.assert_close(final["param." + name], param.detach(), rtol=1e-5, atol=1e-6)
    assert len(run.losses) == 6 and len(run.checkpoints) == 3 and run.diverged_at is None


def test_a_run_resumed_from_a_checkpoint_is_the_run_itself(program: bytes) -> None:
    plan = _plan({"name": "adamw", "lr": 0.01})
    whole = run_steps(program, _data(), plan)
    tail = run_steps(program, _data(), plan, whole.checkpoints[0], start=2)
    assert tail.checkpoints == whole.checkpoints[1:]  # bit for bit
    assert tail.losses == whole.losses[2:]
    again = run_steps(program, _data(), plan)  # the loaded program is not changed by a run
    assert again.checkpoints == whole.checkpoints


def test_the_step_record_names_the_state_after_every_step_and_a_run_resumes_from_any(
        program: bytes) -> None:
    import hashlib

    plan = _plan({"name": "adamw", "lr": 0.01})
    whole = run_steps(program, _data(), plan, record="states")
    assert len(whole.step_hashes) == len(whole.step_states) == 6
    assert whole.step_hashes == [hashlib.sha256(s).hexdigest() for s in whole.step_states]
    assert whole.step_states[1::2] == whole.checkpoints  # the checkpoints are steps 1, 3, 5
    assert run_steps(program, _data(), plan).checkpoints == whole.checkpoints
    tail = run_steps(program, _data(), plan, whole.step_states[2], start=3, record="hashes")
    assert tail.step_hashes == whole.step_hashes[3:] and tail.step_states == []
    assert tail.checkpoints == whole.checkpoints[1:]


def test_a_training_run_in_parts_is_the_whole_run_bit_for_bit(program: bytes) -> None:
    plan = validate_plan({"optimizer": {"name": "adamw", "lr": 0.01},
                          "schedule": {"kind": "cosine", "warmup_steps": 2}, "steps": 9,
                          "batch_size": 4, "seed": 1, "checkpoint_every": 3})
    whole = run_steps(program, _data(), plan)
    state, losses = None, []
    for start, end in ((0, 3), (3, 6), (6, 9)):
        part = run_steps(program, _data(), plan.part(start, end), state)
        state, losses = part.final_state, losses + part.losses
    assert state == whole.final_state and losses == whole.losses


def test_a_segment_judged_step_by_step_passes_an_honest_chain_and_names_the_forged_step(
        program: bytes) -> None:
    plan = _plan({"name": "adamw", "lr": 0.01}, steps=8, every=8)
    data = _data()
    links_run = links_in_process(program, data, plan)
    honest = run_steps(program, data, plan, micro_batches=2, record="states")  # another way
    links = check_links([None, *honest.step_states], 0, DEFAULT_TRAINING_TOLERANCE, links_run)
    assert links.agree and links.step is None and links.steps_run >= 8, links.reason
    # the worker skipped step 3 (its state after step 3 is the one after step 2) and ran the
    # rest honestly from there: every later step follows, step 3 alone does not
    forged = honest.step_states[:3] + [honest.step_states[2]]
    forged += run_steps(program, data, plan, honest.step_states[2], start=4,
                        record="states").step_states
    links = check_links([None, *forged], 0, DEFAULT_TRAINING_TOLERANCE, links_run)
    assert not links.agree and links.step == 3, links.reason
    assert "step 3 does not follow from the worker's own state" in links.reason
    # the segment started mid-run: the first state is the worker's checkpoint before it
    links = check_links(honest.step_states[3:], 4, DEFAULT_TRAINING_TOLERANCE, links_run)
    assert links.agree, links.reason


def test_bad_training_input_is_refused_with_what_was_wrong(program: bytes) -> None:
    plan = _plan({"name": "sgd", "lr": 0.1, "momentum": 0.9})
    loaded = load_program(program)
    with pytest.raises(BadInput, match="are not steps of the job"):
        run_steps(loaded, _data(), plan, start=6)
    with pytest.raises(BadInput, match="record must be"):
        run_steps(loaded, _data(), plan, record="everything")
    with pytest.raises(BadInput, match="share their first dimension"):
        run_steps(loaded, [torch.zeros(5, 6), torch.zeros(4, dtype=torch.long)], plan)
    state = initial_state(loaded, plan)
    state["param.net.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(BadInput, match="param.net.0.weight is torch.float32\\[2, 2\\]"):
        load_state(state_bytes(state), loaded, plan)
    del state["param.net.0.weight"]
    with pytest.raises(BadInput, match="missing \\['param.net.0.weight'\\]"):
        load_state(state_bytes(state), loaded, plan)
    with pytest.raises(BadInput, match="not a safetensors file"):
        load_state(b"junk", loaded, plan)
    torch.manual_seed(0)
    vector = export_program(NotScalar(), tuple(t[:4] for t in _data()))
    with pytest.raises(BadInput, match="one floating scalar; this one returned \\[4, 3\\]"):
        run_steps(vector, _data(), plan)


def test_a_loss_that_stops_being_finite_ends_the_run_at_that_step(program: bytes) -> None:
    from meshcompute.core.training import batch_rows

    plan = _plan({"name": "sgd", "lr": 0.1}, steps=12)
    data = _data()
    data[0][17, 2] = float("inf")  # one bad row: the step whose batch holds it diverges
    first = next(s for s in range(12) if 17 in batch_rows(plan, 24, s))
    run = run_steps(program, data, plan)
    assert run.diverged_at == first and len(run.losses) == first + 1
    assert len(run.checkpoints) == first // 2  # nothing past the step that diverged


def test_an_honest_segment_passes_and_a_tampered_one_is_caught_at_its_first_step(
        program: bytes) -> None:
    plan = _plan({"name": "sgd", "lr": 0.1, "momentum": 0.9})
    data = _data()
    honest = run_steps(program, data, plan, micro_batches=2)  # computed another way
    check = check_segment(program, data, plan, 1, honest.checkpoints[0],
                          honest.checkpoints[1], honest.losses, DEFAULT_TRAINING_TOLERANCE)
    assert check.agree and check.used < 1.0 and check.first_bad_step is None
    # the worker skipped step 3 of the segment [2, 4): claims the state after step 2
    short = run_steps(program, data, plan, honest.checkpoints[0], start=2, end=3)
    losses = honest.losses[:3] + [honest.losses[2] * 0.5] + honest.losses[4:]
    caught = check_segment(program, data, plan, 1, honest.checkpoints[0], short.last_state,
                           losses, DEFAULT_TRAINING_TOLERANCE)
    assert not caught.agree and caught.first_bad_step == 3 and caught.steps_run == 4
    assert "times its allowance" in caught.reason


def test_checkpoints_with_other_tensors_or_junk_disagree(program: bytes) -> None:
    plan = _plan({"name": "sgd", "lr": 0.1})
    run = run_steps(program, _data(), plan)
    state = st_load(run.final_state)
    assert not compare_states(run.final_state, b"junk", DEFAULT_TRAINING_TOLERANCE).agree
    renamed = {("x" + k): v for k, v in state.items()}
    assert not compare_states(run.final_state, state_bytes(renamed),
                              DEFAULT_TRAINING_TOLERANCE).agree
    state["param.net.0.bias"][0] = float("nan")
    verdict = compare_states(run.final_state, state_bytes(state), DEFAULT_TRAINING_TOLERANCE)
    assert not verdict.agree and "not finite" in verdict.reason


# ------------------------------------------------------------- the same, in the job sandbox

LIMITS = {"time_limit_s": 120.0, "memory_limit_mb": 1024, "max_output_bytes": 1 << 24}


def _shard() -> bytes:
    from meshcompute.execution.programs import save_tensors

    return save_tensors(_data())


def test_a_sandboxed_training_run_is_the_in_process_run_bit_for_bit(
        requires_sandbox: None, program: bytes) -> None:
    from meshcompute.execution.train_runner import run_training_job

    plan = _plan({"name": "adamw", "lr": 0.01})
    here = run_steps(program, _data(), plan)
    there = run_training_job(program, _shard(), plan.to_json(), **LIMITS)
    assert there.ok, there.reason
    assert there.checkpoints == here.checkpoints and there.losses == here.losses
    # a verifier's segment: from the worker's checkpoint, only that segment's steps
    segment = run_training_job(program, _shard(), plan.to_json(), here.checkpoints[0], start=2,
                               end=4, **LIMITS)
    assert segment.ok and segment.checkpoints == [here.checkpoints[1]]
    assert segment.losses == here.losses[2:4]
    # an appeal's steps, each alone from a state, in one process
    steps = run_steps(program, _data(), plan, record="states").step_states
    links = run_training_job(program, _shard(), plan.to_json(),
                             links=[(None, 0), (steps[2], 3), (steps[4], 5)], **LIMITS)
    assert links.ok, links.reason
    assert links.link_states == [steps[0], steps[3], steps[5]]


def test_a_sandboxed_training_run_reports_what_went_wrong(requires_sandbox: None,
                                                         program: bytes) -> None:
    from meshcompute.execution.programs import save_tensors
    from meshcompute.execution.train_runner import run_training_job

    plan = _plan({"name": "sgd", "lr": 0.1}).to_json()
    with pytest.raises(BadInput, match="not on the allowlist"):
        run_training_job(program, _shard(), {**plan, "optimizer": {"name": "lion", "lr": 1}},
                         **LIMITS)
    refused = run_training_job(program, save_tensors([torch.zeros(4, 5),
                                                      torch.zeros(4, dtype=torch.long)]),
                               plan, **LIMITS)
    assert not refused.ok and "training data does not fit the program" in (refused.reason or "")
    assert "float32[4, 5]" in (refused.reason or "")
    wrong_state = run_training_job(program, _shard(), plan, b"junk", **LIMITS)
    assert not wrong_state.ok and "not a safetensors file" in (wrong_state.reason or "")
    tiny = run_training_job(program, _shard(), plan, **{**LIMITS, "max_output_bytes": 100})
    assert not tiny.ok and "output limit" in (tiny.reason or "")
    slow = run_training_job(program, _shard(), {**plan, "steps": 200_000,
                                                "checkpoint_every": 10_000},
                            **{**LIMITS, "time_limit_s": 3.0})
    assert not slow.ok and "time limit of 3 s" in (slow.reason or "")
    bad = _data()
    bad[0][5, 0] = float("nan")
    diverged = run_training_job(program, save_tensors(bad), {**plan, "steps": 12}, **LIMITS)
    assert diverged.ok and diverged.diverged_at is not None


def test_a_step_chain_with_an_impossible_state_or_drift_added_step_by_step_fails(
        program: bytes) -> None:
    # an attacker's chains: a second moment a little below zero (the next step's square root
    # would be NaN: our run could not judge it), and every state moved by 0.9 of the whole
    # tolerance (a step within it, the sum of them far outside)
    plan = _plan({"name": "adamw", "lr": 0.01}, steps=8, every=8)
    data = _data()
    links_run = links_in_process(program, data, plan)
    honest = run_steps(program, data, plan, record="states").step_states
    bad = st_load(honest[2])
    name = next(k for k in sorted(bad) if k.endswith(".exp_avg_sq"))
    bad[name] = bad[name] - 2 * bad[name].abs().max() - 1e-12
    chain = [None, *honest[:2], state_bytes(bad), *honest[3:]]
    links = check_links(chain, 0, DEFAULT_TRAINING_TOLERANCE, links_run)
    assert not links.agree and links.step == 2 and links.unjudgeable is None
    assert "a second moment cannot be negative" in links.reason
    drifted: list[bytes | None] = [None]
    rtol = DEFAULT_TRAINING_TOLERANCE["rtol"]
    for step in range(8):
        ours = st_load(links_run([drifted[-1]], [step], False)[0])
        drifted.append(state_bytes({k: v * (1 + 0.9 * rtol) if k.startswith("param.") else v
                                    for k, v in ours.items()}))
    links = check_links(drifted, 0, DEFAULT_TRAINING_TOLERANCE, links_run)
    assert not links.agree and links.step == 0, links.reason


def test_a_training_run_killed_half_way_keeps_its_finished_checkpoints(
        requires_sandbox: None, program: bytes, tmp_path) -> None:
    """The job process writes each checkpoint as it reaches it (then progress.json): a run
    killed mid-way (a worker handing back a job frozen for its owner) still gives the
    checkpoints, losses and step hashes of its finished segments, equal to a clean run's."""
    import json
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    from meshcompute.execution.train_runner import run_training_job

    plan = _plan({"name": "adamw", "lr": 0.01}, steps=200_000, every=500)
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(run_training_job(
        program, _shard(), plan.to_json(), record="hashes", scratch_root=tmp_path,
        **{**LIMITS, "max_output_bytes": 1 << 26})))
    runner.start()
    give_up = time.monotonic() + 120
    progress: list[Path] = []
    while not progress and time.monotonic() < give_up and runner.is_alive():
        progress = [p for p in tmp_path.glob("mesh-train-*/box/progress.json")
                    if json.loads(p.read_text())["checkpoints"] >= 2]
        time.sleep(0.05)
    assert progress, "the run wrote no progress"
    box = str(progress[0].parent)
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if box.encode() in line:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
            break
    runner.join(60)
    (killed,) = outcome
    assert not killed.ok and "killed" in (killed.reason or "")
    count = len(killed.checkpoints)
    assert count >= 2 and len(killed.losses) == len(killed.step_hashes) == 500 * count
    clean = run_steps(program, _data(), plan, start=0, end=500 * count, record="hashes")
    assert killed.checkpoints == clean.checkpoints
    assert killed.losses == clean.losses and killed.step_hashes == clean.step_hashes


def test_a_training_run_asked_to_stop_keeps_every_step_it_did(
        requires_sandbox: None, program: bytes) -> None:
    """``stop`` (a worker handing a frozen job back) ends the run after the step under way:
    every step's loss and hash up to there, and the state there, equal to a clean run's."""
    import threading

    from meshcompute.execution.train_runner import run_training_job

    plan = _plan({"name": "adamw", "lr": 0.01}, steps=200_000, every=10_000)
    stop = threading.Event()
    stop.set()  # at once: it stops after its first steps
    stopped = run_training_job(program, _shard(), plan.to_json(), record="hashes", stop=stop,
                               **LIMITS)
    assert not stopped.ok and stopped.stopped_at is not None, stopped.reason
    done = stopped.stopped_at
    assert 1 <= done < 10_000 and not stopped.checkpoints
    assert len(stopped.losses) == len(stopped.step_hashes) == done
    clean = run_steps(program, _data(), plan, start=0, end=done, record="hashes")
    assert stopped.last_state == clean.last_state
    assert stopped.losses == clean.losses and stopped.step_hashes == clean.step_hashes


def test_an_error_of_the_runner_after_starting_the_job_leaves_no_job_running(
        requires_sandbox: None, program: bytes, tmp_path) -> None:
    """Whatever goes wrong in the runner once the job process runs, it is killed, not left
    training behind the error."""
    import os
    import signal
    import time

    from meshcompute.execution.train_runner import run_training_job

    started: list[int] = []

    def broken(pid: int) -> None:
        started.append(pid)
        time.sleep(3.0)  # the job is under way
        raise RuntimeError("the caller's bug")

    plan = _plan({"name": "adamw", "lr": 0.01}, steps=200_000, every=10_000)
    with pytest.raises(RuntimeError, match="the caller's bug"):
        run_training_job(program, _shard(), plan.to_json(), on_start=broken,
                         scratch_root=tmp_path, **LIMITS)
    try:
        os.killpg(started[0], 0)
    except ProcessLookupError:
        return  # its whole process group is gone
    os.killpg(started[0], signal.SIGKILL)
    pytest.fail("the job's processes outlived the runner's error")
