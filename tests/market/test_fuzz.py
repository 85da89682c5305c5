"""Fuzz the market API with schemathesis from its own /openapi.json: no input, signed or not,
makes it answer 5xx."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from meshcompute.wire.auth import sign_request
from tests.market.helpers import register

pytestmark = pytest.mark.anvil
REDIS_DB = 13
EXAMPLES = 20
# the dashboard's event stream is read to its end: short here (300 s by default), so fuzzing it
# costs seconds, not five minutes per generated request
MARKET_SETTINGS = {"dashboard_tick_s": 0.2, "dashboard_stream_s": 0.5}


@pytest.fixture(scope="module")
def fuzzed_market(market):
    register(market, market.world.workers[0], slots=4)  # signed requests reach the logic
    return market


def _check(case, market) -> None:
    # unsigned, as generated
    case.call_and_validate(base_url=market.url, checks=[not_a_server_error])
    # and signed by a registered, staked worker, so the request passes authentication
    kwargs = case.as_transport_kwargs(base_url=market.url)
    if "json" in kwargs:
        body = json.dumps(kwargs.pop("json")).encode()
        kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
    else:
        data = kwargs.pop("data", b"") or b""
        body = data if isinstance(data, bytes) else str(data).encode()
    path = httpx.URL(kwargs["url"]).path
    headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
    headers.update(sign_request(market.world.workers[0].account, kwargs["method"], path, body,
                                31337, market=market.url, contract=market.contract))
    response = httpx.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                             headers=headers, content=body, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.text)


def test_api_never_answers_5xx(fuzzed_market):
    schema = schemathesis.openapi.from_url(f"{fuzzed_market.url}/openapi.json")
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            _check(case, fuzzed_market)

        fuzz()
    assert "PUT /blobs/{sha256}" in labels and "POST /leases" in labels and len(labels) >= 16
