"""The checks a worker runs on a job before it runs it, for the client to run before it pays.

A worker refuses a job whose program fails :func:`meshcompute.execution.archive.validate_program`
(strict schema, no pickle, operator allowlist, guard and shape grammar) or the loader's checks
(:func:`meshcompute.execution.loader.load_program`: every call as torch binds it), whose inputs do
not match the program's signature (count, ``args.N`` naming, dtype, shape: what
:mod:`meshcompute.execution.execute` checks before the forward pass), or whose spec's limits are
out of range (:class:`meshcompute.core.spec.JobSpec`). Found only by the workers, each of those
leaves the client's escrow locked until the deadline. :func:`check_job` runs the same code on the
client's side, without running the program, and raises :class:`BadInput` naming the problem.

:func:`prepare_program` turns an archive written the ordinary way (``torch.export.export`` then
``torch.export.save``, which pickles the example inputs) into one a worker accepts, by emptying
the example inputs member (:func:`meshcompute.execution.archive.strip_example_inputs`, zip
surgery, nothing unpickled), and only when that is the one thing a worker would refuse.

Loading here uses the workers' loader on the client's own program: no ``torch.export.load``, no
pickle, no guard code run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sympy
import torch

from meshcompute.core.spec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    JobSpec,
)
from meshcompute.errors import BadInput
from meshcompute.execution.archive import (
    ValidatedProgram,
    example_inputs_member,
    strip_example_inputs,
    validate_program,
)
from meshcompute.execution.loader import (
    InputSpec,
    LoadedProgram,
    check_inputs,
    load_program,
)
from meshcompute.execution.programs import INPUT_PREFIX, load_tensors
from meshcompute.execution.tensorfile import read_header

_PLACEHOLDER_SHA = "0" * 64


@dataclass(frozen=True)
class PreparedProgram:
    """The program bytes to post, and what :func:`prepare_program` did to them."""

    program: bytes
    stripped: str | None
    """The example inputs member that was emptied, or None when the archive was posted as is."""


@dataclass(frozen=True)
class CheckedJob:
    """What :func:`check_job` learned about a job a worker would accept."""

    validated: ValidatedProgram
    inputs: tuple[InputSpec, ...]
    """What the program takes, positionally (``args.0``, ``args.1``, ...)."""
    output_bytes: int | None
    """Bytes of the outputs for the inputs checked, when the graph's shapes tell it."""


def prepare_program(program: bytes | Path) -> PreparedProgram:
    """``program`` as a worker accepts it, or :class:`BadInput` naming why a worker would not.

    Unchanged when :func:`validate_program` accepts it. When it is refused and the archive
    carries pickled example inputs (``torch.export.save`` writes them by default), the member is
    emptied and the result validated again: it is returned if that alone was the problem;
    otherwise the refusal of the stripped archive (the problem that remains) is raised."""
    data = program.read_bytes() if isinstance(program, Path) else bytes(program)
    try:
        validate_program(data)
        return PreparedProgram(program=data, stripped=None)
    except BadInput as refused:
        member = example_inputs_member(data)
        if member is None:
            raise
        try:
            stripped = strip_example_inputs(data)
        except BadInput:
            raise refused from None
    validate_program(stripped)  # raises whatever else is wrong with the archive
    return PreparedProgram(program=stripped, stripped=member)


def check_limits(
    *,
    device: str = "cpu",
    tolerance: dict[str, Any] | None = None,
    time_limit_s: float | None = None,
    memory_limit_mb: int | None = None,
    max_output_bytes: int | None = None,
    shards: int = 1,
) -> None:
    """:class:`BadInput` unless a spec with these limits is one the market and workers parse
    (the checks of :class:`JobSpec`, on a spec with placeholder hashes)."""
    fields: dict[str, Any] = {"device": device, "shards": shards,
                              "group": _PLACEHOLDER_SHA if shards > 1 else None}
    if tolerance is not None:
        fields["tolerance"] = tolerance
    for name, value in (("time_limit_s", time_limit_s), ("memory_limit_mb", memory_limit_mb),
                        ("max_output_bytes", max_output_bytes)):
        if value is not None:
            fields[name] = value
    JobSpec(program=_PLACEHOLDER_SHA, inputs=_PLACEHOLDER_SHA, **fields)


def check_job(
    program: bytes | Path,
    inputs: Sequence[torch.Tensor] | bytes,
    *,
    device: str = "cpu",
    tolerance: dict[str, Any] | None = None,
    time_limit_s: float | None = None,
    memory_limit_mb: int | None = None,
    max_output_bytes: int | None = None,
    shards: int = 1,
) -> CheckedJob:
    """Run a worker's checks on one job without running it; :class:`BadInput` names the first
    problem.

    ``program``: the ``.pt2`` bytes as they will be posted (see :func:`prepare_program`);
    ``inputs``: one shard's tensors, or its safetensors bytes (``args.0``, ``args.1``, ...).
    Checked: the spec's limits (:func:`check_limits`); the program as the worker's sandbox and
    loader check it (:func:`validate_program`, :func:`load_program`: schema, no pickle,
    operator allowlist, guard and shape grammar, calls as bound); the inputs' file and names
    (:func:`read_header`, :func:`load_tensors`) and their count, dtypes and shapes against the
    program's signature (:func:`check_inputs`); that the outputs are tensors and, where the
    graph's shapes give their size, that they fit ``max_output_bytes``; and that the job's
    memory limit holds at least the program's weights and the inputs."""
    check_limits(device=device, tolerance=tolerance, time_limit_s=time_limit_s,
                 memory_limit_mb=memory_limit_mb, max_output_bytes=max_output_bytes,
                 shards=shards)
    data = program.read_bytes() if isinstance(program, Path) else bytes(program)
    validated = validate_program(data)
    loaded = _load(data, validated)
    if isinstance(inputs, bytes | bytearray | memoryview):
        raw = bytes(inputs)
        try:
            read_header(raw, INPUT_PREFIX)
            tensors = load_tensors(raw, INPUT_PREFIX)
        except BadInput as exc:
            raise BadInput(f"inputs refused: {exc}") from None
    else:
        tensors = list(inputs)
        for index, tensor in enumerate(tensors):
            if not isinstance(tensor, torch.Tensor):
                raise BadInput(f"{INPUT_PREFIX}.{index} is a {type(tensor).__name__}, "
                               "not a tensor")
    check_inputs(loaded.inputs, tensors)
    output_bytes = _output_bytes(loaded, tensors)
    limit = DEFAULT_MAX_OUTPUT_BYTES if max_output_bytes is None else int(max_output_bytes)
    if output_bytes is not None and output_bytes > limit:
        raise BadInput(f"output is {output_bytes} bytes, over the job's limit of {limit} bytes "
                       "(split the batch into more shards)")
    memory_mb = DEFAULT_MEMORY_LIMIT_MB if memory_limit_mb is None else int(memory_limit_mb)
    held = (sum({e.member: e.nbytes for e in (*validated.weights, *validated.constants)}.values())
            + sum(t.numel() * t.element_size() for t in tensors))
    if held > memory_mb * 2**20:
        raise BadInput(f"the program's weights and the inputs alone take {held / 2**20:.1f} MB, "
                       f"over the job's memory limit of {memory_mb} MB")
    return CheckedJob(validated=validated, inputs=loaded.inputs, output_bytes=output_bytes)


def _load(data: bytes, validated: ValidatedProgram) -> LoadedProgram:
    """:func:`load_program`, any failure a :class:`BadInput` (a worker's job process reports
    those as the job's failure too)."""
    try:
        return load_program(data)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever stops the worker's loader stops the job
        unbounded = sorted(symbol for symbol, bounds in
                           validated.model.get("range_constraints", {}).items()
                           if bounds.get("max_val") is None)
        hint = (f" (dynamic size {', '.join(unbounded)} has no upper bound: give "
                "torch.export.Dim a max, e.g. Dim('batch', max=1 << 20))" if unbounded else "")
        raise BadInput(f"program failed to load as a worker loads it: {type(exc).__name__}: "
                       f"{str(exc)[:300]}{hint}") from None


def _output_bytes(loaded: LoadedProgram, tensors: Sequence[torch.Tensor]) -> int | None:
    """Bytes of the program's user outputs for ``tensors``, from the graph's shapes (each
    symbolic size bound from the inputs' sizes); None when a size cannot be told this way.
    :class:`BadInput` when an output is not a tensor (the job process refuses those)."""
    program = loaded.program
    nodes = {n.name: n for n in program.graph.nodes}
    bindings: dict[Any, int] = {}
    for name, tensor in zip(program.graph_signature.user_inputs, tensors, strict=False):
        value = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(value, torch.Tensor):
            continue
        for dim, size in zip(value.shape, tensor.shape, strict=False):
            if isinstance(dim, torch.SymInt) and dim.node.expr.is_Symbol:
                bindings[dim.node.expr] = sympy.Integer(int(size))
    total = 0
    known = True
    outputs = program.graph_signature.user_outputs
    if not outputs:
        raise BadInput("program outputs must be tensors (it returns nothing)")
    for output in outputs:
        if output is None:
            continue
        value = nodes[output].meta.get("val") if isinstance(output, str) and output in nodes \
            else output
        if isinstance(value, bool | int | float | torch.SymInt | torch.SymFloat | torch.SymBool):
            raise BadInput(f"program outputs must be tensors (an output is "
                           f"{type(value).__name__})")
        if not isinstance(value, torch.Tensor):
            known = False
            continue
        count = 1
        for dim in value.shape:
            if isinstance(dim, torch.SymInt):
                size = dim.node.expr.xreplace(bindings)
                if not (isinstance(size, int) or getattr(size, "is_Integer", False)):
                    known = False
                    break
                dim = int(size)
            count *= int(dim)
        else:
            total += count * value.element_size()
    return total if known else None
