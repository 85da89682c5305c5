"""The market API against the real app (uvicorn), real Redis and anvil: auth, blobs, bad
input, the worker's lease cycle and eligibility by stake."""

from __future__ import annotations

import hashlib
import json
import os
import time

import httpx
import pytest
from eth_account import Account

from meshcompute.chain.tickets import recover_ticket_signer
from meshcompute.core.job import JobState
from meshcompute.core.spec import JobSpec, client_group
from meshcompute.errors import AuthError, BadInput, Conflict, NotFound
from meshcompute.market import rounds
from meshcompute.units import TOKEN
from meshcompute.wire.auth import HEADER_EXPIRES, sign_request
from tests.market.helpers import (
    CPU,
    index_and_match,
    pass_chain_time,
    post,
    register,
    upload_spec,
)

pytestmark = pytest.mark.anvil
REDIS_DB = 11
STRANGER = Account.from_key("0x" + "5a" * 32)


def _signed_post(mk, account, path: str, body: bytes, **kw) -> httpx.Response:
    headers = sign_request(account, "POST", path, body, mk.world.deployment.chain_id, **kw,
                           market=mk.url, contract=mk.contract)
    headers["Content-Type"] = "application/json"
    return httpx.post(mk.url + path, content=body, headers=headers)


def test_health_and_info(mk):
    client = mk.client()
    health = client.health()
    assert health["status"] == "ok" and health["redis"] == "ok"
    assert health["chain_id"] == 31337 and health["head_block"] > 0
    info = client.info()
    assert info.assigner == mk.world.assigner.address
    assert info.addresses["JobMarket"] == mk.world.deployment.address("JobMarket")
    assert info.max_blob_bytes == mk.settings.max_blob_bytes


# ---------------------------------------------------------------------- authentication
def test_replayed_request_is_refused(mk):
    worker = mk.world.workers[0].account
    register(mk, worker)
    body = b'{"running":[]}'
    headers = sign_request(worker, "POST", "/workers/heartbeat", body, 31337, market=mk.url,
                           contract=mk.contract)
    headers["Content-Type"] = "application/json"
    first = httpx.post(mk.url + "/workers/heartbeat", content=body, headers=headers)
    assert first.status_code == 200, first.text
    again = httpx.post(mk.url + "/workers/heartbeat", content=body, headers=headers)
    assert again.status_code == 401
    assert "already used" in again.json()["detail"]


def test_expired_request_is_refused(mk):
    worker = mk.world.workers[0].account
    response = _signed_post(mk, worker, "/leases", b'{"max_jobs":1}', now=time.time() - 120)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_expiry_too_far_ahead_is_refused(mk):
    worker = mk.world.workers[0].account
    response = _signed_post(mk, worker, "/leases", b'{"max_jobs":1}', now=time.time() + 3600)
    assert response.status_code == 401
    assert "ahead" in response.json()["detail"]


def test_wrong_signer_is_refused(mk):
    body = b'{"max_jobs":1}'
    headers = sign_request(STRANGER, "POST", "/leases", body, 31337, market=mk.url,
                           contract=mk.contract)
    headers["X-Mesh-Address"] = mk.world.workers[0].address
    response = httpx.post(mk.url + "/leases", content=body, headers=headers)
    assert response.status_code == 401
    assert "signature does not match" in response.json()["detail"]


def test_signature_for_another_chain_is_refused(mk):
    body = b'{"max_jobs":1}'
    headers = sign_request(mk.world.workers[0].account, "POST", "/leases", body, 1, market=mk.url,
                           contract=mk.contract)
    response = httpx.post(mk.url + "/leases", content=body, headers=headers)
    assert response.status_code == 401


def test_unsigned_request_names_the_missing_header(mk):
    response = httpx.post(mk.url + "/leases", json={"max_jobs": 1})
    assert response.status_code == 401
    assert "missing header X-Mesh-" in response.json()["detail"]


# ---------------------------------------------------------------------- blobs
def test_blob_upload_and_download(mk):
    client = mk.client(mk.world.clients[0].account)
    data = os.urandom(1000)
    sha = client.put_blob(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert client.get_blob(sha) == data
    body = b"again"
    again_sha = hashlib.sha256(body).hexdigest()
    first = httpx.put(mk.url + f"/blobs/{again_sha}", content=body,
                      headers=sign_request(client.account, "PUT", f"/blobs/{again_sha}", b"",
                                           31337, body_sha256=again_sha, market=mk.url,
                                           contract=mk.contract))
    second = httpx.put(mk.url + f"/blobs/{again_sha}", content=body,
                       headers=sign_request(client.account, "PUT", f"/blobs/{again_sha}", b"",
                                            31337, body_sha256=again_sha, market=mk.url,
                                            contract=mk.contract))
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == {"sha256": again_sha, "size": 5, "created": False}


def test_blob_streamed_upload_of_a_large_file(mk, tmp_path):
    client = mk.client(mk.world.clients[0].account)
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    sha = client.put_file(path)
    assert client.get_blob(sha) == path.read_bytes()
    assert mk.rt.blobs.path(sha).stat().st_size == 3 * 1024 * 1024 + 17
    assert not any((mk.rt.blobs.root / ".tmp").iterdir())  # no temporary left behind


def test_blob_hash_mismatch_is_400_and_not_stored(mk):
    account = mk.world.clients[0].account
    claimed = hashlib.sha256(b"what I claim").hexdigest()
    headers = sign_request(account, "PUT", f"/blobs/{claimed}", b"", 31337, body_sha256=claimed,
                           market=mk.url, contract=mk.contract)
    response = httpx.put(mk.url + f"/blobs/{claimed}", content=b"something else",
                         headers=headers)
    assert response.status_code == 400
    assert "hash to" in response.json()["detail"] and claimed in response.json()["detail"]
    with pytest.raises(NotFound):
        mk.client().get_blob(claimed)


def test_blob_over_the_size_limit_is_413(mk, tmp_path):
    client = mk.client(mk.world.clients[0].account)
    path = tmp_path / "huge.bin"
    path.write_bytes(b"\x00" * (mk.settings.max_blob_bytes + 1))
    with pytest.raises(BadInput, match="413") as caught:
        client.put_file(path)
    assert "exceeds the limit" in str(caught.value)
    # streamed without a declared length: refused once the bytes pass the limit
    data = b"\x01" * (mk.settings.max_blob_bytes + 10)
    sha = hashlib.sha256(data).hexdigest()

    def chunks():
        for start in range(0, len(data), 1 << 20):
            yield data[start:start + (1 << 20)]

    headers = sign_request(client.account, "PUT", f"/blobs/{sha}", b"", 31337, body_sha256=sha,
                           market=mk.url, contract=mk.contract)
    response = httpx.put(mk.url + f"/blobs/{sha}", content=chunks(), headers=headers)
    assert response.status_code == 413


def test_unknown_blob_is_404_and_bad_name_is_422(mk):
    with pytest.raises(NotFound, match="not in the store"):
        mk.client().get_blob("0" * 64)
    assert httpx.get(mk.url + "/blobs/not-a-hash").status_code == 422


# ---------------------------------------------------------------------- bad input
def test_malformed_json_is_422_naming_it(mk):
    response = _signed_post(mk, mk.world.workers[0].account, "/leases", b'{"max_jobs": ')
    assert response.status_code == 422
    assert "malformed JSON" in response.json()["detail"]


def test_deeply_nested_json_is_refused_and_the_market_lives_on(mk):
    body = b'{"max_jobs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    # unsigned: refused from its headers, never parsed
    response = httpx.post(mk.url + "/leases", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 401
    # signed by anyone (a fresh key costs nothing): parsed, and refused
    response = _signed_post(mk, STRANGER, "/leases", body)
    assert response.status_code in (400, 422)
    assert httpx.get(mk.url + "/health", timeout=10).status_code == 200


def _unread_upload(mk, path: str, headers: dict[str, str], size: int) -> httpx.Response:
    """POST ``size`` bytes to ``path``, sending them lazily and counting what the market
    read: the answer, with ``sent`` (bytes sent before it came) on the response."""
    sent = 0

    def body():
        nonlocal sent
        while sent < size:
            chunk = b"x" * min(1 << 20, size - sent)
            sent += len(chunk)
            yield chunk

    try:
        response = httpx.post(mk.url + path, content=body(),
                              headers={**headers, "Content-Length": str(size)}, timeout=30)
    except httpx.TransportError:  # the market hung up on the rest of the body: fine
        pytest.fail(f"no answer to a {size}-byte body on {path}")
    response.sent = sent  # type: ignore[attr-defined]
    return response


def test_an_unsigned_body_is_refused_401_before_it_is_read(mk):
    size = 300 << 20
    response = _unread_upload(mk, "/workers", {"Content-Type": "application/json"}, size)
    assert response.status_code == 401
    assert "missing header X-Mesh-Address" in response.json()["detail"]
    assert response.sent < size // 4  # the answer came long before the body was through
    assert httpx.get(mk.url + "/health", timeout=10).status_code == 200


def test_a_signed_body_over_the_json_limit_is_413_and_one_signed_for_other_bytes_401(mk):
    limit = mk.settings.max_json_body_bytes
    body = b'{"running": [' + b"1," * (limit // 2) + b'1]}'
    response = _signed_post(mk, STRANGER, "/workers/heartbeat", body)
    assert response.status_code == 413
    assert f"exceeds the limit of {limit} bytes (max_json_body_bytes)" in (
        response.json()["detail"])
    # the headers of one body, the bytes of another
    headers = sign_request(STRANGER, "POST", "/leases", b'{"max_jobs":1}', 31337, market=mk.url,
                           contract=mk.contract)
    headers["Content-Type"] = "application/json"
    response = httpx.post(mk.url + "/leases", content=b'{"max_jobs":64}', headers=headers)
    assert response.status_code == 401
    assert "body does not match the signed X-Mesh-Body-Sha256" in response.json()["detail"]


def test_public_and_bodiless_routes_read_no_more_than_their_limit(mk):
    limit = mk.settings.max_json_body_bytes
    response = _unread_upload(mk, "/blobs/fetch", {"Content-Type": "application/json"},
                              limit + 1)
    assert response.status_code == 413
    assert "max_json_body_bytes" in response.json()["detail"]
    # a body sent where none is taken (an unknown path too) is refused unread
    for path in ("/nowhere", "/health"):
        response = _unread_upload(mk, path, {}, 300 << 20)
        assert response.status_code == 413, path
        assert "takes no body" in response.json()["detail"]
        assert response.sent < 300 << 18
    assert httpx.get(mk.url + "/health", timeout=10).status_code == 200


def test_unknown_field_is_422_naming_it(mk):
    register(mk, mk.world.workers[0])
    response = _signed_post(mk, mk.world.workers[0].account, "/leases",
                            b'{"max_jobs": 1, "gimme": true}')
    assert response.status_code == 422
    assert "body.gimme: unknown field" in response.json()["detail"]


def test_out_of_range_value_is_422(mk):
    response = _signed_post(mk, mk.world.workers[0].account, "/leases", b'{"max_jobs": 0}')
    assert response.status_code == 422
    assert "max_jobs" in response.json()["detail"]


def test_unknown_job_is_404(mk):
    with pytest.raises(NotFound, match="job 987654 is not known"):
        mk.client().job(987654)


def test_spec_with_missing_blob_is_422_naming_it(mk):
    client = mk.client(mk.world.clients[0].account)
    program = client.put_blob(b"a program")
    missing = "ab" * 32
    with pytest.raises(BadInput, match=f"inputs blob {missing} is not in the store"):
        client.put_spec(JobSpec(program=program, inputs=missing))


def test_invalid_spec_is_422(mk):
    account = mk.world.clients[0].account
    body = json.dumps({"program": "a" * 64, "inputs": "b" * 64, "shards": 2}).encode()
    response = _signed_post(mk, account, "/specs", body)
    assert response.status_code == 422
    assert "group" in response.json()["detail"]


def test_unstaked_address_cannot_register(mk):
    with pytest.raises(AuthError, match="has no stake on chain") as caught:
        mk.client(STRANGER).register(CPU, price_wei=0, slots=1)
    assert "403" in str(caught.value)
    assert mk.client().health()["status"] == "ok"  # and the service keeps serving


def test_unregistered_worker_cannot_lease(mk):
    with pytest.raises(AuthError, match="not a registered worker"):
        mk.client(mk.world.workers[1].account).lease(1)


def test_result_for_a_job_not_held_is_403(mk):
    owner = register(mk, mk.world.workers[0])
    other = register(mk, mk.world.workers[1])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    index_and_match(mk)
    leases = owner.lease(4) + other.lease(4)
    assert [lease.job_id for lease in leases] == [job_id]
    holder, outsider = (owner, other) if leases[0].ticket.worker == owner.address else (
        other, owner)
    output = outsider.put_blob(b"my output")
    with pytest.raises(AuthError, match=f"holds no lease on job {job_id}"):
        outsider.submit_result(job_id, output)
    with pytest.raises(NotFound):
        outsider.submit_result(job_id + 1000, output)
    missing = "cd" * 32
    with pytest.raises(BadInput, match=f"output blob {missing} is not in the store"):
        holder.submit_result(job_id, missing)
    assert holder.submit_result(job_id, holder.put_blob(b"the output"))["job_id"] == job_id


# ---------------------------------------------------------------------- the lease cycle
def test_lease_carries_a_valid_ticket_and_renews(mk):
    worker = register(mk, mk.world.workers[0])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    report = index_and_match(mk)
    assert report.offered == [(job_id, worker.address)]
    (lease,) = worker.lease(4)
    assert lease.job_id == job_id and lease.spec == spec and lease.spec_sha256 == spec.sha256
    assert lease.record.state == JobState.POSTED
    assert lease.ticket.worker == worker.address and lease.ticket.job_ids == (job_id,)
    market = mk.world.deployment.address("JobMarket")
    assert recover_ticket_signer(lease.ticket, lease.signature, chain_id=31337,
                                 job_market=market) == mk.world.assigner.address
    assert worker.lease(4) == []  # nothing more on offer
    time.sleep(1.1)
    renewed = worker.renew(job_id)
    assert renewed.lease_expiry > lease.lease_expiry
    view = mk.client().job(job_id)
    assert view.state == JobState.POSTED and view.spec == spec and view.failure is None


def test_release_gives_the_job_to_another_worker(mk):
    first = register(mk, mk.world.workers[0])
    second = register(mk, mk.world.workers[1])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    ((_, chosen),) = index_and_match(mk).offered
    holder, other = (first, second) if chosen == first.address else (second, first)
    (lease,) = holder.lease(1)
    holder.release(job_id)
    with pytest.raises(AuthError):
        holder.release(job_id)
    # the released lease's ticket is valid on chain until its expiry: the old holder could
    # still commit with it, so nobody else is offered the job (and races it) before then
    assert rounds.match_round(mk.rt).offered == []
    pass_chain_time(mk, lease.lease_expiry + 1)
    assert rounds.match_round(mk.rt).offered == [(job_id, other.address)]
    assert [item.job_id for item in other.lease(1)] == [job_id]
    assert mk.rt.state.held_for_tickets(mk.rt.chain_now()) == set()


def test_failed_run_is_reported_and_not_retried_on_that_worker(mk):
    worker = register(mk, mk.world.workers[0])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    index_and_match(mk)
    worker.lease(1)
    worker.fail(job_id, "program uses an operator outside the allowlist: aten::from_file")
    view = mk.client().job(job_id)
    assert "aten::from_file" in view.failure and worker.address in view.failure
    assert rounds.match_round(mk.rt).offered == []


def test_expired_lease_goes_back_to_the_queue_and_is_counted(mk):
    first = register(mk, mk.world.workers[0])
    second = register(mk, mk.world.workers[1])
    spec = upload_spec(mk.client(mk.world.clients[0].account))
    job_id = post(mk, spec)
    ((_, chosen),) = index_and_match(mk).offered
    holder, other = (first, second) if chosen == first.address else (second, first)
    (lease,) = holder.lease(1)
    pass_chain_time(mk, lease.lease_expiry)
    report = rounds.expire_round(mk.rt)
    assert report.expired_leases == [job_id]
    assert rounds.expire_round(mk.rt).expired_leases == []  # idempotent
    with pytest.raises(AuthError):
        holder.submit_result(job_id, holder.put_blob(b"too late"))
    assert rounds.match_round(mk.rt).offered == [(job_id, other.address)]
    metrics = httpx.get(mk.url + "/metrics").text
    assert "mesh_lease_expiries_total 1.0" in metrics
    assert 'mesh_jobs{state="posted"} 1.0' in metrics
    assert "mesh_indexer_lag_blocks" in metrics


def test_job_with_missing_or_bad_spec_gets_a_failure_reason(mk):
    register(mk, mk.world.workers[0])
    missing_id = post(mk, spec_hash=os.urandom(32))
    junk_sha = mk.client(mk.world.clients[0].account).put_blob(b"{not json")
    junk_id = post(mk, spec_hash=bytes.fromhex(junk_sha))
    report = index_and_match(mk)
    assert report.offered == []
    assert "is not in the market's blob store" in report.spec_problems[missing_id]
    assert "not a valid job spec" in mk.client().job(junk_id).failure


# ---------------------------------------------------------------------- eligibility
def test_job_goes_only_to_workers_whose_free_stake_covers_collateral(mk):
    worker = register(mk, mk.world.workers[0], slots=8)
    client = mk.client(mk.world.clients[0].account)
    free = mk.world.workers[0].free_stake(worker.address)
    too_big = post(mk, upload_spec(client), collateral=free + TOKEN)
    assert index_and_match(mk).offered == []
    assert too_big not in [lease.job_id for lease in worker.lease(8)]
    # two jobs each needing 60% of the free stake: outstanding leases count against it
    share = free * 6 // 10
    a = post(mk, upload_spec(client), collateral=share)
    b = post(mk, upload_spec(client), collateral=share)
    offered = index_and_match(mk).offered
    assert len(offered) == 1 and offered[0][0] in (a, b)
    worker.lease(8)
    assert rounds.match_round(mk.rt).offered == []


def test_silent_worker_gets_no_new_work(mk):
    worker = register(mk, mk.world.workers[0])
    mk.rt.redis.hset(f"{mk.rt.state.prefix}worker:{worker.address}", "last_seen",
                     time.time() - mk.rt.heartbeat_timeout_s - 1)
    post(mk, upload_spec(mk.client(mk.world.clients[0].account)))
    assert index_and_match(mk).offered == []
    worker.heartbeat([])
    assert len(rounds.match_round(mk.rt).offered) == 1


def test_group_view_and_output_wait_for_every_shard(mk):
    client = mk.client(mk.world.clients[0].account)
    raw = hashlib.sha256(b"group-1").hexdigest()
    ids = [post(mk, upload_spec(client, group=raw, shard=i, shards=2)) for i in range(2)]
    index_and_match(mk)
    group = client_group(client.address, raw)
    view = client.group(group)
    assert view.job_ids == tuple(ids) and not view.complete
    assert client.job(ids[0]).group == group
    with pytest.raises(Conflict, match="open shards"):
        client.group_output(group)
    with pytest.raises(NotFound):
        client.group("ee" * 32)
    # the output is the group's client's alone; unsigned, it is refused unread
    other = mk.client(mk.world.clients[1].account)
    with pytest.raises(AuthError, match="only its client may download") as caught:
        other.group_output(group)
    assert caught.value.status_code == 403
    assert httpx.get(f"{mk.url}/groups/{group}/output").status_code == 401


def test_a_group_id_copied_from_a_spec_squats_nothing(mk):
    victim = mk.client(mk.world.clients[0].account)
    squatter = mk.client(mk.world.clients[1].account)
    raw = hashlib.sha256(b"victim's group").hexdigest()
    first = post(mk, upload_spec(squatter, group=raw, shard=0, shards=2),
                 client=mk.world.clients[1])
    index_and_match(mk)
    ids = [post(mk, upload_spec(victim, group=raw, shard=i, shards=2)) for i in range(2)]
    index_and_match(mk)
    assert victim.group(client_group(victim.address, raw)).job_ids == tuple(ids)
    assert squatter.group(client_group(squatter.address, raw)).job_ids == (first,)
    for job_id in ids:  # offered like any other job, nothing refused
        assert victim.job(job_id).failure is None


def test_auth_header_expiry_must_be_an_integer(mk):
    body = b'{"max_jobs":1}'
    headers = sign_request(mk.world.workers[0].account, "POST", "/leases", body, 31337,
                           market=mk.url, contract=mk.contract)
    headers[HEADER_EXPIRES] = "tomorrow"
    response = httpx.post(mk.url + "/leases", content=body, headers=headers)
    assert response.status_code == 401


def test_a_request_signed_for_another_deployment_is_refused_here(mk):
    # the same host and chain, but another JobMarket (the market was redeployed, or another
    # deployment's market once stood at this address)
    body = b'{"max_jobs":1}'
    headers = sign_request(mk.world.workers[0].account, "POST", "/leases", body, 31337,
                           market=mk.url, contract="0x" + "cd" * 20)
    headers["Content-Type"] = "application/json"
    response = httpx.post(mk.url + "/leases", content=body, headers=headers)
    assert response.status_code == 401
    assert f"for the JobMarket at {mk.contract}" in response.json()["detail"]


def test_a_request_captured_at_another_market_is_refused_here(mk):
    # what a worker signed for another market (the same chain, even the same contract)
    body = b'{"max_jobs":1}'
    headers = sign_request(mk.world.workers[0].account, "POST", "/leases", body, 31337,
                           market="other-market.example:8000", contract=mk.contract)
    headers["Content-Type"] = "application/json"
    response = httpx.post(mk.url + "/leases", content=body, headers=headers)
    assert response.status_code == 401
    assert "signed for the market 'other-market.example:8000', not this one" in (
        response.json()["detail"])


def test_a_submitted_output_is_served_only_once_committed(mk):
    worker = register(mk, mk.world.workers[0])
    job_id = post(mk, upload_spec(mk.client(mk.world.clients[0].account)))
    index_and_match(mk)
    (lease,) = worker.lease(1)
    output = b"the worker's output " + os.urandom(8)
    sha = worker.put_blob(output)
    worker.submit_result(job_id, sha)
    # its hash is in the pending commit transaction: the client must not get it before
    # the commit is mined (it could then cancel the job unpaid)
    reader = mk.client()
    with pytest.raises(NotFound, match=f"output of job {job_id}, not committed on chain yet"):
        reader.get_blob(sha)
    answer = httpx.post(mk.url + "/blobs/fetch", json={"sha256": [sha]})
    assert answer.status_code == 404
    mk.world.workers[0].assign_and_commit(lease.ticket, lease.signature, [bytes.fromhex(sha)],
                                          records=[lease.record])
    assert reader.get_blob(sha) == output  # committed: served (the index may still lag)
