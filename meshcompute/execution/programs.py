"""Job programs and job tensors, as the client SDK, the worker and the verifier exchange them.

- A program is a ``torch.export`` archive (``.pt2``) written by :func:`export_program`: the
  batch dimension (dimension 0 of every input) is dynamic, so shards of any size run, and the
  archive carries no pickled example inputs (``torch.export.save`` would otherwise store them
  with ``torch.save``; the worker refuses any member that needs pickle).
- Inputs and outputs are safetensors files whose tensors are named ``<prefix>.0``,
  ``<prefix>.1``, ... (``args`` for inputs, ``out`` for outputs; see
  :mod:`meshcompute.core.spec`). :func:`save_tensors` writes them, :func:`load_tensors` reads
  them back and refuses any other naming.

Nothing here unpickles anything.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from meshcompute.errors import BadInput

INPUT_PREFIX = "args"
OUTPUT_PREFIX = "out"
MAX_BATCH = 1 << 20
"""Upper bound of the dynamic batch dimension in exported programs."""

_PREFIX = re.compile(r"^[a-z]+$")


def export_program(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
) -> bytes:
    """Export ``module`` called on ``example_inputs`` to ``.pt2`` bytes a worker accepts.

    With ``dynamic_batch`` (the default) dimension 0 of every input is one shared dynamic
    dimension (1..``MAX_BATCH``), so the program runs on shards of any batch size; the example
    batch must then be at least 2 (torch specialises sizes 0 and 1). The module is exported as
    given: put it in eval mode first for inference. Raises :class:`BadInput` when torch cannot
    export it (the message carries torch's reason).
    """
    args = tuple(example_inputs)
    if not args or not all(isinstance(t, torch.Tensor) for t in args):
        raise BadInput("export_program needs one or more example input tensors")
    dynamic_shapes = None
    if dynamic_batch:
        if any(t.dim() == 0 for t in args):
            raise BadInput("dynamic_batch needs every input to have a batch dimension")
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in args)
    try:
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # torch raises many unrelated types for export failures
        raise BadInput(f"torch.export could not export the module: {exc}") from exc
    # Example inputs would be stored with torch.save (a pickle); the worker refuses those.
    program.example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def tensor_name(prefix: str, index: int) -> str:
    return f"{prefix}.{index}"


def save_tensors(
    tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], prefix: str = INPUT_PREFIX
) -> bytes:
    """Safetensors bytes holding ``tensors`` as ``<prefix>.0``, ``<prefix>.1``, ...

    A sequence is named in order; a mapping must already use exactly those names. Tensors are
    copied to CPU and made contiguous.
    """
    _check_prefix(prefix)
    if isinstance(tensors, Mapping):
        _check_names(list(tensors), prefix)
        ordered = [tensors[tensor_name(prefix, i)] for i in range(len(tensors))]
    else:
        ordered = list(tensors)
    if not ordered:
        raise BadInput("save_tensors needs at least one tensor")
    for index, tensor in enumerate(ordered):
        if not isinstance(tensor, torch.Tensor):
            raise BadInput(f"{tensor_name(prefix, index)} is a {type(tensor).__name__}, "
                           "not a tensor")
    named = {
        tensor_name(prefix, i): t.detach().to("cpu").contiguous() for i, t in enumerate(ordered)
    }
    return _st_save(named)


def load_tensors(data: bytes, prefix: str) -> list[torch.Tensor]:
    """The tensors ``<prefix>.0 .. <prefix>.{n-1}`` of safetensors ``data``, in order.

    Raises :class:`BadInput` when the bytes are not safetensors or the names are not exactly
    that sequence (a missing index, an extra or foreign name).
    """
    _check_prefix(prefix)
    try:
        named = _st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError, KeyError) as exc:
        raise BadInput(f"not a valid safetensors file: {exc}") from exc
    if not named:
        raise BadInput(f"safetensors file holds no tensors (expected {prefix}.0, ...)")
    _check_names(list(named), prefix)
    return [named[tensor_name(prefix, i)] for i in range(len(named))]


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise BadInput(f"tensor name prefix must be lowercase letters, got {prefix!r}")


def _check_names(names: list[str], prefix: str) -> None:
    expected = {tensor_name(prefix, i) for i in range(len(names))}
    if set(names) != expected:
        unexpected = sorted(set(names) - expected)
        missing = sorted(expected - set(names))
        raise BadInput(
            f"tensors must be named {prefix}.0 .. {prefix}.{len(names) - 1}; "
            f"unexpected {unexpected}, missing {missing}"
        )
