"""Blob bundles: many blobs in one HTTP body (``POST /blobs/bundle``, ``POST /blobs/fetch``).

Wire format (docs/market-api.md "Blob bundles")::

    <8 bytes: header length H, unsigned little-endian>
    <H bytes: UTF-8 JSON {"blobs": [{"sha256": "<64 lowercase hex>", "size": N}, ...]}>
    <the blobs' bytes, concatenated in header order>

Pure functions, no I/O, shared by the market and its clients. :func:`decode_bundle` trusts
nothing: every length, key and hash is checked, and each blob's bytes must hash to the sha256
the header names. JSON only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from meshcompute.errors import BadInput

LENGTH_BYTES = 8
"""Size of the header-length prefix."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYS = {"sha256", "size"}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_MAX_DEPTH = 3
_FLAT = re.compile(rb"\{\[(?:\{\})*\]\}")
"""A header nests an object in a list in an object, no deeper."""


class BundleHashMismatch(BadInput):
    """A blob's bytes in a bundle do not hash to the sha256 its header names (HTTP 400)."""


class BundleTooLarge(BadInput):
    """A bundle carries more blobs, or a bigger blob, than the reader allows (HTTP 413)."""


def bundle_header(entries: Sequence[tuple[str, int]]) -> bytes:
    """The length prefix and JSON header of a bundle of blobs ``(sha256, size)``, in order:
    what precedes the blobs' bytes (a server can stream the bytes after it)."""
    header = json.dumps(
        {"blobs": [{"sha256": sha, "size": int(size)} for sha, size in entries]},
        separators=(",", ":"),
    ).encode()
    return len(header).to_bytes(LENGTH_BYTES, "little") + header


def bundle_size(entries: Sequence[tuple[str, int]]) -> int:
    """Total bytes of the bundle of ``entries`` ``(sha256, size)``, header included."""
    return len(bundle_header(entries)) + sum(int(size) for _, size in entries)


def encode_bundle(blobs: Sequence[bytes]) -> bytes:
    """One bundle carrying ``blobs`` in order (duplicates and empty blobs allowed)."""
    entries = [(hashlib.sha256(blob).hexdigest(), len(blob)) for blob in blobs]
    return bundle_header(entries) + b"".join(blobs)


def decode_bundle(
    data: bytes, *, max_blobs: int, max_blob_bytes: int
) -> list[tuple[str, bytes]]:
    """The ``(sha256, bytes)`` pairs of a bundle, in order, every one hash-checked.

    Raises :class:`BadInput` naming what is wrong (truncated data, a header that is not a JSON
    object of the expected shape, a bad sha256, sizes that do not add up to the body),
    :class:`BundleTooLarge` for more than ``max_blobs`` blobs or one over ``max_blob_bytes``,
    and :class:`BundleHashMismatch` for a blob whose bytes hash to another sha256.
    """
    view = memoryview(data)
    if len(view) < LENGTH_BYTES:
        raise BadInput(
            f"bundle truncated: {len(view)} bytes, shorter than its {LENGTH_BYTES}-byte "
            "header length"
        )
    header_len = int.from_bytes(view[:LENGTH_BYTES], "little")
    body_start = LENGTH_BYTES + header_len
    if body_start > len(view):
        raise BadInput(
            f"bundle truncated: header of {header_len} bytes declared, only "
            f"{len(view) - LENGTH_BYTES} bytes follow the length"
        )
    entries = _parse_header(bytes(view[LENGTH_BYTES:body_start]), max_blobs, max_blob_bytes)
    payload = len(view) - body_start
    declared = sum(size for _, size in entries)
    if declared != payload:
        raise BadInput(
            f"bundle sizes add up to {declared} bytes but {payload} bytes follow the header"
        )
    out: list[tuple[str, bytes]] = []
    offset = body_start
    for index, (sha, size) in enumerate(entries):
        blob = bytes(view[offset:offset + size])
        offset += size
        got = hashlib.sha256(blob).hexdigest()
        if got != sha:
            raise BundleHashMismatch(
                f"bundle blob {index} ({size} bytes) hashes to {got}, not to its declared "
                f"sha256 {sha}"
            )
        out.append((sha, blob))
    return out


def _parse_header(raw: bytes, max_blobs: int, max_blob_bytes: int) -> list[tuple[str, int]]:
    _check_nesting(raw, max_blobs)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadInput(f"bundle header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadInput(f"bundle header must be a JSON object, got {type(header).__name__}")
    if set(header) != {"blobs"}:
        raise BadInput(f"bundle header must have exactly the key 'blobs', got {sorted(header)}")
    blobs = header["blobs"]
    if not isinstance(blobs, list):
        raise BadInput(f"bundle header 'blobs' must be a list, got {type(blobs).__name__}")
    if len(blobs) > max_blobs:
        raise BundleTooLarge(
            f"bundle carries {len(blobs)} blobs, more than the limit of {max_blobs}"
        )
    entries: list[tuple[str, int]] = []
    for index, entry in enumerate(blobs):
        entries.append(_parse_entry(index, entry, max_blob_bytes))
    return entries


def _parse_entry(index: int, entry: Any, max_blob_bytes: int) -> tuple[str, int]:
    where = f"bundle header blobs[{index}]"
    if not isinstance(entry, dict):
        raise BadInput(f"{where} must be an object, got {type(entry).__name__}")
    if set(entry) != _KEYS:
        raise BadInput(f"{where} must have exactly the keys ['sha256', 'size'], "
                       f"got {sorted(entry)}")
    sha, size = entry["sha256"], entry["size"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise BadInput(f"{where}.sha256 must be 64 lowercase hex characters, got "
                       f"{str(sha)[:80]!r}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise BadInput(f"{where}.size must be an integer, got {size!r:.80}")
    if size < 0:
        raise BadInput(f"{where}.size must not be negative, got {size}")
    if size > max_blob_bytes:
        raise BundleTooLarge(
            f"{where} ({sha}) is {size} bytes, over the limit of {max_blob_bytes} bytes"
        )
    return sha, size


def _check_nesting(raw: bytes, max_blobs: int) -> None:
    """Refuse deeply nested JSON before parsing it: ``json`` recurses in C once per level,
    and with the recursion limit raised (py_ecc raises it to 100000 on import) a deep enough
    header would overflow the C stack and kill the process instead of raising.

    A valid header has no bracket inside a string (keys are fixed, hashes are hex), so the
    brackets alone, in order, give its nesting."""
    brackets = raw.translate(None, _NOT_BRACKETS)
    if len(brackets) > 2 * (max_blobs + 2):  # {[{}{}...]}: two per blob, four around them
        if _FLAT.fullmatch(brackets):
            raise BundleTooLarge(f"bundle carries {len(brackets) // 2 - 2} blobs, more than "
                                 f"the limit of {max_blobs}")
        raise BadInput(f"bundle header has {len(brackets)} brackets, more than a header of "
                       f"at most {max_blobs} blobs")
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > _MAX_DEPTH:
            raise BadInput(f"bundle header nests deeper than {_MAX_DEPTH} levels")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out
