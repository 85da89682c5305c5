"""meshcompute.wire.bundle: the blob bundle wire format (pure, no I/O)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcompute.errors import BadInput
from meshcompute.wire.bundle import (
    LENGTH_BYTES,
    BundleHashMismatch,
    BundleTooLarge,
    bundle_header,
    bundle_size,
    decode_bundle,
    encode_bundle,
)

LIMITS = {"max_blobs": 16, "max_blob_bytes": 1 << 20}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw(header: object, payload: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(LENGTH_BYTES, "little") + text + payload


def test_layout_is_length_then_json_header_then_bytes():
    data = encode_bundle([b"ab", b"", b"c"])
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    assert header == {"blobs": [{"sha256": _sha(b"ab"), "size": 2},
                                {"sha256": _sha(b""), "size": 0},
                                {"sha256": _sha(b"c"), "size": 1}]}
    assert data[8 + length:] == b"abc"
    assert bundle_size([(_sha(b"ab"), 2), (_sha(b""), 0), (_sha(b"c"), 1)]) == len(data)
    assert data.startswith(bundle_header([(_sha(b"ab"), 2), (_sha(b""), 0), (_sha(b"c"), 1)]))


def test_round_trip_keeps_order_and_duplicates():
    blobs = [b"x" * 10, b"", b"x" * 10, bytes(range(256))]
    assert decode_bundle(encode_bundle(blobs), **LIMITS) == [(_sha(b), b) for b in blobs]
    assert decode_bundle(encode_bundle([]), **LIMITS) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x05\x00\x00", "truncated"),
        ((100).to_bytes(8, "little") + b"{}", "header of 100 bytes declared"),
        (_raw(b"\xff\xfe"), "not UTF-8 JSON"),
        (_raw(b"{not json"), "not UTF-8 JSON"),
        (_raw(b'{"blobs":[[[{}]]]}'), "nests deeper than 3 levels"),
        (_raw({"blobs": [{"sha256": "[" * 8, "size": 0}]}), "nests deeper"),
        (_raw(b'{"blobs":[],"blobs":[]}'), "duplicate key"),
        (_raw([]), "must be a JSON object, got list"),
        (_raw({}), "exactly the key 'blobs'"),
        (_raw({"blobs": [], "extra": 1}), "exactly the key 'blobs'"),
        (_raw({"blobs": {}}), "'blobs' must be a list"),
        (_raw({"blobs": [1]}), r"blobs\[0\] must be an object"),
        (_raw({"blobs": [{"sha256": "a" * 64}]}), "exactly the keys"),
        (_raw({"blobs": [{"sha256": "a" * 64, "size": 0, "x": 1}]}), "exactly the keys"),
        (_raw({"blobs": [{"sha256": "A" * 64, "size": 0}]}), "64 lowercase hex"),
        (_raw({"blobs": [{"sha256": "a" * 63, "size": 0}]}), "64 lowercase hex"),
        (_raw({"blobs": [{"sha256": "a" * 64 + "\n", "size": 0}]}), "64 lowercase hex"),
        (_raw({"blobs": [{"sha256": 5, "size": 0}]}), "64 lowercase hex"),
        (_raw({"blobs": [{"sha256": "a" * 64, "size": "1"}]}), "size must be an integer"),
        (_raw({"blobs": [{"sha256": "a" * 64, "size": 1.0}]}), "size must be an integer"),
        (_raw({"blobs": [{"sha256": "a" * 64, "size": True}]}), "size must be an integer"),
        (_raw({"blobs": [{"sha256": "a" * 64, "size": -1}]}), "must not be negative"),
        (_raw({"blobs": [{"sha256": _sha(b"ab"), "size": 2}]}, b"abc"),
         "add up to 2 bytes but 3 bytes follow"),
        (_raw({"blobs": [{"sha256": _sha(b"ab"), "size": 2}]}, b"a"),
         "add up to 2 bytes but 1 bytes follow"),
    ],
)
def test_malformed_bundles_are_refused_naming_the_problem(data, message):
    with pytest.raises(BadInput, match=message) as caught:
        decode_bundle(data, **LIMITS)
    assert not isinstance(caught.value, BundleHashMismatch | BundleTooLarge)


def test_a_blob_whose_bytes_do_not_match_its_hash_is_a_hash_mismatch():
    data = _raw({"blobs": [{"sha256": _sha(b"ok"), "size": 2},
                           {"sha256": _sha(b"claimed"), "size": 5}]}, b"okother")
    with pytest.raises(BundleHashMismatch, match="blob 1 .* hashes to") as caught:
        decode_bundle(data, **LIMITS)
    assert _sha(b"other") in str(caught.value) and _sha(b"claimed") in str(caught.value)
    assert isinstance(caught.value, BadInput)


def test_limits_on_count_and_blob_size():
    with pytest.raises(BundleTooLarge, match="3 blobs, more than the limit of 2"):
        decode_bundle(encode_bundle([b"a", b"b", b"c"]), max_blobs=2, max_blob_bytes=10)
    with pytest.raises(BundleTooLarge, match=r"blobs\[1\] .* is 11 bytes, over the limit of 10"):
        decode_bundle(encode_bundle([b"a", b"b" * 11]), max_blobs=2, max_blob_bytes=10)
    # deep nesting is refused before the JSON parser recurses into it (with py_ecc's raised
    # recursion limit a 200000-deep array overflows the C stack instead of raising)
    deep = _raw(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(BadInput, match="400000 brackets"):
        decode_bundle(deep, **LIMITS)
    with pytest.raises(BadInput, match="nests deeper"):
        decode_bundle(deep, max_blobs=10**6, max_blob_bytes=10)
    # a header may not claim a huge size either, whatever follows
    huge = _raw({"blobs": [{"sha256": "a" * 64, "size": 2**70}]})
    with pytest.raises(BundleTooLarge):
        decode_bundle(huge, **LIMITS)


blob_lists = st.lists(st.binary(max_size=64), max_size=6)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(blobs=blob_lists)
def test_round_trip(blobs):
    decoded = decode_bundle(encode_bundle(blobs), max_blobs=len(blobs), max_blob_bytes=64)
    assert [blob for _, blob in decoded] == blobs
    assert [sha for sha, _ in decoded] == [_sha(blob) for blob in blobs]


@pytest.mark.property
@settings(max_examples=500, deadline=None)
@given(blobs=blob_lists.filter(bool), where=st.floats(0, 1, exclude_max=True),
       delta=st.integers(1, 255))
def test_any_one_byte_corruption_is_detected(blobs, where, delta):
    data = bytearray(encode_bundle(blobs))
    index = int(where * len(data))
    data[index] ^= delta
    with pytest.raises(BadInput):
        decode_bundle(bytes(data), max_blobs=len(blobs), max_blob_bytes=64)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(blobs=blob_lists.filter(bool), data=st.data())
def test_any_truncation_is_detected(blobs, data):
    raw = encode_bundle(blobs)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(BadInput):
        decode_bundle(raw[:cut], max_blobs=len(blobs), max_blob_bytes=64)
