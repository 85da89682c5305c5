"""Load a validated ``.pt2`` without pickle, without ``torch.export.load`` and without guards.

``torch.export.load`` (torch 2.13, ``torch/export/pt2_archive/_package.py``) reads weights
and constants marked ``use_pickle`` with ``torch.load(weights_only=False)``, custom objects
with ``torch._C._pickle_load_obj`` and opaque objects with ``pickle.loads``, and
``deserialize_torch_artifact`` retries a failed safe load with ``weights_only=False``. So this
module never calls it. Instead it:

1. re-runs :func:`meshcompute.execution.archive.validate_program` (the loader is never used on unchecked
   bytes, whoever calls it);
2. builds every weight and constant itself from the raw little-endian members
   (``torch.frombuffer`` + ``as_strided``, exactly as torch's ``_build_file_map`` lays them
   out, aliasing preserved), refusing any entry that would need pickle;
3. turns ``models/model.json`` (already parsed by :mod:`json`) into the serde dataclasses with
   ``_dict_to_dataclass`` and rebuilds the program with
   ``ExportedProgramDeserializer().deserialize(program, state_dict, constants, None)``: with
   dicts for the state and constants and no example inputs, no ``torch.load`` path is reached;
4. drops node metadata and guard code (guards were grammar-checked, but are not needed) and
   makes the callable with ``module(check_guards=False)``, so nothing is ``exec``'d from the
   archive;
5. checks every call of the rebuilt graph as torch will make it (:func:`check_graph_calls`):
   the JSON checks in :mod:`meshcompute.execution.archive` see arguments by name, but torch binds them by
   their position and kind, so an archive can shift a value into another parameter (an
   omitted ``dropout_p`` followed by positional arguments makes attention random). Here each
   operator is looked up again on :mod:`meshcompute.execution.oplist`, its schema must not write to any
   argument, and the inference-only arguments are read as bound.

Belt and braces: :func:`forbid_pickle` replaces ``pickle.load(s)``, ``pickle.Unpickler``,
``torch.load`` and ``torch._C._pickle_load_obj`` in the calling process with functions that
raise; the sandboxed job process calls it before touching the archive.
"""

from __future__ import annotations

import copy
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch._export.serde import schema
from torch._export.serde.serialize import (
    ExportedProgramDeserializer,
    _dict_to_dataclass,
    deserialize_scalar_type,
)

from meshcompute.errors import BadInput
from meshcompute.execution import oplist
from meshcompute.execution.archive import (
    TensorEntry,
    ValidatedProgram,
    open_member,
    validate_program,
)


class PickleRefused(BadInput):
    """Something tried to unpickle data inside the job process."""


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise PickleRefused("unpickling is disabled in the job process; the program needs pickle")


class _RefusingUnpickler:
    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        _refuse()


def forbid_pickle() -> None:
    """Make every unpickling entry point of this process raise :class:`PickleRefused`."""
    pickle.load = _refuse  # type: ignore[assignment]
    pickle.loads = _refuse  # type: ignore[assignment]
    pickle.Unpickler = _RefusingUnpickler  # type: ignore[assignment,misc]
    torch.load = _refuse  # type: ignore[assignment]
    torch.serialization.load = _refuse  # type: ignore[assignment]
    torch._C._pickle_load_obj = _refuse  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InputSpec:
    """What the program expects for one positional input."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | tuple[int, int | None], ...]
    """Each dimension: an exact size, or ``(min, max)`` for a dynamic one (max None: unbounded)."""

    def describe(self) -> str:
        dims = [str(d) if isinstance(d, int) else f"{d[0]}..{d[1] or 'inf'}" for d in self.shape]
        return f"{str(self.dtype).removeprefix('torch.')}[{', '.join(dims)}]"

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        """None when ``tensor`` fits, else what is wrong."""
        if tensor.dtype != self.dtype or tensor.dim() != len(self.shape):
            return f"expected {self.describe()}, got {_describe(tensor)}"
        for size, want in zip(tensor.shape, self.shape, strict=True):
            if isinstance(want, int):
                if size != want:
                    return f"expected {self.describe()}, got {_describe(tensor)}"
            elif size < want[0] or (want[1] is not None and size > want[1]):
                return f"expected {self.describe()}, got {_describe(tensor)}"
        return None


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


@dataclass
class LoadedProgram:
    program: torch.export.ExportedProgram
    module: torch.nn.Module
    inputs: tuple[InputSpec, ...]


def load_program(source: bytes | Path) -> LoadedProgram:
    """Validate and load a program; :class:`BadInput` for anything refused or unloadable."""
    if sys.byteorder != "little":
        raise BadInput("this worker is big-endian; .pt2 tensors are little-endian")
    validated = validate_program(source)
    with open_member(source) as archive:
        storages: dict[str, torch.Tensor] = {}
        state_dict = {e.fqn: _tensor(archive, e, storages) for e in validated.weights}
        constants = {e.fqn: _tensor(archive, e, storages) for e in validated.constants}
    for entry in validated.weights:
        if entry.is_param:
            state_dict[entry.fqn] = torch.nn.Parameter(
                state_dict[entry.fqn], requires_grad=entry.requires_grad
            )
    model = _without_code(validated)
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, model)
        program = ExportedProgramDeserializer().deserialize(
            serialized, state_dict, constants, None
        )
        program._guards_code = []
        check_graph_calls(program.graph)
        module = program.module(check_guards=False)
        _views_as_reshapes(module)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a malformed graph
        raise BadInput(f"program failed to load: {type(exc).__name__}: {str(exc)[:500]}") from None
    return LoadedProgram(program=program, module=module, inputs=_input_specs(program))


def _views_as_reshapes(module: torch.nn.Module) -> None:
    """Run the graph's ``view`` calls as ``reshape``. A view was recorded for the memory layout
    the exporter's kernels produced; a kernel on another device may lay its output out otherwise
    (CUDA's attention does), and then the same view is impossible ("view size is not compatible
    with input tensor's size and stride"). Every value of an allowed graph is a value, never
    written through an alias (no allowed call writes to an argument), so a reshape, which views
    where it can and copies where it must, computes the same numbers on any layout."""
    views = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default}
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        changed = False
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and node.target in views:
                node.target = torch.ops.aten.reshape.default
                changed = True
        if changed:
            graph_module.recompile()


_MISSING = object()


def _python_operators() -> dict[Any, str]:
    """The callables :data:`meshcompute.execution.oplist.PYTHON_OPERATORS` name, resolved as torch does."""
    import importlib

    out: dict[Any, str] = {}
    for name in oplist.PYTHON_OPERATORS:
        module_name, _, attr = name.rpartition(".")
        target = getattr(importlib.import_module(module_name), attr, None)
        if target is not None:
            out[target] = name
    return out


def check_graph_calls(graph: torch.fx.Graph) -> None:
    """BadInput unless every call in ``graph`` is allowed with the arguments torch will pass.

    Runs on the deserialized graph, so it judges what will run rather than the JSON."""
    python_ops = _python_operators()
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            raise BadInput(f"graph node {node.name!r}: {node.op} nodes are not allowed")
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):
            if python_ops.get(target) is None:
                raise BadInput(f"graph node {node.name!r}: target {target!r} is not allowed")
            continue
        schema = target._schema
        qualified = f"torch.ops.{target.namespace}.{target._schema.name.split('::')[-1]}." \
                    f"{target._overloadname}"
        reason = oplist.check_target(qualified)
        if reason is not None:
            raise BadInput(f"graph node {node.name!r}: {reason}")
        if schema.is_mutable or any(
            arg.alias_info is not None and arg.alias_info.is_write for arg in schema.arguments
        ):
            raise BadInput(f"graph node {node.name!r}: {qualified} writes to its arguments "
                           "(out= or in-place forms are not allowed)")
        rule = oplist.INFERENCE_ONLY.get(schema.name.split("::")[-1])
        if rule is not None:
            name, required = rule
            value = _bound_argument(schema, node.args, node.kwargs, name)
            if value is _MISSING or type(value) not in (bool, int, float) or value != required:
                shown = "missing" if value is _MISSING else repr(value)
                raise BadInput(f"graph node {node.name!r}: {qualified} is random unless "
                               f"{name}={required!r}, and the call passes {name}={shown}")


def _bound_argument(schema: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str) -> Any:
    """The value parameter ``name`` of ``schema`` takes in a call with ``args``/``kwargs``."""
    for index, argument in enumerate(schema.arguments):
        if argument.name != name:
            continue
        if name in kwargs:
            return kwargs[name]
        if not argument.kwarg_only and index < len(args):
            return args[index]
        return argument.default_value if argument.has_default_value() else _MISSING
    return _MISSING


def _tensor(archive: Any, entry: TensorEntry, storages: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = deserialize_scalar_type(schema.ScalarType(entry.dtype))
    flat = storages.get(entry.member)
    if flat is None:
        raw = bytearray(archive.read(entry.member))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        storages[entry.member] = flat
    if flat.dtype != dtype:
        raise BadInput(f"archive member {entry.member!r} is shared by tensors of different dtypes")
    if 0 in entry.sizes:
        return torch.zeros(entry.sizes, dtype=dtype)
    return torch.as_strided(flat, entry.sizes, entry.strides, entry.storage_offset)


def _without_code(validated: ValidatedProgram) -> dict[str, Any]:
    """model.json with guard code and node metadata (stack traces, source names) removed."""
    model = copy.deepcopy(validated.model)
    model["guards_code"] = []
    for node in model["graph_module"]["graph"].get("nodes", []):
        node["metadata"] = {}
    return model


def _input_specs(program: torch.export.ExportedProgram) -> tuple[InputSpec, ...]:
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    ranges = {str(sym): (vr.lower, vr.upper) for sym, vr in program.range_constraints.items()}
    specs = []
    for index, name in enumerate(program.graph_signature.user_inputs):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            raise BadInput(f"program input {index} ({name}) is not a tensor; jobs pass tensors")
        shape: list[int | tuple[int, int | None]] = []
        for dim in value.shape:
            if isinstance(dim, int):
                shape.append(dim)
                continue
            low, high = ranges.get(str(dim.node.expr), (0, None))
            shape.append((_finite(low) or 0, _finite(high)))
        specs.append(InputSpec(name=f"args.{index}", dtype=value.dtype, shape=tuple(shape)))
    return tuple(specs)


def _finite(bound: Any) -> int | None:
    """A range bound as an int; None when it is unbounded (sympy's ``oo``, whose ``int()``
    raises AttributeError rather than OverflowError) or not a number."""
    if getattr(bound, "is_finite", True) is False:
        return None
    try:
        return int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def check_inputs(specs: Sequence[InputSpec], tensors: Sequence[torch.Tensor]) -> None:
    """:class:`BadInput` unless ``tensors`` fit the program's inputs ``specs``, as the job process
    (meshcompute.execution.execute) and the client's check before paying
    (meshcompute.execution.precheck) judge them: one rule, the same words."""
    if len(tensors) != len(specs):
        raise BadInput(f"program takes {len(specs)} inputs, job gives {len(tensors)}")
    for spec, tensor in zip(specs, tensors, strict=True):
        problem = spec.mismatch(tensor)
        if problem:
            if _only_batch_differs(spec, tensor):
                problem += (f" (the program's batch dimension is fixed at {spec.shape[0]}: export "
                            "it with a dynamic one, torch.export.Dim, to run other batch sizes)")
            raise BadInput(f"input {spec.name}: {problem}")


def _only_batch_differs(spec: InputSpec, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` would fit a program with a fixed batch size but for dimension 0."""
    if not spec.shape or not isinstance(spec.shape[0], int) or tensor.dim() != len(spec.shape):
        return False
    resized = torch.empty((spec.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device="meta")
    return spec.mismatch(resized) is None
