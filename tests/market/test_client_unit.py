"""MarketClient without a market: wire forms, error mapping, signing (httpx MockTransport)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import httpx
import pytest
from eth_account import Account

from meshcompute.chain.tickets import AssignTicket
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec
from meshcompute.errors import AuthError, BadInput, Conflict, NotFound, ServiceUnavailable
from meshcompute.wire.auth import verify_request
from meshcompute.wire.market_client import (
    Lease,
    MarketClient,
    record_from_json,
    record_to_json,
)

WORKER = Account.from_key("0x" + "33" * 32)
RECORD = JobRecord(
    client=Account.from_key("0x" + "44" * 32).address,
    worker=WORKER.address,
    auditor="0x" + "00" * 20,
    reward=2**80 + 1,
    audit_fee=10,
    collateral=5 * 10**18,
    deadline=1_800_000_000,
    lease_expiry=1_700_000_000,
    committed_at=0,
    committed_block=0,
    resolved_at=0,
    audit_bps=500,
    state=JobState.ASSIGNED,
    spec_hash=b"\x01" * 32,
    result_hash=b"\x00" * 32,
)
SPEC = JobSpec(program="a" * 64, inputs="b" * 64)


def test_record_round_trips_through_json():
    data = record_to_json(RECORD)
    assert data["reward"] == str(2**80 + 1)
    assert data["state"] == int(JobState.ASSIGNED)
    assert data["spec_hash"] == "0x" + "01" * 32
    assert record_from_json(json.loads(json.dumps(data))) == RECORD


def test_malformed_record_names_the_field():
    data = record_to_json(RECORD)
    del data["collateral"]
    with pytest.raises(BadInput, match="collateral"):
        record_from_json(data)


def test_lease_round_trips_through_json():
    ticket = AssignTicket(WORKER.address, (7,), 500, 1_700_000_000)
    lease = Lease(7, SPEC, SPEC.sha256, RECORD, ticket, b"\x05" * 65, 1_700_000_000)
    assert Lease.from_json(json.loads(json.dumps(lease.to_json()))) == lease


CONTRACT = "0x" + "ab" * 20


def _client(handler, account=WORKER) -> MarketClient:
    return MarketClient("http://market.test", account, 31337, contract=CONTRACT,
                        transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadInput), (401, AuthError), (403, AuthError), (404, NotFound), (409, Conflict),
     (413, BadInput), (422, BadInput), (503, ServiceUnavailable)],
)
def test_http_errors_map_to_the_error_tree_with_detail(status, error):
    client = _client(lambda request: httpx.Response(status, json={"detail": "job 9 is odd"}))
    with pytest.raises(error, match="job 9 is odd"):
        client.job(9)


def test_unreachable_market_names_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = MarketClient(f"http://127.0.0.1:{port}", WORKER, 31337, timeout=2)
    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}"):
        client.health()


def test_get_blob_checks_the_hash():
    good = b"payload"
    sha = hashlib.sha256(good).hexdigest()
    assert _client(lambda r: httpx.Response(200, content=good)).get_blob(sha) == good
    lying = _client(lambda r: httpx.Response(200, content=b"other"))
    with pytest.raises(BadInput, match="hashes to"):
        lying.get_blob(sha)
    assert lying.get_blob(sha, verify=False) == b"other"


def test_signed_requests_carry_verifiable_headers():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen["signer"] = verify_request(
            request.headers, request.method, request.url.path, body, 31337, now=time.time(),
            markets=[request.headers["host"]], contract=CONTRACT,
        )
        seen["body"] = json.loads(body)
        return httpx.Response(200, json={"leases": []})

    assert _client(handler).lease(max_jobs=3) == []
    assert seen == {"signer": WORKER.address, "body": {"max_jobs": 3}}


def test_put_file_streams_and_signs_over_the_blob_hash(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"z" * (3 << 20))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen["signer"] = verify_request(
            request.headers, request.method, request.url.path, body, 31337, now=time.time(),
            markets=[request.headers["host"]], contract=CONTRACT,
        )
        seen["path"] = request.url.path
        return httpx.Response(201, json={"sha256": sha})

    assert _client(handler).put_file(path) == sha
    assert seen == {"signer": WORKER.address, "path": f"/blobs/{sha}"}


def test_client_without_account_refuses_signed_calls():
    client = MarketClient("http://market.test", None, 31337,
                          transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(AuthError, match="no account"):
        client.lease(1)


def test_downloads_stop_at_the_node_limit_whatever_the_market_sends() -> None:
    data = b"x" * 5000
    sha = hashlib.sha256(data).hexdigest()

    def honest_length(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data)

    def no_length(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([data[:2500], data[2500:]]))  # chunked

    ok = MarketClient("http://m", transport=httpx.MockTransport(honest_length),
                      max_download_bytes=5000)
    assert ok.get_blob(sha) == data
    for handler in (honest_length, no_length):
        small = MarketClient("http://m", transport=httpx.MockTransport(handler),
                             max_download_bytes=4096)
        with pytest.raises(BadInput, match="download limit of 4096 bytes"):
            small.get_blob(sha)
        with pytest.raises(BadInput, match="download limit of 4096 bytes"):
            small.get_blobs([sha])
    with pytest.raises(BadInput, match="max_download_bytes"):
        MarketClient("http://m", max_download_bytes=0)


def test_a_refused_download_is_the_markets_error() -> None:
    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "blob is not in the store"})

    client = MarketClient("http://m", transport=httpx.MockTransport(missing))
    with pytest.raises(NotFound, match="not in the store"):
        client.get_blob("ab" * 32)


def test_a_rate_limited_signed_request_is_signed_afresh_before_it_goes_again(monkeypatch):
    """The market claims a nonce before it counts the rate: the retry after a 429 must carry a
    new nonce (and still verify), or the market would refuse it as a replay."""
    monkeypatch.setattr(time, "sleep", lambda s: None)
    nonces = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        verify_request(request.headers, request.method, request.url.path, body, 31337,
                       now=time.time(), markets=[request.headers["host"]], contract=CONTRACT)
        nonces.append(request.headers["x-mesh-nonce"])
        if len(nonces) < 3:
            return httpx.Response(429, headers={"Retry-After": "1"},
                                  json={"detail": "too many"})
        return httpx.Response(200, json={"leases": []})

    assert _client(handler).lease(max_jobs=1) == []
    assert len(nonces) == 3 and len(set(nonces)) == 3
