"""Read a safetensors header without torch (the worker's parent process checks job tensors).

Format: 8 bytes little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from meshcompute.errors import BadInput

MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def read_header(data: bytes, prefix: str) -> list[TensorInfo]:
    """The tensors of safetensors ``data``, which must be named ``<prefix>.0 .. <prefix>.n-1``."""
    if len(data) < 8:
        raise BadInput("tensor file is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise BadInput("tensor file's safetensors header length is out of range (truncated?)")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadInput("tensor file's safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise BadInput("tensor file's safetensors header is not an object")
    header.pop("__metadata__", None)
    expected = {f"{prefix}.{i}" for i in range(len(header))}
    if not header or set(header) != expected:
        raise BadInput(f"tensors must be named {prefix}.0 .. {prefix}.{len(header) - 1}, got "
                       f"{sorted(header)[:8]}")
    infos = []
    for index in range(len(header)):
        name = f"{prefix}.{index}"
        entry = header[name]
        try:
            begin, end = entry["data_offsets"]
            shape = tuple(int(s) for s in entry["shape"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"tensor {name}: malformed safetensors entry") from None
        if not (0 <= begin <= end <= len(data) - 8 - length):
            raise BadInput(f"tensor {name}: data lies outside the file (truncated?)")
        infos.append(TensorInfo(name=name, dtype=dtype, shape=shape, nbytes=end - begin))
    return infos
