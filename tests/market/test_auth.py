"""meshcompute.wire.auth: request signatures (pure, no network)."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account
from eth_utils import to_checksum_address

from meshcompute.errors import AuthError
from meshcompute.wire.auth import (
    HEADER_ADDRESS,
    HEADER_BODY_SHA256,
    HEADER_EXPIRES,
    HEADER_MARKET,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    MAX_TTL_S,
    check_body,
    market_name,
    request_message,
    sign_request,
    verify_request,
    verify_signed_request,
)

ALICE = Account.from_key("0x" + "11" * 32)
BOB = Account.from_key("0x" + "22" * 32)
NOW = 1_800_000_000
CHAIN = 31337
MARKET = "market.example:8000"
CONTRACT = "0x" + "ab" * 20


def _signed(**kw):
    args = {"method": "POST", "path": "/leases", "body": b'{"max_jobs":1}', "chain_id": CHAIN}
    args.update(kw)
    return sign_request(ALICE, args["method"], args["path"], args["body"], args["chain_id"],
                        now=NOW, market=MARKET, contract=CONTRACT)


def test_sign_then_verify_returns_checksummed_signer():
    headers = _signed()
    assert verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                          markets=[MARKET], contract=CONTRACT) == ALICE.address
    assert int(headers[HEADER_EXPIRES]) == NOW + 60
    assert len(headers[HEADER_NONCE]) == 32


def test_verify_accepts_lowercase_header_names_and_method():
    headers = {k.lower(): v for k, v in _signed().items()}
    assert verify_request(headers, "post", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                          markets=[MARKET], contract=CONTRACT) == ALICE.address


def test_a_request_signed_for_another_deployment_is_refused():
    """Two deployments on one chain, each with a market behind the same host name: a request
    signed for one JobMarket is not accepted by the market of the other."""
    headers = _signed()
    with pytest.raises(AuthError, match="for the JobMarket at 0x.*contract differ"):
        verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                       markets=[MARKET], contract="0x" + "cd" * 20)


def test_nonces_differ_between_requests():
    assert _signed()[HEADER_NONCE] != _signed()[HEADER_NONCE]


def test_message_matches_documented_format():
    text = request_message(address=ALICE.address, method="put", path="/blobs/ab", body=b"",
                           chain_id=5, nonce="0" * 32, expires=7, market=MARKET,
                           contract=CONTRACT)
    assert text.splitlines() == [
        "meshcompute request",
        f"market: {MARKET}",
        f"address: {ALICE.address}",
        "method: PUT",
        "path: /blobs/ab",
        "body-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "chain-id: 5",
        f"contract: {to_checksum_address(CONTRACT)}",
        "nonce: " + "0" * 32,
        "expires: 7",
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "PUT"), ("path", "/leases/1"), ("chain_id", 1)],
)
def test_tampered_request_is_refused(field, value):
    args = {"method": "POST", "path": "/leases", "body": b'{"max_jobs":1}', "chain_id": CHAIN}
    headers = _signed()
    args[field] = value
    with pytest.raises(AuthError, match="signature does not match"):
        verify_request(headers, args["method"], args["path"], args["body"], args["chain_id"],
                       now=NOW, markets=[MARKET], contract=CONTRACT)


def test_tampered_body_is_refused_against_the_signed_hash():
    headers = _signed()
    with pytest.raises(AuthError, match="body does not match the signed X-Mesh-Body-Sha256"):
        verify_request(headers, "POST", "/leases", b"{}", CHAIN, now=NOW, markets=[MARKET],
                       contract=CONTRACT)


def test_headers_alone_are_checked_before_the_body_and_the_hash_header_is_signed():
    headers = _signed()
    signed = verify_signed_request(headers, "POST", "/leases", None, CHAIN, now=NOW,
                                   markets=[MARKET], contract=CONTRACT)
    assert signed.address == ALICE.address
    assert signed.body_sha256 == hashlib.sha256(b'{"max_jobs":1}').hexdigest()
    check_body(signed, hashlib.sha256(b'{"max_jobs":1}').hexdigest())
    with pytest.raises(AuthError, match="body does not match"):
        check_body(signed, hashlib.sha256(b"{}").hexdigest())
    # a body swapped together with its hash header breaks the signature
    headers[HEADER_BODY_SHA256] = hashlib.sha256(b"{}").hexdigest()
    with pytest.raises(AuthError, match="signature does not match"):
        verify_signed_request(headers, "POST", "/leases", b"{}", CHAIN, now=NOW, markets=[MARKET],
                              contract=CONTRACT)


def test_wrong_signer_is_refused():
    headers = _signed()
    headers[HEADER_ADDRESS] = BOB.address
    with pytest.raises(AuthError, match=f"does not match {BOB.address}"):
        verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                       markets=[MARKET], contract=CONTRACT)


def test_expired_request_is_refused():
    headers = _signed()
    with pytest.raises(AuthError, match="expired"):
        verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW + 60,
                       markets=[MARKET], contract=CONTRACT)


def test_expiry_too_far_ahead_is_refused():
    headers = sign_request(ALICE, "GET", "/x", b"", CHAIN, now=NOW + 1000, market=MARKET,
                           contract=CONTRACT)
    with pytest.raises(AuthError, match=f"more than {MAX_TTL_S} s ahead"):
        verify_request(headers, "GET", "/x", b"", CHAIN, now=NOW, markets=[MARKET],
                       contract=CONTRACT)


@pytest.mark.parametrize("missing", [HEADER_ADDRESS, HEADER_NONCE, HEADER_EXPIRES,
                                     HEADER_SIGNATURE, HEADER_BODY_SHA256, HEADER_MARKET])
def test_missing_header_is_named(missing):
    headers = _signed()
    del headers[missing]
    with pytest.raises(AuthError, match=f"missing header {missing}"):
        verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                       markets=[MARKET], contract=CONTRACT)


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        (HEADER_ADDRESS, "0x1234", "not an address"),
        (HEADER_NONCE, "xyz", "32 lowercase hex"),
        (HEADER_EXPIRES, "soon", "unix seconds"),
        (HEADER_SIGNATURE, "0xdead", "65-byte"),
        (HEADER_SIGNATURE, "0x" + "00" * 65, "cannot be recovered"),
        (HEADER_BODY_SHA256, "AB" * 32, "64 lowercase hex"),
    ],
)
def test_malformed_headers_are_refused_with_reason(header, value, reason):
    headers = _signed()
    headers[header] = value
    with pytest.raises(AuthError, match=reason):
        verify_request(headers, "POST", "/leases", b'{"max_jobs":1}', CHAIN, now=NOW,
                       markets=[MARKET], contract=CONTRACT)


def test_ttl_is_bounded():
    with pytest.raises(ValueError):
        sign_request(ALICE, "GET", "/", b"", CHAIN, ttl_s=MAX_TTL_S + 1, market=MARKET,
                     contract=CONTRACT)


def test_streamed_body_is_signed_over_its_hash():
    data = b"x" * 1000
    sha = hashlib.sha256(data).hexdigest()
    headers = sign_request(ALICE, "PUT", f"/blobs/{sha}", b"", CHAIN, now=NOW, body_sha256=sha,
                           market=MARKET, contract=CONTRACT)
    assert verify_request(headers, "PUT", f"/blobs/{sha}", data, CHAIN, now=NOW,
                          markets=[MARKET], contract=CONTRACT)
    assert (
        verify_request(headers, "PUT", f"/blobs/{sha}", None, CHAIN, now=NOW, body_sha256=sha,
                       markets=[MARKET], contract=CONTRACT)
        == ALICE.address
    )
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(AuthError, match=f"must be signed over body-sha256 {other}"):
        verify_request(headers, "PUT", f"/blobs/{other}", None, CHAIN, now=NOW,
                       body_sha256=other, markets=[MARKET], contract=CONTRACT)


def test_a_request_signed_for_one_market_is_refused_by_another():
    headers = sign_request(ALICE, "POST", "/leases", b"{}", CHAIN, now=NOW,
                           market="http://other-market:8000/", contract=CONTRACT)
    assert headers[HEADER_MARKET] == "other-market:8000"
    with pytest.raises(AuthError, match="signed for the market 'other-market:8000', not this"):
        verify_request(headers, "POST", "/leases", b"{}", CHAIN, now=NOW, markets=[MARKET],
                       contract=CONTRACT)
    assert verify_request(headers, "POST", "/leases", b"{}", CHAIN, now=NOW,
                          markets=[MARKET, "Other-Market:8000"],
                          contract=CONTRACT) == ALICE.address
    # the market is signed: rewriting the header breaks the signature
    headers[HEADER_MARKET] = MARKET
    with pytest.raises(AuthError, match="signature does not match"):
        verify_request(headers, "POST", "/leases", b"{}", CHAIN, now=NOW, markets=[MARKET],
                       contract=CONTRACT)


def test_market_name_drops_the_scheme_and_path():
    assert market_name("https://Market.Example:8443/api/") == "market.example:8443"
    assert market_name("market.example") == "market.example"
