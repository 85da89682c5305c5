"""One JSON log schema for every service (market, verifier, worker): one object per line,

    {"ts": 1718000000.123, "level": "info", "service": "market", "event": "matched", ...}

``ts`` is unix seconds, ``level`` the lower-case level name, ``service`` the program that wrote
the line and ``event`` what happened (a short name, or the message of a Python log record); the
event's own fields follow and never replace those four. Records from :mod:`logging` also carry
``logger`` and, when an exception was logged, ``exception``.

Services that log through :mod:`logging` call :func:`configure_logging` once and pass fields as
``extra={"fields": {...}}`` (and may name the event with ``extra={"event": name}``); the worker
writes its events with :func:`json_line`. Private keys are never logged: every line and every
health record (:mod:`meshcompute.health`) drops any field whose name suggests key material.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

#: A field whose name contains one of these words is never written.
SECRET_WORDS = ("key", "password", "secret", "mnemonic", "seed")


def redact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without any whose name suggests key material."""
    return {
        name: value
        for name, value in fields.items()
        if not any(word in name.lower() for word in SECRET_WORDS)
    }


def json_line(service: str, event: str, fields: Mapping[str, Any] | None = None, *,
              level: str = "info", ts: float | None = None) -> str:
    """One log line of the shared schema (no trailing newline); secret fields dropped."""
    head = {"ts": round(time.time() if ts is None else ts, 3), "level": level,
            "service": service, "event": event}
    body = {name: value for name, value in redact(fields or {}).items() if name not in head}
    return json.dumps(head | body, default=str, separators=(",", ":"))


class JsonLineFormatter(logging.Formatter):
    """Python log records as :func:`json_line` lines of one ``service``."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"logger": record.name}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        event = getattr(record, "event", None) or record.getMessage()
        return json_line(self.service, event, fields, level=record.levelname.lower(),
                         ts=record.created)


def configure_logging(service: str, *, json_lines: bool, logger: str | None = None,
                      stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Send ``logger`` (the root logger when None) to ``stream`` (stderr when None), as JSON
    lines of the shared schema or as readable lines (UTC times). A named logger stops
    propagating, so its lines are written once."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonLineFormatter(service))
    else:
        readable = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        readable.converter = time.gmtime
        handler.setFormatter(readable)
    target = logging.getLogger(logger)
    target.handlers[:] = [handler]
    target.setLevel(level)
    if logger is not None:
        target.propagate = False
