"""The market API against the real app (uvicorn), Redis and anvil: replays that smuggle a
second auth header, uploads that would fill the disk, worker text shown to clients."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from starlette.datastructures import Headers

from meshcompute.errors import AuthError, ServiceUnavailable
from meshcompute.market import blobs
from meshcompute.market.blobs import BlobStore, StoreFull
from meshcompute.wire.auth import HEADER_NONCE, sign_request, verify_request
from tests.market.conftest import market, mk  # noqa: F401 - fixtures
from tests.market.helpers import index_and_match, post, register, upload_spec

pytestmark = pytest.mark.anvil
REDIS_DB = 14
STRANGER = Account.from_key("0x" + "5b" * 32)


def _put(mk, data: bytes, headers) -> httpx.Response:  # noqa: F811 - mk is the fixture
    sha = hashlib.sha256(data).hexdigest()
    return httpx.put(f"{mk.url}/blobs/{sha}", content=data, headers=headers)


def test_replay_with_a_second_nonce_header_is_refused(mk):  # noqa: F811
    """Starlette's ``headers[name]`` is the first value, ``dict(headers.items())`` the last:
    a replay that put a fresh nonce first had its signature checked with the signed nonce
    and the replay guard fed the fresh one."""
    data = b"replayed blob " + os.urandom(8)
    sha = hashlib.sha256(data).hexdigest()
    signed = sign_request(STRANGER, "PUT", f"/blobs/{sha}", b"", 31337, body_sha256=sha,
                          market=mk.url, contract=mk.contract)
    assert _put(mk, data, signed).status_code == 201
    assert _put(mk, data, signed).status_code == 401  # a plain replay
    smuggled = [(HEADER_NONCE, os.urandom(16).hex()), *signed.items()]
    answer = _put(mk, data, smuggled)
    assert answer.status_code == 401
    assert "more than once" in answer.json()["detail"]


CONTRACT = "0x" + "ab" * 20


def test_verify_request_refuses_repeated_auth_headers():
    signed = sign_request(STRANGER, "POST", "/leases", b"{}", 31337, now=1_800_000_000,
                          market="market.test", contract=CONTRACT)
    raw = [(k.lower().encode(), v.encode()) for k, v in signed.items()]
    raw.append((b"x-mesh-signature", signed["X-Mesh-Signature"].encode()))
    with pytest.raises(AuthError, match="X-Mesh-Signature is given more than once"):
        verify_request(Headers(raw=raw), "POST", "/leases", b"{}", 31337, now=1_800_000_000,
                       markets=["market.test"], contract=CONTRACT)


def test_upload_refused_while_the_disk_is_nearly_full(mk, monkeypatch):  # noqa: F811
    store = mk.rt.blobs  # the app in this process uses the same module
    monkeypatch.setattr(blobs, "free_bytes", lambda _path: store.min_free_bytes + 10)
    data = b"x" * 100
    with pytest.raises(ServiceUnavailable, match="nearly full"):
        mk.client(STRANGER).put_blob(data)
    sha = hashlib.sha256(data).hexdigest()
    assert httpx.get(f"{mk.url}/blobs/{sha}").status_code == 404
    assert list((store.root / ".tmp").iterdir()) == []


async def _chunks(count: int, size: int):
    for _ in range(count):
        yield b"y" * size


def test_streamed_upload_stops_when_the_disk_fills_midway(tmp_path: Path, monkeypatch):
    store = BlobStore(tmp_path, max_bytes=64 << 20, min_free_bytes=1 << 20)
    free = iter([10 << 30, 0])  # plenty at the start, nothing after the first 16 MiB
    monkeypatch.setattr(blobs, "free_bytes", lambda _path: next(free))
    import asyncio

    with pytest.raises(StoreFull):
        asyncio.run(store.put_stream("ab" * 32, _chunks(40, 1 << 20)))
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_failure_reason_cannot_drive_the_clients_terminal(mk):  # noqa: F811
    worker = register(mk, mk.world.workers[0])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    index_and_match(mk)
    (lease,) = worker.lease(1)
    worker.fail(lease.job_id, "oops\x1b]0;pwned\x07\x1b[2J\u202eexe.gnp\nsecond line")
    failure = mk.client().job(job_id).failure
    assert "\x1b" not in failure and "\u202e" not in failure and "\x07" not in failure
    assert "oops\\x1b]0;pwned\\x07\\x1b[2J\\u202eexe.gnp\nsecond line" in failure
