"""Strict validation of a job program (a ``torch.export`` ``.pt2`` zip) before anything loads it.

Pure Python (zipfile, json, ast, pickletools' opcode reader): no torch, nothing evaluated,
nothing unpickled. The worker runs it in its own process before it starts a job, and the
sandboxed loader runs it again before it deserialises anything.

What is accepted is exactly the structure ``torch.export.save`` (torch 2.13) writes for one
program with ``example_inputs`` cleared (as :func:`meshcompute.execution.programs.export_program` does):

``<root>/archive_format`` (``pt2``), ``<root>/archive_version``, ``<root>/byteorder``
(``little``), ``<root>/.data/version``, ``<root>/.data/serialization_id``,
``<root>/models/model.json``, ``<root>/data/weights/model_weights_config.json``,
``<root>/data/weights/weight_<n>``, ``<root>/data/constants/model_constants_config.json``,
``<root>/data/constants/tensor_<n>`` and an *empty* ``<root>/data/sample_inputs/model.pt``.

Refused, with a :class:`BadInput` naming the member, operator or expression:

- anything that is not a stored (uncompressed, unencrypted) zip, duplicate or unexpected
  members, sizes over the limits;
- any member that needs pickle: a ``use_pickle`` entry, custom or opaque objects, non-empty
  pickled sample inputs (:func:`strip_example_inputs` empties that member, on the client's
  side, without reading it), and any binary member whose bytes parse as a complete pickle stream
  or start a nested zip (``torch.save``);
- graph nodes whose operator is not on :mod:`meshcompute.execution.oplist`'s allowlist, argument kinds that
  carry subgraphs, custom objects or operators;
- guard code and symbolic shape expressions outside :mod:`meshcompute.execution.symexpr`'s grammar;
- names that are not plain identifiers (they end up in generated Python source).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcompute.errors import BadInput
from meshcompute.execution import oplist, symexpr

MAX_PROGRAM_BYTES = 8 << 30
MAX_MEMBERS = 20_000
MAX_JSON_BYTES = 256 << 20
MAX_NODES = 200_000
MAX_STRING = 1 << 16

SUPPORTED_SCHEMA_MAJOR = 8
MODEL = "model"
EXAMPLE_INPUTS_MEMBER = "data/sample_inputs/model.pt"
"""Where ``torch.export.save`` puts the program's example inputs (written with ``torch.save``,
a pickle; empty when ``example_inputs`` is None), relative to the archive's root folder."""

ELEMENT_SIZE = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 9: 4, 10: 8, 11: 16, 12: 1, 13: 2,
    28: 2, 29: 1, 30: 1, 31: 1, 32: 1, 33: 1, 34: 4, 35: 8,
}
"""Serialized ``ScalarType`` code (torch/_export/serde/schema.py) -> bytes per element."""
LAYOUT_STRIDED = 7
DEVICE_TYPES = frozenset({"cpu", "cuda", "meta"})

_ROOT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_FQN = re.compile(r"^[A-Za-z0-9_]{1,200}(?:\.[A-Za-z0-9_]{1,200}){0,64}$")
_WEIGHT_FILE = re.compile(r"^weight_[0-9]{1,9}$")
_CONSTANT_FILE = re.compile(r"^tensor_[0-9]{1,9}$")
_DIGITS = re.compile(rb"^[0-9]{1,64}$")
_VERIFIER = re.compile(r"^[A-Z_]{0,32}$")

_TOP_KEYS = frozenset({
    "graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
    "torch_version", "guards_code",
})
_GRAPH_MODULE_KEYS = frozenset({
    "graph", "signature", "module_call_graph", "metadata", "treespec_namedtuple_fields",
})
_GRAPH_KEYS = frozenset({
    "inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values",
    "is_single_tensor_return", "custom_obj_values", "sym_float_values",
})
_NODE_KEYS = frozenset({"target", "inputs", "outputs", "metadata", "is_hop_single_tensor_return",
                        "name"})
_NODE_METADATA_KEYS = frozenset({"stack_trace", "nn_module_stack", "source_fn_stack",
                                 "torch_fn", "custom"})
_TENSOR_META_KEYS = frozenset({"dtype", "sizes", "requires_grad", "device", "strides",
                               "storage_offset", "layout"})
_ARG_KINDS = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats",
    "as_string", "as_strings", "as_sym_int", "as_sym_ints", "as_scalar_type",
    "as_memory_format", "as_layout", "as_device", "as_bool", "as_bools", "as_sym_bool",
    "as_sym_bools", "as_optional_tensors", "as_sym_float", "as_sym_floats",
    "as_optional_tensor", "as_complex", "as_int_lists", "as_float_lists",
})
_INPUT_SPEC_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant",
                               "constant_input"})
_OUTPUT_SPEC_KINDS = frozenset({"user_output", "buffer_mutation", "user_input_mutation"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})


@dataclass(frozen=True)
class TensorEntry:
    """One weight or constant stored as raw bytes in the archive."""

    fqn: str
    member: str
    dtype: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int
    requires_grad: bool
    is_param: bool
    nbytes: int


@dataclass(frozen=True)
class ValidatedProgram:
    """What validation learned; the loader builds the program from this and nothing else."""

    root: str
    model: dict[str, Any]
    """``models/model.json``, parsed with :mod:`json`."""
    weights: tuple[TensorEntry, ...]
    constants: tuple[TensorEntry, ...]
    operators: frozenset[str]
    members: frozenset[str]


def validate_program(source: bytes | Path, *, max_bytes: int = MAX_PROGRAM_BYTES) -> ValidatedProgram:
    """Check a ``.pt2`` against the strict schema; raise :class:`BadInput` naming the problem."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size > max_bytes:
        raise BadInput(f"program is {size} bytes, over the limit of {max_bytes}")
    head = _head(source)
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:1] in (b"(", b"}"):
        raise BadInput("program is a pickle, not a .pt2 zip archive; pickles are never loaded")
    if head[:4] != b"PK\x03\x04":
        raise BadInput("program is not a .pt2 zip archive (no zip header)")
    try:
        with _open_zip(source) as archive:
            return _validate_zip(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError, KeyError) as exc:
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"program is not a readable .pt2 zip archive (truncated or corrupt): "
                       f"{exc}") from None


def open_member(source: bytes | Path) -> zipfile.ZipFile:
    """A zipfile over ``source``, for the loader (after :func:`validate_program`)."""
    return _open_zip(source)


def example_inputs_member(source: bytes | Path) -> str | None:
    """The member of ``source`` that holds (non-empty, pickled) example inputs, or None.

    Reads the zip directory only, never the member's bytes; None too when ``source`` is not a
    readable zip (:func:`validate_program` says why)."""
    if _head(source)[:4] != b"PK\x03\x04":
        return None
    try:
        with _open_zip(source) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
        return None
    if not infos:
        return None
    wanted = f"{infos[0].filename.split('/', 1)[0]}/{EXAMPLE_INPUTS_MEMBER}"
    for info in infos:
        if info.filename == wanted and info.file_size != 0:
            return wanted
    return None


def strip_example_inputs(source: bytes | Path) -> bytes:
    """``source`` (a ``.pt2`` zip) rewritten with its example inputs member emptied.

    ``torch.export.save`` stores a program's example inputs with ``torch.save`` (a pickle) in
    ``<root>/data/sample_inputs/model.pt``; :func:`validate_program` accepts that member only
    empty, which is what ``torch.export.save`` writes when ``example_inputs`` is None (as
    :func:`meshcompute.execution.programs.export_program` exports). Zip surgery only: the
    member's bytes are never read (so never unpickled); every other member is copied as it is,
    in its order, with its name, timestamp and compression. Nothing else changes, so any other
    reason to refuse the archive remains. An archive without such a member comes back
    unchanged. :class:`BadInput` when ``source`` is not a readable zip."""
    data = source.read_bytes() if isinstance(source, Path) else bytes(source)
    member = example_inputs_member(data)
    if member is None:
        if data[:4] != b"PK\x03\x04":
            raise BadInput("program is not a .pt2 zip archive (no zip header)")
        return data
    out = io.BytesIO()
    try:
        with _open_zip(data) as archive, zipfile.ZipFile(out, "w", allowZip64=True) as rewritten:
            for info in archive.infolist():
                copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                copy.compress_type = info.compress_type
                copy.external_attr = info.external_attr
                if info.filename == member:
                    rewritten.writestr(copy, b"")
                    continue
                copy.file_size = info.file_size
                with archive.open(info) as source_member, rewritten.open(
                    copy, "w", force_zip64=info.file_size >= zipfile.ZIP64_LIMIT
                ) as target:
                    shutil.copyfileobj(source_member, target, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError, KeyError) as exc:
        raise BadInput(f"program is not a readable .pt2 zip archive (truncated or corrupt): "
                       f"{exc}") from None
    return out.getvalue()


def _head(source: bytes | Path) -> bytes:
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return handle.read(8)
    return bytes(source[:8])


def _open_zip(source: bytes | Path) -> zipfile.ZipFile:
    if isinstance(source, Path):
        return zipfile.ZipFile(source)
    return zipfile.ZipFile(io.BytesIO(source))


def _validate_zip(archive: zipfile.ZipFile) -> ValidatedProgram:
    infos = archive.infolist()
    if not infos:
        raise BadInput("program archive is empty")
    if len(infos) > MAX_MEMBERS:
        raise BadInput(f"program archive has {len(infos)} members, over {MAX_MEMBERS}")
    root = infos[0].filename.split("/", 1)[0]
    if not _ROOT.match(root):
        raise BadInput(f"program archive root folder {root!r} is not a plain name")
    sizes: dict[str, int] = {}
    for info in infos:
        name = info.filename
        if name in sizes:
            raise BadInput(f"program archive member {name!r} appears twice")
        if not name.startswith(root + "/") or info.is_dir():
            raise BadInput(f"program archive member {name!r} is outside the root {root!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise BadInput(f"program archive member {name!r} is compressed; .pt2 members are "
                           "stored")
        if info.flag_bits & 0x1:
            raise BadInput(f"program archive member {name!r} is encrypted")
        sizes[name] = info.file_size
    rel = {name[len(root) + 1:]: name for name in sizes}

    _check_text_members(archive, rel)
    for member, full_name in rel.items():
        if member.startswith(("data/weights/weight_", "data/constants/")):
            _refuse_pickle(archive, full_name)
    sample = EXAMPLE_INPUTS_MEMBER
    if sample in rel and sizes[rel[sample]] != 0:
        raise BadInput(f"program archive member {rel[sample]!r} holds pickled example inputs; "
                       "refused (export with meshcompute.execution.programs.export_program)")
    model = _read_json(archive, rel, "models/model.json")
    weights_config = _read_json(archive, rel, "data/weights/model_weights_config.json")
    constants_config = _read_json(archive, rel, "data/constants/model_constants_config.json")
    weights = _tensor_entries(weights_config, "data/weights/", _WEIGHT_FILE, rel, sizes, "weight")
    constants = _tensor_entries(constants_config, "data/constants/", _CONSTANT_FILE, rel, sizes,
                                "constant")

    expected = {
        "archive_format", "archive_version", "byteorder", "models/model.json",
        "data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
    }
    optional = {".data/version", ".data/serialization_id", "data/sample_inputs/model.pt"}
    referenced = {e.member[len(root) + 1:] for e in (*weights, *constants)}
    for member, full_name in rel.items():
        if member not in expected | optional | referenced:
            raise BadInput(f"program archive has unexpected member {full_name!r} (only a "
                           "torch.export program's weights, constants and graph are accepted)")

    operators = _check_model(model)
    return ValidatedProgram(
        root=root, model=model, weights=weights, constants=constants, operators=operators,
        members=frozenset(sizes),
    )


def _check_text_members(archive: zipfile.ZipFile, rel: dict[str, str]) -> None:
    checks: dict[str, Any] = {
        "archive_format": lambda b: b == b"pt2",
        "archive_version": lambda b: bool(_DIGITS.match(b)) and len(b) <= 4,
        "byteorder": lambda b: b == b"little",
        ".data/version": lambda b: bool(_DIGITS.match(b)) and len(b) <= 4,
        ".data/serialization_id": lambda b: bool(_DIGITS.match(b)),
    }
    for member, ok in checks.items():
        if member not in rel:
            if member.startswith(".data/"):
                continue
            raise BadInput(f"program archive lacks {member!r}; not a torch.export .pt2")
        info = archive.getinfo(rel[member])
        if info.file_size > 64 or not ok(archive.read(info)):
            raise BadInput(f"program archive member {rel[member]!r} has unexpected content")


def _read_json(archive: zipfile.ZipFile, rel: dict[str, str], member: str) -> Any:
    if member not in rel:
        raise BadInput(f"program archive lacks {member!r}; not a torch.export .pt2")
    info = archive.getinfo(rel[member])
    if info.file_size > MAX_JSON_BYTES:
        raise BadInput(f"program archive member {rel[member]!r} is over {MAX_JSON_BYTES} bytes")
    raw = archive.read(info)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        hint = " (it looks like a pickle)" if raw[:1] == b"\x80" else ""
        raise BadInput(f"program archive member {rel[member]!r} is not JSON{hint}: "
                       f"{str(exc)[:100]}") from None
    if not isinstance(value, dict):
        raise BadInput(f"program archive member {rel[member]!r} is not a JSON object")
    return value


def _refuse_pickle(archive: zipfile.ZipFile, name: str) -> None:
    """Refuse a raw-tensor member whose bytes are a pickle stream or a nested zip."""
    with archive.open(name) as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        raise BadInput(f"program archive member {name!r} is a nested zip (torch.save format, "
                       "needs pickle); refused")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        data = archive.read(name)
        try:
            last = None
            for opcode, _arg, pos in pickletools.genops(data):
                last = (opcode.name, pos)
        except Exception:  # noqa: BLE001 - genops only decodes; any failure means not a pickle
            return  # raw tensor bytes that merely start like a pickle header
        if last is not None and last[0] == "STOP" and last[1] == len(data) - 1:
            raise BadInput(f"program archive member {name!r} is a pickle; pickles are never "
                           "loaded")


def _tensor_entries(
    config: dict[str, Any],
    folder: str,
    file_pattern: re.Pattern[str],
    rel: dict[str, str],
    sizes: dict[str, int],
    what: str,
) -> tuple[TensorEntry, ...]:
    where = f"{folder}model_{what}s_config.json"
    if set(config) != {"config"} or not isinstance(config["config"], dict):
        raise BadInput(f"{where}: expected {{'config': {{...}}}}")
    entries = []
    for fqn, payload in config["config"].items():
        if not isinstance(fqn, str) or not _FQN.match(fqn):
            raise BadInput(f"{where}: {what} name {fqn!r} is not a dotted identifier")
        if not isinstance(payload, dict):
            raise BadInput(f"{where}: entry {fqn!r} is not an object")
        extra = set(payload) - {"path_name", "is_param", "use_pickle", "tensor_meta"}
        if extra:
            raise BadInput(f"{where}: entry {fqn!r} has unknown fields {sorted(extra)}")
        path_name = payload.get("path_name")
        if payload.get("use_pickle") is not False:
            raise BadInput(f"{where}: {what} {fqn!r} ({path_name}) is stored with pickle; "
                           "refused")
        if not isinstance(path_name, str) or not file_pattern.match(path_name):
            raise BadInput(f"{where}: {what} {fqn!r} has member {path_name!r}; only raw tensor "
                           "members are accepted (custom and opaque objects need pickle)")
        member = folder + path_name
        if member not in rel:
            raise BadInput(f"{where}: {what} {fqn!r} names missing member {member!r}")
        meta = payload.get("tensor_meta")
        dtype, shape, strides, offset, requires_grad = _tensor_meta(meta, f"{where}: {fqn}")
        if any(isinstance(v, str) for v in (*shape, *strides, offset)):
            raise BadInput(f"{where}: {what} {fqn!r} has a symbolic size")
        nbytes = sizes[rel[member]]
        element = ELEMENT_SIZE[dtype]
        extent = 0 if 0 in shape else offset + 1 + sum(
            (s - 1) * st for s, st in zip(shape, strides, strict=True))
        if nbytes % element or nbytes < extent * element:
            raise BadInput(f"{where}: {what} {fqn!r}: member {member!r} holds {nbytes} bytes, "
                           f"not enough for shape {list(shape)} of {element}-byte elements")
        entries.append(TensorEntry(
            fqn=fqn, member=rel[member], dtype=dtype, sizes=tuple(shape),  # type: ignore[arg-type]
            strides=tuple(strides), storage_offset=offset,  # type: ignore[arg-type]
            requires_grad=requires_grad, is_param=bool(payload.get("is_param")), nbytes=nbytes,
        ))
    return tuple(entries)


def _tensor_meta(meta: Any, where: str) -> tuple[int, list[int | str], list[int | str], Any, bool]:
    if not isinstance(meta, dict) or set(meta) - _TENSOR_META_KEYS:
        raise BadInput(f"{where}: malformed tensor metadata")
    dtype = meta.get("dtype")
    if type(dtype) is not int or dtype not in ELEMENT_SIZE:
        raise BadInput(f"{where}: unsupported dtype code {dtype!r}")
    if meta.get("layout", LAYOUT_STRIDED) != LAYOUT_STRIDED:
        raise BadInput(f"{where}: only strided (dense) tensors are accepted")
    _device(meta.get("device"), where)
    sizes = meta.get("sizes")
    strides = meta.get("strides")
    if not isinstance(sizes, list) or not isinstance(strides, list) or len(sizes) != len(strides):
        raise BadInput(f"{where}: sizes and strides must be lists of equal length")
    if len(sizes) > 64:
        raise BadInput(f"{where}: more than 64 dimensions")
    shape = [_sym_int(s, where, non_negative=True) for s in sizes]
    stride = [_sym_int(s, where, non_negative=True) for s in strides]
    offset = _sym_int(meta.get("storage_offset", {"as_int": 0}), where, non_negative=True)
    requires_grad = meta.get("requires_grad", False)
    if not isinstance(requires_grad, bool):
        raise BadInput(f"{where}: requires_grad must be a boolean")
    return dtype, shape, stride, offset, requires_grad


def _sym_int(value: Any, where: str, *, non_negative: bool = False) -> int | str:
    """An int, or the (grammar-checked) expression string of a symbolic int."""
    if isinstance(value, dict) and len(value) == 1:
        if "as_int" in value and type(value["as_int"]) is int:
            if non_negative and value["as_int"] < 0:
                raise BadInput(f"{where}: negative size {value['as_int']}")
            return value["as_int"]
        if "as_expr" in value:
            return _sym_expr(value["as_expr"], where)
    raise BadInput(f"{where}: malformed symbolic int {str(value)[:80]}")


def _sym_expr(value: Any, where: str) -> str:
    if not isinstance(value, dict) or set(value) - {"expr_str", "hint"}:
        raise BadInput(f"{where}: malformed symbolic expression")
    symexpr.check_sym_expr(value.get("expr_str"), where)
    hint = value.get("hint")
    if hint is not None and not (
        isinstance(hint, dict) and len(hint) == 1
        and any(k in hint and type(hint[k]) in (int, float, bool)
                for k in ("as_int", "as_float", "as_bool"))
    ):
        raise BadInput(f"{where}: malformed hint of a symbolic expression")
    return value["expr_str"]


def _device(value: Any, where: str) -> None:
    if not isinstance(value, dict) or set(value) - {"type", "index"}:
        raise BadInput(f"{where}: malformed device")
    if value.get("type") not in DEVICE_TYPES:
        raise BadInput(f"{where}: device type {value.get('type')!r} is not allowed")
    index = value.get("index")
    if index is not None and (type(index) is not int or not 0 <= index < 1024):
        raise BadInput(f"{where}: device index {index!r} is not allowed")


def _ident(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise BadInput(f"{where}: name {str(value)[:60]!r} is not a plain identifier")
    return value


def _keys(value: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput(f"{where}: expected an object")
    extra = set(value) - allowed
    if extra:
        raise BadInput(f"{where}: unknown fields {sorted(extra)}")
    return value


def _check_model(model: dict[str, Any]) -> frozenset[str]:
    where = "models/model.json"
    _keys(model, _TOP_KEYS, where)
    version = model.get("schema_version")
    if not isinstance(version, dict) or version.get("major") != SUPPORTED_SCHEMA_MAJOR:
        raise BadInput(f"{where}: schema version {version!r} is not supported "
                       f"(major {SUPPORTED_SCHEMA_MAJOR} expected)")
    opset = model.get("opset_version", {})
    if not isinstance(opset, dict) or set(opset) - {"aten"} or not all(
        type(v) is int for v in opset.values()
    ):
        raise BadInput(f"{where}: opset_version must only name aten")
    verifiers = model.get("verifiers", [])
    if not isinstance(verifiers, list) or not all(
        isinstance(v, str) and _VERIFIER.match(v) for v in verifiers
    ):
        raise BadInput(f"{where}: malformed verifiers")
    if not isinstance(model.get("torch_version", ""), str) or len(model.get("torch_version",
                                                                            "")) > 64:
        raise BadInput(f"{where}: malformed torch_version")
    guards = model.get("guards_code", [])
    if not isinstance(guards, list):
        raise BadInput(f"{where}: guards_code must be a list")
    for index, guard in enumerate(guards):
        symexpr.check_guard(guard, f"{where}: guards_code[{index}]")
    ranges = model.get("range_constraints", {})
    if not isinstance(ranges, dict):
        raise BadInput(f"{where}: range_constraints must be an object")
    for symbol, bounds in ranges.items():
        symexpr.check_symbol_name(symbol, f"{where}: range_constraints")
        _keys(bounds, frozenset({"min_val", "max_val"}), f"{where}: range_constraints[{symbol}]")
        if not all(v is None or type(v) is int for v in bounds.values()):
            raise BadInput(f"{where}: range_constraints[{symbol}] bounds must be integers")

    module = _keys(model.get("graph_module"), _GRAPH_MODULE_KEYS, f"{where}: graph_module")
    metadata = module.get("metadata", {})
    if not isinstance(metadata, dict) or set(metadata) - {"custom"} or not all(
        isinstance(v, str) and len(v) < MAX_STRING for v in metadata.values()
    ):
        raise BadInput(f"{where}: graph_module metadata may only hold a 'custom' string")
    if module.get("treespec_namedtuple_fields", {}):
        raise BadInput(f"{where}: named-tuple inputs or outputs are not supported")
    _check_signature(module.get("signature"), f"{where}: signature")
    _check_call_graph(module.get("module_call_graph", []), f"{where}: module_call_graph")
    return _check_graph(module.get("graph"), f"{where}: graph")


def _check_signature(signature: Any, where: str) -> None:
    signature = _keys(signature, frozenset({"input_specs", "output_specs"}), where)
    for field_name, kinds in (("input_specs", _INPUT_SPEC_KINDS),
                              ("output_specs", _OUTPUT_SPEC_KINDS)):
        specs = signature.get(field_name, [])
        if not isinstance(specs, list):
            raise BadInput(f"{where}: {field_name} must be a list")
        for spec in specs:
            if not isinstance(spec, dict) or len(spec) != 1:
                raise BadInput(f"{where}: malformed entry in {field_name}")
            kind, body = next(iter(spec.items()))
            if kind not in kinds:
                raise BadInput(f"{where}: {field_name} kind {kind!r} is not allowed "
                               "(custom objects, effect tokens and gradients are refused)")
            if not isinstance(body, dict):
                raise BadInput(f"{where}: malformed {kind} spec")
            for key, value in body.items():
                if key == "arg":
                    if isinstance(value, dict) and set(value) == {"name"}:
                        _ident(value["name"], where)
                    else:
                        _argument(value, where)
                elif key in ("parameter_name", "buffer_name", "tensor_constant_name",
                             "user_input_name", "target"):
                    if not isinstance(value, str) or not _FQN.match(value):
                        raise BadInput(f"{where}: {key} {str(value)[:60]!r} is not a dotted "
                                       "identifier")
                elif key == "persistent":
                    if not isinstance(value, bool):
                        raise BadInput(f"{where}: persistent must be a boolean")
                else:
                    raise BadInput(f"{where}: unknown field {key!r} in {kind} spec")


def _check_call_graph(entries: Any, where: str) -> None:
    if not isinstance(entries, list):
        raise BadInput(f"{where}: must be a list")
    for entry in entries:
        entry = _keys(entry, frozenset({"fqn", "signature"}), where)
        fqn = entry.get("fqn", "")
        if fqn != "" and (not isinstance(fqn, str) or not _FQN.match(fqn)):
            raise BadInput(f"{where}: fqn {str(fqn)[:60]!r} is not a dotted identifier")
        signature = entry.get("signature")
        if signature is None:
            continue
        signature = _keys(signature, frozenset({"inputs", "outputs", "in_spec", "out_spec",
                                                "forward_arg_names"}), where)
        for key in ("inputs", "outputs"):
            for arg in signature.get(key, []) or []:
                _argument(arg, where)
        for key in ("in_spec", "out_spec"):
            _treespec(signature.get(key), f"{where}: {key}")
        names = signature.get("forward_arg_names", []) or []
        if not isinstance(names, list):
            raise BadInput(f"{where}: forward_arg_names must be a list")
        for name in names:
            _ident(name, where)


def _treespec(text: Any, where: str) -> None:
    if not isinstance(text, str) or len(text) > MAX_STRING:
        raise BadInput(f"{where}: must be a JSON string")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(f"{where}: is not JSON") from None
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int):
        raise BadInput(f"{where}: malformed tree spec")

    def walk(node: Any) -> None:
        node = _keys(node, frozenset({"type", "context", "children_spec"}), where)
        if node.get("type") not in _TREESPEC_TYPES:
            raise BadInput(f"{where}: container type {node.get('type')!r} is not allowed")
        context = node.get("context")
        if context is not None and not isinstance(context, str):
            raise BadInput(f"{where}: malformed context")
        children = node.get("children_spec", [])
        if not isinstance(children, list):
            raise BadInput(f"{where}: malformed children")
        for child in children:
            walk(child)

    walk(value[1])


def _check_graph(graph: Any, where: str) -> frozenset[str]:
    graph = _keys(graph, _GRAPH_KEYS, where)
    if graph.get("custom_obj_values"):
        raise BadInput(f"{where}: custom objects are refused (they need pickle)")
    for arg in (*(graph.get("inputs") or []), *(graph.get("outputs") or [])):
        _argument(arg, f"{where}: inputs/outputs")
    tensor_values = graph.get("tensor_values", {})
    if not isinstance(tensor_values, dict):
        raise BadInput(f"{where}: tensor_values must be an object")
    for name, meta in tensor_values.items():
        _ident(name, f"{where}: tensor_values")
        _tensor_meta(meta, f"{where}: tensor_values[{name}]")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values"):
        values = graph.get(key, {})
        if not isinstance(values, dict):
            raise BadInput(f"{where}: {key} must be an object")
        scalar = {"sym_int_values": "as_int", "sym_bool_values": "as_bool",
                  "sym_float_values": "as_float"}[key]
        for name, value in values.items():
            _ident(name, f"{where}: {key}")
            if not isinstance(value, dict) or len(value) != 1:
                raise BadInput(f"{where}: {key}[{name}] is malformed")
            if "as_expr" in value:
                _sym_expr(value["as_expr"], f"{where}: {key}[{name}]")
            elif scalar not in value or isinstance(value[scalar], (dict, list, str)):
                raise BadInput(f"{where}: {key}[{name}] is malformed")
    if not isinstance(graph.get("is_single_tensor_return", False), bool):
        raise BadInput(f"{where}: is_single_tensor_return must be a boolean")
    nodes = graph.get("nodes", [])
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise BadInput(f"{where}: nodes must be a list of at most {MAX_NODES}")
    operators = set()
    for node in nodes:
        operators.add(_check_node(node, where))
    return frozenset(operators)


def _check_node(node: Any, where: str) -> str:
    node = _keys(node, _NODE_KEYS, f"{where}: node")
    target = node.get("target")
    name = node.get("name", "")
    at = f"{where}: node {str(name)[:60]!r}"
    reason = oplist.check_target(target)
    if reason is not None:
        raise BadInput(f"{at}: {reason}")
    if name:
        _ident(name, at)
    inputs = node.get("inputs", [])
    if not isinstance(inputs, list):
        raise BadInput(f"{at}: inputs must be a list")
    named: dict[str, Any] = {}
    for item in inputs:
        item = _keys(item, frozenset({"name", "arg", "kind"}), at)
        arg_name = item.get("name")
        if not isinstance(arg_name, str) or len(arg_name) > 200:
            raise BadInput(f"{at}: malformed argument name")
        if item.get("kind") not in (None, 1, 2):
            raise BadInput(f"{at}: malformed argument kind")
        _argument(item.get("arg"), at)
        named[arg_name] = item.get("arg")
    outputs = node.get("outputs", [])
    if not isinstance(outputs, list):
        raise BadInput(f"{at}: outputs must be a list")
    for arg in outputs:
        _argument(arg, at)
    metadata = node.get("metadata", {})
    if not isinstance(metadata, dict) or set(metadata) - _NODE_METADATA_KEYS or not all(
        isinstance(v, str) and len(v) < MAX_STRING for v in metadata.values()
    ):
        raise BadInput(f"{at}: metadata may only hold {sorted(_NODE_METADATA_KEYS)} strings")
    if node.get("is_hop_single_tensor_return") not in (None, True, False):
        raise BadInput(f"{at}: malformed is_hop_single_tensor_return")
    aten = oplist.aten_name(target)
    if aten in oplist.INFERENCE_ONLY:
        arg_name, required = oplist.INFERENCE_ONLY[aten]
        given = named.get(arg_name)
        value = None if given is None else next(iter(given.values()))
        if (given is None and arg_name == "train") or (given is not None and value != required):
            raise BadInput(f"{at}: aten::{aten} is random unless {arg_name}={required!r}")
    return target


def _argument(arg: Any, where: str) -> None:
    if not isinstance(arg, dict) or len(arg) != 1:
        raise BadInput(f"{where}: malformed argument {str(arg)[:80]}")
    kind, value = next(iter(arg.items()))
    if kind not in _ARG_KINDS:
        raise BadInput(f"{where}: argument kind {kind!r} is not allowed (subgraphs, custom "
                       "objects and operator references are refused)")
    if kind in ("as_tensor",):
        _tensor_ref(value, where)
    elif kind == "as_tensors":
        _list(value, where)
        for item in value:
            _tensor_ref(item, where)
    elif kind in ("as_optional_tensors", "as_optional_tensor"):
        for item in (_list(value, where) if kind == "as_optional_tensors" else [value]):
            if not isinstance(item, dict) or len(item) != 1:
                raise BadInput(f"{where}: malformed optional tensor")
            if "as_tensor" in item:
                _tensor_ref(item["as_tensor"], where)
            elif "as_none" not in item:
                raise BadInput(f"{where}: malformed optional tensor")
    elif kind in ("as_sym_int", "as_sym_bool", "as_sym_float"):
        _sym_arg(value, where)
    elif kind in ("as_sym_ints", "as_sym_bools", "as_sym_floats"):
        for item in _list(value, where):
            _sym_arg(item, where)
    elif kind == "as_device":
        _device(value, where)
    elif kind in ("as_string",):
        _string(value, where)
    elif kind == "as_strings":
        for item in _list(value, where):
            _string(item, where)
    elif kind == "as_complex":
        _keys(value, frozenset({"real", "imag"}), where)
    elif kind in ("as_int", "as_scalar_type", "as_memory_format", "as_layout"):
        if type(value) is not int:
            raise BadInput(f"{where}: {kind} must be an integer")
    elif kind == "as_none":
        if value not in (True, False, None, {}, []):
            raise BadInput(f"{where}: malformed as_none")
    else:  # numbers, bools and lists of them
        _plain(value, where)


def _tensor_ref(value: Any, where: str) -> None:
    if not isinstance(value, dict) or set(value) != {"name"}:
        raise BadInput(f"{where}: malformed tensor reference")
    _ident(value["name"], where)


def _sym_arg(value: Any, where: str) -> None:
    if not isinstance(value, dict) or len(value) != 1:
        raise BadInput(f"{where}: malformed symbolic argument")
    key, inner = next(iter(value.items()))
    if key == "as_name":
        _ident(inner, where)
    elif key in ("as_int", "as_bool", "as_float"):
        _plain(inner, where)
    elif key == "as_expr":
        _sym_expr(inner, where)
    else:
        raise BadInput(f"{where}: malformed symbolic argument {key!r}")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadInput(f"{where}: expected a list")
    return value


def _string(value: Any, where: str) -> None:
    if not isinstance(value, str) or len(value) > 4096:
        raise BadInput(f"{where}: malformed string argument")


def _plain(value: Any, where: str) -> None:
    """Numbers, booleans and (nested) lists of them."""
    if isinstance(value, list):
        for item in value:
            _plain(item, where)
    elif not isinstance(value, (int, float, bool)):
        raise BadInput(f"{where}: expected numbers, got {type(value).__name__}")
