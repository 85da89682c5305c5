"""Upload quotas against the real market (uvicorn, Redis, anvil): a key with no stake or
escrow gets a small allowance from a shared pool, stake and open escrow raise it, and a
refused upload stores nothing (HTTP 429 naming the numbers)."""

from __future__ import annotations

import hashlib
import os

import pytest
from eth_account import Account

from meshcompute.core.spec import JobSpec
from meshcompute.errors import BadInput
from tests.market.helpers import index_and_match, post

pytestmark = pytest.mark.anvil
REDIS_DB = 15
MARKET_SETTINGS = {"quota_base_bytes": 4096, "quota_bytes_per_credit": 64,
                   "quota_strangers_bytes": 6000}


def _blob(size: int) -> bytes:
    return os.urandom(size)


def _stored(mk, data: bytes) -> bool:
    return mk.rt.blobs.exists(hashlib.sha256(data).hexdigest())


def _stranger(mk):
    return mk.client(Account.create())


def test_a_fresh_key_gets_the_base_allowance_and_nothing_more(mk):
    stranger = _stranger(mk)
    first = _blob(3000)
    stranger.put_blob(first)
    # uploading a stored blob again would keep it longer: it counts like a new one
    with pytest.raises(BadInput, match="3000 bytes uploaded in the window plus 3000"):
        stranger.put_blob(first)
    over = _blob(2000)
    with pytest.raises(BadInput, match="HTTP 429") as caught:
        stranger.put_blob(over)
    assert "3000 bytes uploaded in the window plus 2000 exceeds the allowance of 4096" in str(
        caught.value)
    assert not _stored(mk, over)
    with pytest.raises(BadInput, match="allowance of 4096"):
        stranger.put_blobs([_blob(500), _blob(700)])  # a bundle counts the same bytes
    stranger.put_blob(_blob(1000))  # what fits still goes in


def test_fresh_keys_share_one_pool_and_never_crowd_out_staked_workers(mk):
    for _ in range(2):
        _stranger(mk).put_blob(_blob(3000))
    late = _blob(100)
    with pytest.raises(BadInput, match="pool for addresses without stake or escrow is full"):
        _stranger(mk).put_blob(late)
    assert not _stored(mk, late)
    # a staked worker uploads from its own allowance (its stake's credits)
    worker = mk.client(mk.world.workers[0].account)
    output = _blob(20_000)
    worker.put_blob(output)
    assert _stored(mk, output)


def test_a_clients_open_escrow_raises_its_allowance(mk):
    actor = mk.world.clients[1]
    client = mk.client(actor.account)
    program, inputs = _blob(1500), _blob(1500)
    spec = JobSpec(program=client.put_blob(program), inputs=client.put_blob(inputs))
    client.put_spec(spec)
    more = _blob(3000)
    with pytest.raises(BadInput, match="HTTP 429"):
        client.put_blob(more)
    post(mk, spec, client=actor)  # escrow: the test params' reward and audit fee
    index_and_match(mk)
    client.put_blob(more)
    assert _stored(mk, more)


def test_uploads_side_by_side_never_pass_the_pool_together(mk):
    from concurrent.futures import ThreadPoolExecutor

    def upload(_: int) -> int:
        data = _blob(1000)
        try:
            _stranger(mk).put_blob(data)
        except BadInput:
            return 0
        return len(data)

    with ThreadPoolExecutor(12) as pool:
        accepted = sum(pool.map(upload, range(12)))
    assert 0 < accepted <= MARKET_SETTINGS["quota_strangers_bytes"]


def test_a_failed_upload_gives_its_reservation_back(mk):
    import httpx

    from meshcompute.wire.auth import sign_request

    account = Account.create()
    client = mk.client(account)
    claimed = hashlib.sha256(b"what was promised").hexdigest()
    for _ in range(3):  # 3 x 3000 bytes that do not hash to their name: 400, nothing kept
        headers = sign_request(account, "PUT", f"/blobs/{claimed}", b"", 31337,
                               body_sha256=claimed, market=mk.url, contract=mk.contract)
        answer = httpx.put(f"{mk.url}/blobs/{claimed}", content=_blob(3000), headers=headers)
        assert answer.status_code == 400
    client.put_blob(_blob(4000))  # the whole allowance is still there
