"""Request rates against the real market (uvicorn, Redis, anvil): signed requests per
address from its standing, fresh keys sharing one rate, unsigned reads per client IP; 429 with
Retry-After before the body is read, and the client waits and goes again."""

from __future__ import annotations

import httpx
import pytest
from eth_account import Account

from meshcompute.wire.auth import sign_request
from tests.market.helpers import register

pytestmark = pytest.mark.anvil
REDIS_DB = 5
MARKET_SETTINGS = {"rate_base_per_s": 3, "rate_per_credit_per_s": 1.0, "rate_max_per_s": 50,
                   "rate_strangers_per_s": 5, "rate_public_per_s": 5, "stake_cache_s": 30,
                   "rate_lookups_per_ip_per_s": 6, "market_stranger_concurrency": 1,
                   "market_stranger_wait_s": 0.5, "market_body_timeout_s": 1.0}


def _heartbeat(mk, account) -> httpx.Response:
    body = b'{"running":[]}'
    headers = sign_request(account, "POST", "/workers/heartbeat", body, 31337, market=mk.url,
                           contract=mk.contract)
    headers["Content-Type"] = "application/json"
    return httpx.post(mk.url + "/workers/heartbeat", content=body, headers=headers)


def test_a_fresh_key_gets_a_small_rate_and_429_with_retry_after(mk):
    stranger = Account.create()
    answers = [_heartbeat(mk, stranger) for _ in range(8)]
    codes = [answer.status_code for answer in answers]
    assert 429 in codes and codes[0] != 429, codes
    # the refusal itself (one more request after the burst may find the bucket refilled on a
    # slow machine: 3 a second is one every 333 ms)
    limited = next(answer for answer in answers if answer.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert "at most 3 a second" in limited.json()["detail"]


def test_fresh_keys_share_one_rate_and_staked_workers_keep_theirs(mk):
    strangers = [Account.create() for _ in range(4)]
    answers = [_heartbeat(mk, s).status_code for s in strangers for _ in range(2)]
    assert answers.count(429) >= 2  # 8 requests, 5 a second between them all
    worker = mk.world.workers[0]
    register(mk, worker)
    assert [_heartbeat(mk, worker.account).status_code for _ in range(10)] == [200] * 10


def test_replaying_someones_request_does_not_spend_their_rate(mk):
    """An attacker who captured a signed request sends copies of it: each is refused as a
    replay before it is counted, so the signer's own next requests are not throttled."""
    victim = Account.create()
    body = b'{"running":[]}'
    captured = sign_request(victim, "POST", "/workers/heartbeat", body, 31337, market=mk.url,
                            contract=mk.contract)
    captured["Content-Type"] = "application/json"
    first = httpx.post(mk.url + "/workers/heartbeat", content=body, headers=captured)
    assert first.status_code == 403  # signed and counted once; not a registered worker
    replies = [httpx.post(mk.url + "/workers/heartbeat", content=body, headers=captured)
               for _ in range(10)]
    assert {r.status_code for r in replies} == {401}
    assert all("already used" in r.json()["detail"] for r in replies)
    # 3 a second for the victim: the copies spent none of it
    assert [_heartbeat(mk, victim).status_code for _ in range(2)] == [403, 403]


def test_unsigned_reads_are_limited_per_client_and_the_client_waits(mk):
    answers = [httpx.get(mk.url + "/health").status_code for _ in range(40)]
    assert 429 in answers and answers.count(200) >= 5
    # MarketClient honours Retry-After: the same read succeeds after a wait
    assert mk.client().health()["status"] == "ok"


def test_chain_reads_for_new_addresses_are_rationed(mk):
    answers = [_heartbeat(mk, Account.create()) for _ in range(12)]
    limited = [a for a in answers if a.status_code == 429]
    assert any("requests from new addresses at 127.0.0.1" in a.json()["detail"]
               for a in limited)


def test_a_slow_stranger_holds_its_place_one_body_timeout_and_the_next_waits_its_turn(mk):
    import threading
    import time

    slow = Account.create()
    body = b'{"running":[]}'
    headers = sign_request(slow, "POST", "/workers/heartbeat", body, 31337, market=mk.url,
                           contract=mk.contract)
    headers["Content-Type"] = "application/json"

    def trickle():
        yield body[:5]
        time.sleep(2.0)  # past market_body_timeout_s
        yield body[5:]

    answers = {}

    def send_slow():
        try:
            answers["slow"] = httpx.post(mk.url + "/workers/heartbeat", content=trickle(),
                                         headers=headers, timeout=10)
        except httpx.HTTPError as exc:  # the market may hang up on the rest of the body
            answers["slow"] = exc

    thread = threading.Thread(target=send_slow)
    thread.start()
    time.sleep(0.2)  # the slow stranger holds the one place for strangers
    waiting = _heartbeat(mk, Account.create())
    assert waiting.status_code == 429
    assert "busy with requests from addresses without stake" in waiting.json()["detail"]
    thread.join(15)
    slow_answer = answers["slow"]
    if isinstance(slow_answer, httpx.Response):
        assert slow_answer.status_code == 408
        assert "did not arrive within 1 s" in slow_answer.json()["detail"]
    # a staked worker never waited behind them
    worker = mk.world.workers[1]
    register(mk, worker)
    assert _heartbeat(mk, worker.account).status_code == 200
