"""MarketClient against a market that answers oddly: errors stay MeshErrors naming the status."""

from __future__ import annotations

import httpx
import pytest

from meshcompute.errors import BadInput, NotFound, ServiceUnavailable
from meshcompute.wire.market_client import MarketClient


def _client(status: int, body: bytes, content_type: str = "application/json") -> MarketClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return MarketClient("http://market.test", chain_id=31337,
                        transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_error_body_that_is_json_but_not_an_object(body: bytes) -> None:
    with pytest.raises(NotFound, match="HTTP 404"):
        _client(404, body).get_blob("ab" * 32)


def test_server_error_with_a_list_body_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable, match="HTTP 502"):
        _client(502, b"[]").health()


def test_blob_that_does_not_hash_to_its_name_is_refused() -> None:
    with pytest.raises(BadInput, match="hashes to"):
        _client(200, b"not the blob", "application/octet-stream").get_blob("ab" * 32)
