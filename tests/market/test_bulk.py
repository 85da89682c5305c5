"""The market's bulk endpoints against the real app (uvicorn), real Redis and anvil:
POST /blobs/bundle, POST /blobs/fetch, POST /specs/batch, POST /results/batch, and the
MarketClient methods over them."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import pytest

from meshcompute.core.spec import JobSpec
from meshcompute.errors import AuthError, BadInput, NotFound
from meshcompute.wire.auth import sign_request
from meshcompute.wire.bundle import BundleHashMismatch, decode_bundle, encode_bundle
from tests.market.helpers import index_and_match, post, register, upload_spec

pytestmark = pytest.mark.anvil
REDIS_DB = 10
OCTETS = "application/octet-stream"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signed_post(mk, account, path: str, body: bytes, *, content_type: str = OCTETS,
                 headers: dict | None = None, content=None) -> httpx.Response:
    signed = sign_request(account, "POST", path, body, mk.world.deployment.chain_id, market=mk.url,
                          contract=mk.contract)
    signed["Content-Type"] = content_type
    signed.update(headers or {})
    return httpx.post(mk.url + path, content=body if content is None else content,
                      headers=signed, timeout=60)


def _fetch(mk, hashes: list[str]) -> httpx.Response:
    return httpx.post(mk.url + "/blobs/fetch", json={"sha256": hashes}, timeout=60)


def _stored(mk, sha: str) -> bool:
    return mk.rt.blobs.exists(sha)


# ---------------------------------------------------------------------- blob bundles
def test_bundle_upload_then_fetch_round_trip(mk):
    account = mk.world.clients[0].account
    blobs = [os.urandom(1000), b"", os.urandom(70_000), b"small"]
    response = _signed_post(mk, account, "/blobs/bundle", encode_bundle(blobs))
    assert response.status_code == 201, response.text
    answer = response.json()["blobs"]
    assert answer == [{"sha256": _sha(b), "size": len(b), "created": True} for b in blobs]
    # the same bundle again: nothing new, 200
    again = _signed_post(mk, account, "/blobs/bundle", encode_bundle(blobs))
    assert again.status_code == 200
    assert [item["created"] for item in again.json()["blobs"]] == [False] * 4
    # fetched in the order asked, duplicates included, as a bundle of exactly those bytes
    order = [_sha(blobs[2]), _sha(blobs[0]), _sha(blobs[2]), _sha(blobs[1])]
    fetched = _fetch(mk, order)
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == OCTETS
    assert fetched.content == encode_bundle([blobs[2], blobs[0], blobs[2], blobs[1]])
    decoded = decode_bundle(fetched.content, max_blobs=4, max_blob_bytes=1 << 20)
    assert [sha for sha, _ in decoded] == order
    # and each is an ordinary blob
    assert mk.client().get_blob(_sha(blobs[3])) == b"small"


def test_bundle_with_a_bad_hash_is_400_and_stores_nothing(mk):
    account = mk.world.clients[0].account
    good, bad, claimed = os.urandom(100), os.urandom(100), os.urandom(100)
    header = json.dumps({"blobs": [{"sha256": _sha(good), "size": 100},
                                   {"sha256": _sha(claimed), "size": 100}]}).encode()
    body = len(header).to_bytes(8, "little") + header + good + bad
    response = _signed_post(mk, account, "/blobs/bundle", body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "blob 1" in detail and _sha(bad) in detail and _sha(claimed) in detail
    assert not _stored(mk, _sha(good)) and not _stored(mk, _sha(claimed))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x01\x02", "truncated"),
        ((5).to_bytes(8, "little") + b"[1,2]", "must be a JSON object"),
        ((2).to_bytes(8, "little") + b"{}", "exactly the key 'blobs'"),
        (encode_bundle([b"abc"])[:-1], "add up to 3 bytes but 2 bytes follow"),
        (encode_bundle([]), "at least one blob"),
    ],
)
def test_malformed_bundle_is_422_naming_the_problem(mk, body, message):
    response = _signed_post(mk, mk.world.clients[0].account, "/blobs/bundle", body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_blob_over_the_blob_limit_in_a_bundle_is_413(mk):
    big = b"\x02" * (mk.settings.max_blob_bytes + 1)
    response = _signed_post(mk, mk.world.clients[0].account, "/blobs/bundle",
                            encode_bundle([b"fine", big]))
    assert response.status_code == 413, response.text
    assert "over the limit" in response.json()["detail"]
    assert not _stored(mk, _sha(b"fine"))


def test_bundle_over_the_bundle_limit_is_413(mk, monkeypatch):
    # the app's runtime reads these very settings
    monkeypatch.setattr(mk.settings, "max_bundle_bytes", 64 * 1024)
    account = mk.world.clients[0].account
    body = encode_bundle([os.urandom(40_000), os.urandom(40_000)])
    declared = _signed_post(mk, account, "/blobs/bundle", body)
    assert declared.status_code == 413, declared.text
    assert "exceeds the limit of 65536 bytes" in declared.json()["detail"]

    # streamed without a Content-Length: refused once the bytes pass the limit
    def chunks():
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    streamed = _signed_post(mk, account, "/blobs/bundle", body, content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert not any((mk.rt.blobs.root / ".tmp").iterdir())
    # just under the limit goes through
    small = encode_bundle([os.urandom(30_000), os.urandom(30_000)])
    assert _signed_post(mk, account, "/blobs/bundle", small).status_code == 201


def test_too_many_blobs_in_a_bundle_is_413(mk, monkeypatch):
    monkeypatch.setattr(mk.settings, "max_bundle_blobs", 2)
    response = _signed_post(mk, mk.world.clients[0].account, "/blobs/bundle",
                            encode_bundle([b"1", b"2", b"3"]))
    assert response.status_code == 413
    assert "3 blobs, more than the limit of 2" in response.json()["detail"]


def test_bundle_upload_must_be_signed_over_its_body(mk):
    account = mk.world.clients[0].account
    body = encode_bundle([b"signed bytes"])
    unsigned = httpx.post(mk.url + "/blobs/bundle", content=body,
                          headers={"Content-Type": OCTETS})
    assert unsigned.status_code == 401
    assert "missing header X-Mesh-" in unsigned.json()["detail"]
    # signed over another body
    headers = sign_request(account, "POST", "/blobs/bundle", encode_bundle([b"other"]), 31337,
                           market=mk.url, contract=mk.contract)
    swapped = httpx.post(mk.url + "/blobs/bundle", content=body, headers=headers)
    assert swapped.status_code == 401
    assert "body does not match the signed X-Mesh-Body-Sha256" in swapped.json()["detail"]
    # replayed
    headers = sign_request(account, "POST", "/blobs/bundle", body, 31337, market=mk.url,
                           contract=mk.contract)
    first = httpx.post(mk.url + "/blobs/bundle", content=body, headers=headers)
    again = httpx.post(mk.url + "/blobs/bundle", content=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 401)
    assert "already used" in again.json()["detail"]
    assert not _stored(mk, _sha(b"other"))


def test_fetch_refuses_missing_bad_and_oversized(mk, monkeypatch):
    client = mk.client(mk.world.clients[0].account)
    present = client.put_blob(b"here")
    missing, later = "ab" * 32, "cd" * 32
    response = _fetch(mk, [present, missing, later])
    assert response.status_code == 404
    assert f"blob {missing} is not in the store" in response.json()["detail"]
    assert _fetch(mk, ["AB" * 32]).status_code == 422
    assert _fetch(mk, []).status_code == 422
    assert httpx.post(mk.url + "/blobs/fetch", json={"sha256": [present], "x": 1}).status_code \
        == 422
    big = client.put_blob(os.urandom(50_000))
    monkeypatch.setattr(mk.settings, "max_bundle_bytes", 64 * 1024)
    assert _fetch(mk, [big]).status_code == 200
    too_big = _fetch(mk, [big, big])
    assert too_big.status_code == 413
    assert "over the limit of 65536 bytes" in too_big.json()["detail"]
    monkeypatch.setattr(mk.settings, "max_bundle_blobs", 2)
    many = _fetch(mk, [present] * 3)
    assert many.status_code == 422 and "more than the limit of 2" in many.json()["detail"]


# ---------------------------------------------------------------------- specs
def test_specs_batch_stores_all_or_none(mk):
    client = mk.client(mk.world.clients[0].account)
    program = client.put_blob(b"program " + os.urandom(8))
    inputs = [client.put_blob(b"inputs " + os.urandom(8)) for _ in range(2)]
    good = [JobSpec(program=program, inputs=sha) for sha in inputs]
    missing = "ef" * 32
    bad = JobSpec(program=program, inputs=missing)
    with pytest.raises(BadInput, match=f"spec 2: inputs blob {missing} is not in the store"):
        client.put_specs([*good, bad])
    assert not any(_stored(mk, spec.sha256) for spec in good)
    # an invalid spec is named by its index too
    body = {"specs": [good[0].to_json(), {"program": program, "inputs": inputs[0],
                                          "shards": 2}]}
    response = _signed_post(mk, client.account, "/specs/batch",
                            json.dumps(body).encode(), content_type="application/json")
    assert response.status_code == 422 and "spec 1:" in response.json()["detail"]
    assert not _stored(mk, good[0].sha256)
    assert client.put_specs(good) == [spec.sha256 for spec in good]
    assert all(_stored(mk, spec.sha256) for spec in good)
    assert JobSpec.from_bytes(client.get_blob(good[1].sha256)) == good[1]
    empty = _signed_post(mk, client.account, "/specs/batch", b'{"specs":[]}',
                         content_type="application/json")
    assert empty.status_code == 422


def test_specs_batch_must_be_signed(mk):
    response = httpx.post(mk.url + "/specs/batch", json={"specs": []})
    assert response.status_code == 401


# ---------------------------------------------------------------------- results
def test_results_batch_saves_all_or_none(mk):
    worker = register(mk, mk.world.workers[0])
    client = mk.client(mk.world.clients[0].account)
    held = [post(mk, upload_spec(client)) for _ in range(2)]
    index_and_match(mk)
    leases = worker.lease(4)
    assert sorted(lease.job_id for lease in leases) == sorted(held)
    not_held = post(mk, upload_spec(client))  # posted after matching: offered to nobody
    mk.rt.indexer.sync()
    outputs = worker.put_blobs([b"out 1", b"out 2", b"out 3"])
    with pytest.raises(AuthError, match=f"holds no lease on job {not_held}") as caught:
        worker.submit_results([(held[0], outputs[0]), (not_held, outputs[2])])
    assert "403" in str(caught.value)
    with pytest.raises(NotFound, match="job 987654 is not known"):
        worker.submit_results([(held[0], outputs[0]), (987654, outputs[2])])
    missing = "cd" * 32
    with pytest.raises(BadInput, match=f"job {held[1]}: output blob {missing} is not in"):
        worker.submit_results([(held[0], outputs[0]), (held[1], missing)])
    with pytest.raises(BadInput, match=f"job {held[0]} appears more than once"):
        worker.submit_results([(held[0], outputs[0]), (held[0], outputs[1])])
    assert mk.rt.state.result(held[0]) is None and mk.rt.state.result(held[1]) is None
    # another worker cannot report them
    other = register(mk, mk.world.workers[1])
    with pytest.raises(AuthError, match="holds no lease"):
        other.submit_results([(held[0], outputs[0])])
    answer = worker.submit_results([(held[1], outputs[1]), (held[0], outputs[0])])
    expiry = {lease.job_id: lease.lease_expiry for lease in leases}
    assert answer == [
        {"job_id": held[1], "output_sha256": outputs[1], "lease_expiry": expiry[held[1]]},
        {"job_id": held[0], "output_sha256": outputs[0], "lease_expiry": expiry[held[0]]},
    ]
    assert mk.rt.state.result(held[0])["output_sha256"] == outputs[0]
    # not named to anyone before the worker commits it on chain (the client could fetch it
    # and cancel the job unpaid)
    assert mk.client().job(held[1]).output_sha256 is None


def test_results_batch_is_not_taken_for_a_job_id(mk):
    # POST /results/batch must not fall through to POST /results/{job_id}
    response = httpx.post(mk.url + "/results/batch", json={"results": []})
    assert response.status_code == 401
    body = b'{"results":[]}'
    response = _signed_post(mk, mk.world.workers[0].account, "/results/batch", body,
                            content_type="application/json")
    assert response.status_code == 422 and "results" in response.json()["detail"]


# ---------------------------------------------------------------------- the client
def test_client_bulk_methods_round_trip(mk, monkeypatch):
    client = mk.client(mk.world.clients[0].account)
    blobs = [os.urandom(n) for n in (10, 20_000, 30_000, 5, 0, 40_000)] + [b"dup", b"dup"]
    calls: list[str] = []
    original = client._http.request

    def counting(method, path, **kw):
        calls.append(f"{method} {path}")
        return original(method, path, **kw)

    monkeypatch.setattr(client._http, "request", counting)
    streaming = client._http.stream  # downloads are streamed (and capped)

    def counting_stream(method, path, **kw):
        calls.append(f"{method} {path}")
        return streaming(method, path, **kw)

    monkeypatch.setattr(client._http, "stream", counting_stream)
    # a 32 KiB budget and 3 blobs a bundle: splits into several bundles, the 40 000-byte
    # blob alone through PUT /blobs/{sha}
    shas = client.put_blobs(blobs, max_bundle_bytes=32 * 1024, max_blobs=3)
    assert shas == [_sha(b) for b in blobs]
    assert calls.count("POST /blobs/bundle") == 3
    assert f"PUT /blobs/{_sha(blobs[5])}" in calls
    assert all(_stored(mk, sha) for sha in shas)
    calls.clear()
    got = client.get_blobs(shas, max_blobs=4)
    assert list(got) == list(dict.fromkeys(shas))
    assert all(got[_sha(b)] == b for b in blobs)
    assert calls == ["POST /blobs/fetch"] * 2
    assert client.get_blobs([]) == {} and client.put_blobs([]) == []
    with pytest.raises(NotFound, match="is not in the store"):
        client.get_blobs([shas[0], "ee" * 32])
    # a market that refuses the bundle as too big is asked for halves, then single blobs
    monkeypatch.setattr(mk.settings, "max_bundle_bytes", 35_000)
    calls.clear()
    got = client.get_blobs([_sha(blobs[1]), _sha(blobs[2]), _sha(blobs[5])])
    assert got[_sha(blobs[5])] == blobs[5] and got[_sha(blobs[2])] == blobs[2]
    assert f"GET /blobs/{_sha(blobs[5])}" in calls
    # specs
    spec = JobSpec(program=shas[0], inputs=shas[1])
    other = JobSpec(program=shas[0], inputs=shas[2], device="cpu", time_limit_s=5)
    assert client.put_specs([spec, other], max_specs=1) == [spec.sha256, other.sha256]
    assert client.put_specs([]) == []


def test_client_get_blobs_refuses_a_lying_market():
    real, fake = b"the real bytes", b"other bytes!!!"

    def handler(request: httpx.Request) -> httpx.Response:
        header = json.dumps({"blobs": [{"sha256": _sha(real), "size": len(fake)}]}).encode()
        return httpx.Response(200, content=len(header).to_bytes(8, "little") + header + fake)

    from meshcompute.wire.market_client import MarketClient

    client = MarketClient("http://market", None, 31337, transport=httpx.MockTransport(handler))
    with pytest.raises(BundleHashMismatch, match="hashes to"):
        client.get_blobs([_sha(real)])

    def wrong_blob(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=encode_bundle([fake]))

    client = MarketClient("http://market", None, 31337, transport=httpx.MockTransport(wrong_blob))
    with pytest.raises(BadInput, match="names blobs"):
        client.get_blobs([_sha(real)])


# ---------------------------------------------------------------------- the schema
def test_openapi_describes_the_bulk_endpoints(mk):
    schema = httpx.get(mk.url + "/openapi.json").json()
    paths = schema["paths"]
    bundle = paths["/blobs/bundle"]["post"]
    assert OCTETS in bundle["requestBody"]["content"]
    assert OCTETS in paths["/blobs/fetch"]["post"]["responses"]["200"]["content"]
    assert "application/json" in paths["/blobs/fetch"]["post"]["requestBody"]["content"]
    assert "post" in paths["/specs/batch"] and "post" in paths["/results/batch"]
