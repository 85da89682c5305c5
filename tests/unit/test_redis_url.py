"""The session ``redis_url`` fixture answers: an embedded Valkey unless REDIS_URL is set."""

from __future__ import annotations

import redis


def test_redis_url_accepts_commands(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("meshcompute:fixture-check", "ok")
        assert client.get("meshcompute:fixture-check") == b"ok"
    finally:
        client.delete("meshcompute:fixture-check")
        client.close()
