"""BlobStore.put_many on a real directory: every blob or none, created flags, no leftovers."""

from __future__ import annotations

import hashlib

import pytest

from meshcompute.market.blobs import BlobStore, BlobTooLarge


def test_put_many_stores_each_blob_once_and_says_which_were_new(tmp_path) -> None:
    store = BlobStore(tmp_path, max_bytes=1024)
    old = store.put_bytes(b"old")[0]
    result = store.put_many([b"a", b"old", b"b", b"a"])
    shas = [hashlib.sha256(x).hexdigest() for x in (b"a", b"old", b"b", b"a")]
    assert [sha for sha, _ in result] == shas and shas[1] == old
    assert [created for _, created in result] == [True, False, True, False]
    assert store.read(shas[0]) == b"a" and store.read(shas[2]) == b"b"
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_put_many_refuses_the_whole_list_when_one_blob_is_too_big(tmp_path) -> None:
    store = BlobStore(tmp_path, max_bytes=4)
    with pytest.raises(BlobTooLarge, match="exceeds the limit"):
        store.put_many([b"fine", b"too big"])
    assert not store.exists(hashlib.sha256(b"fine").hexdigest())
    assert list((tmp_path / ".tmp").iterdir()) == []
