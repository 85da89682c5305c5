"""Training jobs, the torch part: run a plan's steps over a loaded program, and check a segment.

The program is validated and loaded exactly as an inference program
(:func:`meshcompute.execution.loader.load_program`: strict schema, operator allowlist, no
pickle); it takes a batch's tensors and returns a floating scalar, the loss. Gradients come
from torch's autograd over the rebuilt graph; the update rules of the allowlisted optimizers
are written out here (so their state has a fixed layout, the same on every torch version):

- ``sgd``: ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` and
  ``g = buf`` (``g + momentum * buf`` with Nesterov); ``p -= lr * g``.
- ``adamw``: ``p *= 1 - lr * weight_decay``; ``m``, ``v`` the moving moments;
  ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections of global step ``t``.

A state is a safetensors file: ``param.<name>`` for every parameter and ``opt.<name>.<slot>``
for the optimizer's slots (``momentum``; ``exp_avg``, ``exp_avg_sq``). A checkpoint is the
state after a segment's last step.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from meshcompute.core.training import TrainingPlan, batch_rows, learning_rate, segments
from meshcompute.errors import BadInput
from meshcompute.execution.loader import LoadedProgram, check_inputs, load_program

PARAM = "param."
OPT = "opt."
SLOTS = {"sgd": ("momentum",), "adamw": ("exp_avg", "exp_avg_sq")}


@dataclass
class TrainingRun:
    """What running steps ``[start, end)`` gave: the loss of each step, and a checkpoint at each
    segment end reached. ``diverged_at`` is the first step whose loss was not finite (the run
    stops there: the job's outcome, not the worker's fault)."""

    start: int
    losses: list[float] = field(default_factory=list)
    checkpoints: list[bytes] = field(default_factory=list)
    diverged_at: int | None = None
    last_state: bytes = b""
    """The state after the last step run (a checkpoint when that step ends a segment)."""
    step_hashes: list[str] = field(default_factory=list)
    """With ``record``: the sha256 of the state after each step run (a segment's step record,
    :func:`meshcompute.core.training.steps_bytes`)."""
    step_states: list[bytes] = field(default_factory=list)
    """With ``record="states"``: the state after each step run."""
    stopped_at: int | None = None
    """Stopped on request (``should_stop``) after step ``stopped_at - 1``: ``last_state`` is
    the state there."""

    @property
    def final_state(self) -> bytes:
        return self.checkpoints[-1]


def _slots(plan: TrainingPlan) -> tuple[str, ...]:
    if plan.optimizer == "sgd" and float(plan.hyper["momentum"]) == 0.0:
        return ()
    return SLOTS[plan.optimizer]


def initial_state(program: LoadedProgram, plan: TrainingPlan) -> dict[str, torch.Tensor]:
    """The program's own parameters and zeroed optimizer slots: the state of step 0."""
    state = {}
    for name, param in program.module.named_parameters():
        state[PARAM + name] = param.detach().clone()
        for slot in _slots(plan):
            state[f"{OPT}{name}.{slot}"] = torch.zeros_like(param)
    return state


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().contiguous().cpu() for k, v in sorted(state.items())})


def load_state(data: bytes, program: LoadedProgram, plan: TrainingPlan) -> dict[str, torch.Tensor]:
    """A state's tensors, checked against the program's parameters and the optimizer's slots
    (exactly those names, shapes and float32); :class:`BadInput` naming what is wrong."""
    try:
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad bytes
        raise BadInput(f"training state is not a safetensors file: {exc}") from None
    expected = initial_state(program, plan)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise BadInput(f"training state does not fit the program and optimizer: missing "
                       f"{missing[:3]}, unexpected {extra[:3]}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise BadInput(f"training state: {name} is {got.dtype}{list(got.shape)}, the "
                           f"program needs {want.dtype}{list(want.shape)}")
    problem = state_problem(tensors)
    if problem is not None:
        raise BadInput(f"training state: {problem}")
    return tensors


def state_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What makes a state one no honest run can be in: a value that is not finite, or a
    negative second moment (AdamW's ``exp_avg_sq`` is a running mean of squares), which would
    turn the next step's square root into NaN; None when it is sound."""
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds a value that is not finite"
        if name.endswith(".exp_avg_sq") and bool((tensor < 0).any()):
            return f"{name} holds a negative value (a second moment cannot be negative)"
    return None


def check_data(data: Sequence[torch.Tensor]) -> int:
    """The number of rows of a data shard (every tensor has the same first dimension)."""
    if not data:
        raise BadInput("training data has no tensors")
    rows = {int(t.shape[0]) if t.dim() else -1 for t in data}
    if len(rows) != 1 or -1 in rows:
        raise BadInput(f"training data tensors must share their first dimension (rows), got "
                       f"{[list(t.shape) for t in data]}")
    return rows.pop()


def _update(plan: TrainingPlan, step: int, lr: float, param: torch.Tensor, grad: torch.Tensor,
            slots: dict[str, torch.Tensor]) -> None:
    h = plan.hyper
    if plan.optimizer == "sgd":
        g = grad + float(h["weight_decay"]) * param if h["weight_decay"] else grad
        if slots:
            buf = slots["momentum"]
            buf.mul_(float(h["momentum"])).add_(g)
            g = g + float(h["momentum"]) * buf if h["nesterov"] else buf
        param.sub_(lr * g)
        return
    beta1, beta2, t = float(h["beta1"]), float(h["beta2"]), step + 1
    param.mul_(1.0 - lr * float(h["weight_decay"]))
    m, v = slots["exp_avg"], slots["exp_avg_sq"]
    m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    m_hat = m / (1.0 - beta1 ** t)
    v_hat = v / (1.0 - beta2 ** t)
    param.sub_(lr * m_hat / (v_hat.sqrt() + float(h["eps"])))


def run_steps(program: bytes | LoadedProgram, data: Sequence[torch.Tensor], plan: TrainingPlan,
              state: dict[str, torch.Tensor] | bytes | None = None, *, start: int | None = None,
              end: int | None = None, micro_batches: int = 1,
              record: str | None = None, device: str = "cpu",
              on_checkpoint: Callable[[TrainingRun], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> TrainingRun:
    """Run steps ``[start, end)`` of ``plan`` (by default the job's: its part of the plan)
    from ``state`` (the program's own parameters when None; a state's bytes are checked by :func:`load_state`), ``state`` being the state
    after step ``start - 1``; a checkpoint is taken at each segment end. ``record="hashes"``
    keeps the sha256 of the state after every step, ``"states"`` the states too.
    ``on_checkpoint`` is called with the run so far each time a checkpoint is taken (the job
    process writes it out then, so a run stopped half way keeps its finished segments).
    ``should_stop`` is asked after each step (with ``record`` set): when it says so the run
    ends there, ``stopped_at`` the next step and ``last_state`` the state (a job handed back
    keeps every step it finished).

    ``micro_batches`` > 1 splits each batch into that many equal parts and averages their
    gradients (gradient accumulation, for a worker short of memory): the same step for a loss
    that is a mean over rows, up to rounding.

    ``device`` (``"cpu"`` or ``"cuda"``) is where the steps run: the data, the batches' row
    indices, the parameters and the optimizer's slots live there, the graph runs from a copy of
    the loaded module moved there (the loaded program itself stays on the CPU), and every state
    is serialized from a CPU copy: the same safetensors a CPU run writes."""
    loaded = program if isinstance(program, LoadedProgram) else load_program(program)
    start = plan.start_step if start is None else start
    end = plan.last if end is None else end
    bounds = segments(plan)
    if not plan.start_step <= start < end <= plan.last:
        raise BadInput(f"training: steps [{start}, {end}) are not steps of the job "
                       f"([{plan.start_step}, {plan.last}))")
    if record not in (None, "hashes", "states"):
        raise BadInput(f"training: record must be 'hashes' or 'states', not {record!r}")
    rows = check_data(data)
    try:
        check_inputs(loaded.inputs, [t[: plan.batch_size] for t in data])
    except BadInput as exc:
        raise BadInput(f"training data does not fit the program: {exc}") from None
    if isinstance(state, bytes):
        state = load_state(state, loaded, plan)
    state = {k: v.to(device).clone() for k, v in (state or initial_state(loaded, plan)).items()}
    data = [t.to(device) for t in data]
    module = module_on(loaded.module, device)
    # the run's own parameter tensors, passed to the graph by torch.func.functional_call: the
    # loaded module keeps the program's parameters (the initial state of the next run)
    names = [name for name, _ in module.named_parameters()]
    named = {name: state[PARAM + name].clone().requires_grad_(True) for name in names}
    params = list(named.values())
    slot_names = _slots(plan)
    ends = {e for _, e in bounds}
    run = TrainingRun(start=start)
    for step in range(start, end):
        index = torch.tensor(batch_rows(plan, rows, step), dtype=torch.long, device=device)
        if plan.batch_size % micro_batches:
            raise BadInput(f"batch size {plan.batch_size} does not split into {micro_batches}")
        losses, grads = [], None
        for part in index.chunk(micro_batches):
            loss = _loss(module, named, [t.index_select(0, part) for t in data])
            losses.append(loss.detach())
            if not torch.isfinite(loss.detach()):
                break
            part_grads = torch.autograd.grad(loss, params)
            grads = part_grads if grads is None else [a + b for a, b in zip(grads, part_grads,
                                                                            strict=True)]
        mean = torch.stack(losses).mean() if len(losses) == micro_batches else losses[-1]
        run.losses.append(float(mean))
        if grads is None or not torch.isfinite(mean):
            run.diverged_at = step
            return run
        if micro_batches > 1:
            grads = [g / micro_batches for g in grads]
        lr = learning_rate(plan, step)
        with torch.no_grad():
            for (name, param), grad in zip(named.items(), grads, strict=True):
                slots = {s: state[f"{OPT}{name}.{s}"] for s in slot_names}
                _update(plan, step, lr, param, grad, slots)
        if record is not None or step + 1 in ends or step + 1 == end:
            for name, param in named.items():
                state[PARAM + name] = param.detach().clone()
            run.last_state = state_bytes(state)
            if step + 1 in ends:
                run.checkpoints.append(run.last_state)
            if record is not None:
                run.step_hashes.append(hashlib.sha256(run.last_state).hexdigest())
                if record == "states":
                    run.step_states.append(run.last_state)
            if step + 1 in ends and on_checkpoint is not None:
                on_checkpoint(run)
            if (should_stop is not None and record is not None and step + 1 < end
                    and should_stop()):
                run.stopped_at = step + 1
                return run
    return run


def module_on(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """``module`` itself on the CPU; elsewhere a copy of it on ``device``, with its
    parameters, buffers and the graph's tensor constants (plain tensor attributes) moved there,
    so a shared loaded program is never moved away from the CPU under a later run."""
    if torch.device(device) == torch.device("cpu"):
        return module
    with warnings.catch_warnings():
        # deep-copying an unlifted exported module copies its pytree specs, which warns on
        # some torch versions about their own deprecated isinstance checks
        warnings.simplefilter("ignore", FutureWarning)
        moved = copy.deepcopy(module)
    moved.to(device)
    for part in moved.modules():
        for name, value in list(vars(part).items()):
            if isinstance(value, torch.Tensor):
                setattr(part, name, value.to(device))
    return moved


def _loss(module: torch.nn.Module, params: dict[str, torch.Tensor],
          batch: list[torch.Tensor]) -> torch.Tensor:
    loss = torch.func.functional_call(module, params, tuple(batch))
    if isinstance(loss, list | tuple) and len(loss) == 1:
        loss = loss[0]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.is_floating_point():
        shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise BadInput(f"a training program must return its loss as one floating scalar; this "
                       f"one returned {shape}")
    return loss


@dataclass(frozen=True)
class SegmentCheck:
    """One recomputed segment against the worker's checkpoint at its end."""

    index: int
    agree: bool
    reason: str
    max_abs: float
    first_bad_step: int | None
    """The first step whose loss differs from the worker's beyond the loss tolerance (where the
    disagreement starts), when the state disagrees; None when it agrees or the losses do."""
    used: float
    """The largest share of its allowance an element of the worker's checkpoint uses."""
    steps_run: int
    """The optimizer steps this check recomputed (the verifier's cost)."""


#: How far beyond its own spread a worker's checkpoint may lie, tensor by tensor, when the
#: verifier's two recomputations of a segment differ (see :func:`check_segment`).
SPREAD_FACTOR = 8.0


def _tensors(data: bytes) -> dict[str, torch.Tensor] | None:
    try:
        return st_load(data)
    except Exception:  # noqa: BLE001 - the worker's bytes may be anything
        return None


@dataclass(frozen=True)
class StateComparison:
    agree: bool
    reason: str
    max_abs: float
    used: float
    """The largest share of its allowance any element uses (1.0 = at the edge)."""


def _disagree(reason: str) -> StateComparison:
    return StateComparison(False, reason, float("inf"), float("inf"))


def compare_states(ours: bytes, theirs: bytes, tolerance: dict,
                   second: bytes | None = None) -> StateComparison:
    """Two states compared tensor by tensor: each element of ``theirs`` within
    ``atol + rtol * |ours|`` of ours. A state with other names or shapes, or a value that is
    not finite, disagrees.

    With ``second`` (our recomputation under another numeric setup), each tensor also allows
    :data:`SPREAD_FACTOR` times the largest difference between our two runs in that tensor:
    coordinates the loss does not depend on (AdamW turns their rounding-level gradients into
    full-size steps of either sign, for example the key bias of attention) drift apart between
    honest runs, and a change there gains a cheater nothing."""
    a, b = _tensors(ours), _tensors(theirs)
    if a is None:
        raise BadInput("our own state is not a safetensors file")
    if b is None:
        return _disagree("the worker's checkpoint is not a safetensors file")
    if sorted(a) != sorted(b) or any(a[n].shape != b[n].shape for n in a):
        return _disagree("the worker's checkpoint names other tensors or shapes")
    c = _tensors(second) if second is not None else None
    rtol, atol = float(tolerance["rtol"]), float(tolerance["atol"])
    worst, worst_name, max_abs = 0.0, "", 0.0
    for name in sorted(a):
        if a[name].numel() == 0:
            continue
        if not bool(torch.isfinite(b[name]).all()):
            return _disagree(f"{name} in the worker's checkpoint is not finite")
        if not bool(torch.isfinite(a[name]).all()) or (
                c is not None and not bool(torch.isfinite(c[name]).all())):
            # our own run left the finite numbers: nothing can be judged against it
            return _disagree(f"{name} in our recomputation is not finite")
        diff = (a[name].double() - b[name].double()).abs()
        allowed = atol + rtol * a[name].double().abs()
        if c is not None:
            allowed = allowed + SPREAD_FACTOR * float((a[name].double() - c[name].double())
                                                      .abs().max())
        used = float((diff / allowed).max())
        max_abs = max(max_abs, float(diff.max()))
        if used > worst:
            worst, worst_name = used, name
    extra = f" plus {SPREAD_FACTOR:g}x our own spread" if c is not None else ""
    if worst <= 1.0:
        return StateComparison(True, f"every tensor within rtol={rtol:g}, atol={atol:g}{extra} "
                               f"(at most {worst:.3g} of the allowance)", max_abs, worst)
    return StateComparison(False, f"{worst_name} is off by {worst:.3g} times its allowance "
                           f"(rtol={rtol:g}, atol={atol:g}{extra})", max_abs, worst)


#: Our two runs of a segment may differ by this many times the tolerance and the segment still
#: be judged with their spread (honest AdamW training drifts apart by ~20 times in coordinates
#: the loss ignores: BENCHMARKS.md "Training verification"); beyond it the training is chaotic
#: under its tolerance, anything would pass, and the segment cannot be judged.
UNJUDGEABLE_SPREAD = 1000.0


@dataclass(frozen=True)
class SegmentJudgement:
    check: StateComparison
    """The worker's end state against ours (with our spread, when a second run was made)."""
    second: bytes | None
    """Our second run's end state, when one was made."""
    unjudgeable: StateComparison | None
    """Our own two runs compared, when they differ beyond :data:`UNJUDGEABLE_SPREAD`: then
    the segment cannot be judged and ``check`` must not decide anything."""


def judge_segment(ours: bytes, theirs: bytes, tolerance: dict, second: Callable[[], bytes], *,
                  always_second: bool = False) -> SegmentJudgement:
    """The rule of a training audit for one segment, given our end state, the worker's, and a
    way to run the segment again under our second numeric setup (called only when the first
    comparison fails, or with ``always_second``): the worker agrees within the tolerance, or
    within it plus our own spread (:func:`compare_states`); unless our own two runs differ by
    over :data:`UNJUDGEABLE_SPREAD` times the tolerance."""
    check = compare_states(ours, theirs, tolerance)
    if check.agree and not always_second:
        return SegmentJudgement(check, None, None)
    other = second()
    own = compare_states(ours, other, tolerance)
    if own.used > UNJUDGEABLE_SPREAD:
        return SegmentJudgement(check, other, own)
    return SegmentJudgement(compare_states(ours, theirs, tolerance, other), other, None)


def check_segment(program: bytes | LoadedProgram, data: Sequence[torch.Tensor],
                  plan: TrainingPlan, index: int, start_state: bytes | None, end_state: bytes,
                  claimed_losses: Sequence[float], tolerance: dict,
                  loss_rtol: float = 1e-4, always_second: bool = False) -> SegmentCheck:
    """Recompute segment ``index`` from ``start_state`` (the worker's checkpoint before it, or
    the job's initial state for the first) and judge the worker's ``end_state`` by
    :func:`judge_segment`, in this process, the second run with each batch in two halves (the
    verifier service runs both in the sandbox, the second under its alternate setup too:
    :mod:`meshcompute.verifier.training_audit`); where the worker disagrees, the first step
    whose loss differs from the worker's says where the disagreement starts.
    ``always_second`` runs the second recomputation whatever the first says (the benchmark's
    measure of the margin of the final rule)."""
    loaded = program if isinstance(program, LoadedProgram) else load_program(program)
    start, end = segments(plan)[index]
    run = run_steps(loaded, data, plan, start_state, start=start, end=end)
    if run.diverged_at is not None:
        return SegmentCheck(index, False, f"our recomputation diverged at step "
                            f"{run.diverged_at}", float("inf"), run.diverged_at, float("inf"),
                            end - start)
    halves = 2 if plan.batch_size % 2 == 0 else 1
    judged = judge_segment(run.final_state, end_state, tolerance, lambda: run_steps(
        loaded, data, plan, start_state, start=start, end=end, micro_batches=halves).last_state,
        always_second=always_second)
    steps_run = (end - start) * (1 if judged.second is None else 2)
    verdict = judged.check
    if judged.unjudgeable is not None:
        return SegmentCheck(index, False, f"our own two runs differ by "
                            f"{judged.unjudgeable.used:.3g} times the tolerance: cannot be "
                            "judged", verdict.max_abs, None, verdict.used, steps_run)
    first_bad = None
    if not verdict.agree:
        theirs = list(claimed_losses)[start:end]
        for offset, ours in enumerate(run.losses):
            other_loss = theirs[offset] if offset < len(theirs) else float("nan")
            if not abs(ours - other_loss) <= loss_rtol * abs(ours) + 1e-7:
                first_bad = start + offset
                break
    return SegmentCheck(index, verdict.agree, verdict.reason, verdict.max_abs, first_bad,
                        verdict.used, steps_run)


@dataclass(frozen=True)
class LinkCheck:
    """A segment judged one step at a time from the worker's own states (an appeal)."""

    agree: bool
    reason: str
    step: int | None
    """The first step whose state does not follow from the worker's state before it."""
    steps_run: int
    unjudgeable: StateComparison | None = None
    """Our own two runs of ``step`` compared, when they differ beyond
    :data:`UNJUDGEABLE_SPREAD`: then nothing about the segment can be decided."""


LinkRun = Callable[[Sequence["bytes | None"], Sequence[int], bool], list[bytes]]
"""``run_links(befores, steps, alternate)``: for each ``i``, the state after running step
``steps[i]`` alone from ``befores[i]`` (None: the program's own parameters), stopping before
the first step whose loss is not finite (so fewer states than steps); ``alternate``: our
second numeric setup. One call is one sandboxed process (:func:`meshcompute.execution.
train_runner.run_training_links`), so a segment of K steps costs about one recomputation of it,
not K process starts."""


def links_in_process(program: bytes | LoadedProgram, data: Sequence[torch.Tensor],
                     plan: TrainingPlan) -> LinkRun:
    """A :data:`LinkRun` in this process, the alternate setup being each batch in two halves
    (tests, the benchmark)."""
    loaded = program if isinstance(program, LoadedProgram) else load_program(program)

    def run(befores: Sequence[bytes | None], steps: Sequence[int],
            alternate: bool) -> list[bytes]:
        halves = 2 if alternate and plan.batch_size % 2 == 0 else 1
        out: list[bytes] = []
        for before, step in zip(befores, steps, strict=True):
            after = run_steps(loaded, data, plan, before, start=step, end=step + 1,
                              micro_batches=halves)
            if after.diverged_at is not None:
                break
            out.append(after.last_state)
        return out
    return run


def check_links(states: Sequence[bytes | None], start: int, tolerance: dict,
                run_links: LinkRun) -> LinkCheck:
    """Judge a segment as a chain of single steps: ``states[0]`` is the state before step
    ``start`` (None: the program's own parameters), ``states[i]`` the worker's state after
    step ``start + i - 1``. Each of the worker's states must be one a run can be in
    (:func:`state_problem`) and follow from the one before it by :func:`judge_segment`'s rule
    with a K-th of the segment's tolerance (K the segment's steps, so that differences allowed
    step by step add up to no more than the segment's own allowance; our second run is made,
    in one more process, only for the steps whose first comparison fails). A verdict so rests
    on one step's recomputation from the worker's own state, which drift cannot blur: an
    honest worker whose segment drifted past the tolerance passes, a state that was not
    computed fails at the first step that claims it."""
    count = len(states) - 1
    steps = [start + i for i in range(count)]
    share = {**tolerance, "rtol": float(tolerance["rtol"]) / max(1, count),
             "atol": float(tolerance["atol"]) / max(1, count)}
    runnable = count
    for i in range(1, count + 1):  # the worker's states, checked before anything runs
        problem = _state_bytes_problem(states[i])
        if problem is not None:
            runnable = i - 1
            break
    ours = run_links(states[:runnable], steps[:runnable], False) if runnable else []
    failing = [i for i in range(len(ours))
               if not compare_states(ours[i], _worker_state(states[i + 1]), share).agree]
    seconds = dict(zip(failing, run_links([states[i] for i in failing],
                                          [steps[i] for i in failing], True), strict=False)) \
        if failing else {}
    steps_run = len(ours) + len(failing)
    for i in range(count):
        if i >= len(ours):
            reason = (f"the worker's state after step {steps[i]} is not one a run can be in: "
                      f"{_state_bytes_problem(states[i + 1])}") if i == runnable else (
                f"our step {steps[i]} from the worker's own state gave no state (its loss was "
                "not finite)")
            return LinkCheck(False, reason, steps[i], steps_run)
        # a second run that gave no state (its loss not finite) is as far from ours as can be
        judged = judge_segment(ours[i], _worker_state(states[i + 1]), share,
                               partial(seconds.get, i, b""))
        if judged.unjudgeable is not None:
            return LinkCheck(False, f"step {steps[i]}: our own two runs of it differ by "
                             f"{judged.unjudgeable.used:.3g} times the tolerance: cannot be "
                             "judged", steps[i], steps_run, judged.unjudgeable)
        if not judged.check.agree:
            return LinkCheck(False, f"step {steps[i]} does not follow from the worker's own "
                             f"state before it: {judged.check.reason}", steps[i], steps_run)
    return LinkCheck(True, f"each of its {count} steps follows from the worker's own state "
                     f"before it within 1/{count} of the tolerance", None, steps_run)


def _state_bytes_problem(state: bytes | None) -> str | None:
    if state is None:
        return "missing"
    tensors = _tensors(state)
    if tensors is None:
        return "not a safetensors file"
    return state_problem(tensors)


def _worker_state(state: bytes | None) -> bytes:
    if state is None:
        raise BadInput("a worker's state after a step is missing")
    return state
