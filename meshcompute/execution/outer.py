"""The outer loop of a training run across machines (local SGD, DiLoCo style): each round every
worker trains its own shard for a few steps from the same global parameters, and the client
combines what comes back.

- :func:`outer_step`: the outer gradient is the mean over the returned shards of ``global -
  worker`` (how far the round moved the parameters, averaged); the outer optimizer is SGD with
  Nesterov momentum on it (DiLoCo: learning rate 0.7, momentum 0.9). A shard that did not
  come back in time simply has no say in that round's mean.
- :func:`split_state` / :func:`join_state`: a training state is ``param.*`` and the optimizer
  slots ``opt.*`` (:mod:`meshcompute.execution.training`); each shard keeps its own inner
  optimizer slots from round to round, under the round's new global parameters.
- :func:`mean_loss`: the loss of given parameters over a whole dataset, without gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from meshcompute.errors import BadInput
from meshcompute.execution.loader import LoadedProgram, load_program
from meshcompute.execution.training import OPT, PARAM, state_bytes

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OuterOptimizer:
    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.lr <= 10 or not 0 <= self.momentum < 1:
            raise BadInput(f"outer optimizer: lr must be in (0, 10] and momentum in [0, 1), "
                           f"got {self.lr} and {self.momentum}")


def outer_step(optimizer: OuterOptimizer, global_params: Mapping[str, torch.Tensor],
               returned: Sequence[Mapping[str, torch.Tensor]],
               momentum: Mapping[str, torch.Tensor]) -> tuple[Tensors, Tensors]:
    """The next global parameters and momentum buffers from the parameters the round's
    workers returned (``param.*`` names, as ``global_params``)."""
    if not returned:
        raise BadInput("a round needs at least one returned shard")
    new_params: Tensors = {}
    new_momentum: Tensors = {}
    for name, value in global_params.items():
        delta = torch.stack([value - r[name] for r in returned]).mean(0)
        buffer = momentum.get(name)
        buffer = delta.clone() if buffer is None else optimizer.momentum * buffer + delta
        step = delta + optimizer.momentum * buffer if optimizer.nesterov else buffer
        new_params[name] = value - optimizer.lr * step
        new_momentum[name] = buffer
    return new_params, new_momentum


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[Tensors, Tensors]:
    """(``param.*``, ``opt.*``) of a training state."""
    params = {k: v for k, v in state.items() if k.startswith(PARAM)}
    slots = {k: v for k, v in state.items() if k.startswith(OPT)}
    return params, slots


def join_state(params: Mapping[str, torch.Tensor], slots: Mapping[str, torch.Tensor]) -> bytes:
    """A job's initial state: the global parameters with a shard's own optimizer slots."""
    return state_bytes({**params, **slots})


def mean_loss(program: bytes | LoadedProgram, data: Sequence[torch.Tensor],
              params: Mapping[str, torch.Tensor], batch_size: int) -> float:
    """The mean loss of ``params`` (``param.*``) over every row of ``data``, in batches of
    ``batch_size`` (the program's loss is a mean over a batch's rows)."""
    loaded = program if isinstance(program, LoadedProgram) else load_program(program)
    named = {k[len(PARAM):]: v for k, v in params.items()}
    rows = int(data[0].shape[0])
    total = 0.0
    with torch.no_grad():
        for start in range(0, rows, batch_size):
            batch = tuple(t[start:start + batch_size] for t in data)
            loss = torch.func.functional_call(loaded.module, named, batch)
            if isinstance(loss, list | tuple):
                loss = loss[0]
            total += float(loss) * int(batch[0].shape[0])
    return total / rows
