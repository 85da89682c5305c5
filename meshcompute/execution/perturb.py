"""One-ulp perturbation of job inputs, on the safetensors bytes themselves.

:func:`perturb_inputs` moves every floating-point element of an inputs file by one unit in the
last place towards +infinity (``np.nextafter(x, +inf)``: ``+0`` and ``-0`` become the smallest
positive subnormal, a negative number moves towards zero, NaN and +infinity stay, the largest
finite value of a format without infinity stays). Integer and boolean tensors, the header and
every byte outside the tensors' data are left as they are. A stable program barely notices;
a program that magnifies rounding (its output moves beyond its tolerance when its inputs move
by one ulp) is unstable under that tolerance, and an audit cannot tell an honest worker's
rounding from a cheat on it (see :meth:`meshcompute.verifier.audit.Auditor.audit`).

Pure and deterministic: numpy on the raw bytes, no torch, nothing unpickled. The header is
parsed as JSON and checked by :func:`meshcompute.execution.tensorfile.read_header`.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from meshcompute.errors import BadInput
from meshcompute.execution.tensorfile import read_header

_IEEE = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "C64": "<f4", "C128": "<f8"}
"""Formats numpy holds: complex tensors move each of their two components."""

# Formats numpy lacks, stepped on their bit patterns: (bits, sign bit?, kind). "ieee" has
# infinities and NaNs with an all-ones exponent; "fn" has no infinity and one NaN magnitude
# (all ones); "fnuz" has no infinity, no negative zero and its one NaN where -0 would be;
# "e8m0" is an unsigned power of two with NaN at 0xFF.
_BITWISE: dict[str, tuple[int, int, str]] = {
    "BF16": (16, 8, "ieee"),
    "F8_E5M2": (8, 5, "ieee"),
    "F8_E4M3": (8, 4, "fn"),
    "F8_E4M3FNUZ": (8, 4, "fnuz"),
    "F8_E5M2FNUZ": (8, 5, "fnuz"),
    "F8_E8M0": (8, 8, "e8m0"),
}

FLOATING_DTYPES = frozenset({*_IEEE, *_BITWISE})
"""Safetensors dtypes this module moves; every other dtype is left as it is."""


def perturb_inputs(data: bytes) -> bytes:
    """``data`` (an inputs safetensors file, tensors ``args.0 ..``) with every floating-point
    element moved one ulp towards +infinity; BadInput when the file is not well formed.
    The result has the same length, header and names; bytes of non-floating tensors are
    unchanged (a file without floating tensors comes back identical)."""
    data = bytes(data)
    read_header(data, "args")  # names, offsets inside the file
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length].decode("utf-8"))
    header.pop("__metadata__", None)
    base = 8 + length
    out = bytearray(data)
    for name, entry in header.items():
        dtype = str(entry["dtype"])
        begin, end = (int(v) for v in entry["data_offsets"])
        if dtype not in FLOATING_DTYPES or end == begin:
            continue
        raw = data[base + begin:base + end]
        out[base + begin:base + end] = _next_up(raw, dtype, name)
    return bytes(out)


def _next_up(raw: bytes, dtype: str, name: str) -> bytes:
    if dtype in _IEEE:
        width = np.dtype(_IEEE[dtype]).itemsize
        if len(raw) % width:
            raise BadInput(f"tensor {name}: {len(raw)} bytes is not a whole number of {dtype}")
        values = np.frombuffer(raw, dtype=_IEEE[dtype])
        return np.nextafter(values, np.inf).astype(_IEEE[dtype]).tobytes()
    bits, exp_bits, kind = _BITWISE[dtype]
    utype = np.dtype("<u2") if bits == 16 else np.dtype("u1")
    if len(raw) % utype.itemsize:
        raise BadInput(f"tensor {name}: {len(raw)} bytes is not a whole number of {dtype}")
    return next_up_bits(np.frombuffer(raw, dtype=utype), bits, exp_bits, kind).tobytes()


def next_up_bits(u: np.ndarray, bits: int, exp_bits: int, kind: str) -> np.ndarray:
    """``nextafter(x, +inf)`` on the bit patterns ``u`` (unsigned ints) of a float format with
    ``bits`` bits, ``exp_bits`` exponent bits and special values of ``kind`` (see above)."""
    u = u.astype(np.int64)
    if kind == "e8m0":
        return np.where(u >= 0xFE, u, u + 1).astype(np.uint8)
    sign = 1 << (bits - 1)
    mag = u & (sign - 1)
    negative = (u & sign) != 0
    if kind == "ieee":
        inf = ((1 << exp_bits) - 1) << (bits - 1 - exp_bits)
        frozen = (mag > inf) | (u == inf)  # NaN, +inf
        top = np.zeros_like(u, dtype=bool)
    elif kind == "fn":
        frozen = mag == sign - 1  # NaN (either sign)
        top = u == sign - 2  # largest finite: no infinity to step to
    elif kind == "fnuz":
        frozen = u == sign  # the one NaN
        top = u == sign - 1
        mag = np.where(frozen, 1, mag)
    else:  # pragma: no cover - _BITWISE only holds the kinds above
        raise ValueError(kind)
    stepped = np.where(mag == 0, 1, np.where(negative, u - 1, u + 1))
    if kind == "fnuz":  # -smallest subnormal steps to +0 (there is no -0)
        stepped = np.where(u == sign + 1, 0, stepped)
    result = np.where(frozen | top, u, stepped)
    return result.astype(np.uint16 if bits == 16 else np.uint8)
