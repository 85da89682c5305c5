"""meshcompute.logs and meshcompute.health: the one JSON log schema every service writes, and
the one health-record writer."""

from __future__ import annotations

import io
import json
import logging
import sys

from meshcompute.health import write_health
from meshcompute.logs import JsonLineFormatter, configure_logging, json_line

KEY = "0x" + "11" * 32


def test_json_line_schema_head_first_fields_never_override_it_secrets_dropped():
    line = json_line("market", "matched", {"offers": 2, "event": "forged", "service": "x",
                                           "private_key": KEY, "mnemonic": "a b c"},
                     level="warning", ts=12.34567)
    assert line == ('{"ts":12.346,"level":"warning","service":"market","event":"matched",'
                    '"offers":2}')
    assert list(json.loads(json_line("worker", "phase"))) == ["ts", "level", "service", "event"]


def test_formatter_writes_log_records_in_the_schema():
    formatter = JsonLineFormatter("verifier")
    record = logging.LogRecord("meshcompute.verifier.service", logging.INFO, __file__, 1,
                               "%s %s", ("verdict_posted", "job_id=3"), None)
    record.event = "verdict_posted"
    record.fields = {"job_id": 3, "verdict": True, "signer_key": KEY}
    body = json.loads(formatter.format(record))
    assert body == {"ts": round(record.created, 3), "level": "info", "service": "verifier",
                    "event": "verdict_posted", "logger": "meshcompute.verifier.service",
                    "job_id": 3, "verdict": True}
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("meshcompute.market.app", logging.ERROR, __file__, 1,
                                   "request failed", (), sys.exc_info())
    body = json.loads(formatter.format(failed))
    assert (body["event"], body["level"]) == ("request failed", "error")
    assert "RuntimeError: boom" in body["exception"]


def test_configure_logging_routes_a_named_logger_once():
    out = io.StringIO()
    configure_logging("verifier", json_lines=True, logger="meshcompute.test_logs", stream=out)
    try:
        logging.getLogger("meshcompute.test_logs.child").warning(
            "stake unreadable", extra={"fields": {"worker": "0xabc", "password": "hunter2"}})
    finally:
        logger = logging.getLogger("meshcompute.test_logs")
        logger.handlers.clear()
        logger.propagate = True
    (line,) = out.getvalue().splitlines()
    body = json.loads(line)
    assert (body["service"], body["event"], body["worker"]) == ("verifier", "stake unreadable",
                                                                 "0xabc")
    assert "hunter2" not in line


def test_health_record_replaced_whole_without_secrets(tmp_path):
    path = tmp_path / "deep" / "verifier-health.json"
    write_health(path, {"ts": 1.0, "cursor": 5})
    write_health(path, {"ts": 2.0, "cursor": 6, "private_key": KEY})
    assert json.loads(path.read_text()) == {"ts": 2.0, "cursor": 6}
    assert [p.name for p in path.parent.iterdir()] == ["verifier-health.json"]
