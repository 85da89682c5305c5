"""Signed HTTP requests: the wallet signature every state-changing market request carries.

EIP-4361 style (see docs/market-api.md "Authentication"): the caller signs, with
``eth_account.messages.encode_defunct``, a short text naming its address, the request (method,
path, sha256 of the raw body), the market it is for (its host, the chain id and the address of
its JobMarket contract), a random nonce and an expiry. The signature and
the fields travel in ``X-Mesh-*`` headers, the body's hash included, so a server checks the
signature from the headers alone before it reads a byte of the body, and then checks that the
body hashes to what was signed. :func:`verify_request` checks everything that can be checked
statelessly; the nonce replay check needs shared state and lives on the server
(``market.state.MarketState.claim_nonce``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_utils import ValidationError, is_hex_address, to_checksum_address

from meshcompute.errors import AuthError

HEADER_ADDRESS = "X-Mesh-Address"
HEADER_NONCE = "X-Mesh-Nonce"
HEADER_EXPIRES = "X-Mesh-Expires"
HEADER_SIGNATURE = "X-Mesh-Signature"
HEADER_BODY_SHA256 = "X-Mesh-Body-Sha256"
HEADER_MARKET = "X-Mesh-Market"
AUTH_HEADERS = (HEADER_ADDRESS, HEADER_NONCE, HEADER_EXPIRES, HEADER_SIGNATURE, HEADER_BODY_SHA256,
                HEADER_MARKET)
_AUTH_NAMES = {name.lower(): name for name in AUTH_HEADERS}

MAX_TTL_S = 300
"""An expiry more than this many seconds ahead is refused (bounds how long a nonce is kept)."""
DEFAULT_TTL_S = 60

_NONCE = re.compile(r"^[0-9a-f]{32}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MARKET = re.compile(r"^[a-z0-9.\-\[\]:]{1,255}$")


def market_name(base_url_or_host: str) -> str:
    """The name a request is signed for: the market's ``host[:port]`` as the client reaches
    it (lower case; a URL's scheme and path dropped)."""
    text = base_url_or_host.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0]


def request_message(
    *,
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    chain_id: int,
    nonce: str,
    expires: int,
    market: str,
    contract: str,
    body_sha256: str | None = None,
) -> str:
    """The exact text that is signed (docs/market-api.md); ``path`` carries no query, and
    ``market`` names the market it is for (:func:`market_name`), ``contract`` the JobMarket
    of the deployment it serves.

    Give the raw ``body``, or its ``body_sha256`` when the body is streamed from a file."""
    if body_sha256 is None:
        body_sha256 = hashlib.sha256(body or b"").hexdigest()
    return (
        "meshcompute request\n"
        f"market: {market}\n"
        f"address: {address}\n"
        f"method: {method.upper()}\n"
        f"path: {path}\n"
        f"body-sha256: {body_sha256}\n"
        f"chain-id: {int(chain_id)}\n"
        f"contract: {to_checksum_address(contract)}\n"
        f"nonce: {nonce}\n"
        f"expires: {int(expires)}"
    )


def sign_request(
    account: LocalAccount,
    method: str,
    path: str,
    body: bytes,
    chain_id: int,
    *,
    market: str,
    contract: str,
    now: float | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    body_sha256: str | None = None,
) -> dict[str, str]:
    """The six ``X-Mesh-*`` headers authenticating one request by ``account`` to the market
    ``market`` (its URL or ``host[:port]``) serving the JobMarket at ``contract``: a request
    signed for one market is refused by every other, even on the same chain, and so is one
    signed for another deployment.

    For a streamed body pass ``body=b""`` and its ``body_sha256``."""
    market = market_name(market)
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S}], got {ttl_s}")
    address = to_checksum_address(account.address)
    nonce = secrets.token_hex(16)
    expires = int(time.time() if now is None else now) + int(ttl_s)
    if body_sha256 is None:
        body_sha256 = hashlib.sha256(body or b"").hexdigest()
    text = request_message(
        address=address,
        method=method,
        path=path,
        chain_id=chain_id,
        nonce=nonce,
        expires=expires,
        market=market,
        contract=contract,
        body_sha256=body_sha256,
    )
    signature = account.sign_message(encode_defunct(text=text)).signature
    return {
        HEADER_ADDRESS: address,
        HEADER_NONCE: nonce,
        HEADER_EXPIRES: str(expires),
        HEADER_SIGNATURE: "0x" + bytes(signature).hex(),
        HEADER_BODY_SHA256: body_sha256,
        HEADER_MARKET: market,
    }


@dataclass(frozen=True)
class SignedRequest:
    """What a verified request proves: its signer, and the nonce and expiry it signed (the
    values the caller must remember, never re-read from the headers)."""

    address: str
    nonce: str
    expires: int
    body_sha256: str
    """The hash of the body that was signed; whoever reads the body must check it
    (:func:`check_body`)."""


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes | None,
    chain_id: int,
    *,
    now: float,
    markets: Collection[str],
    contract: str,
    body_sha256: str | None = None,
) -> str:
    """The checksummed address that signed this request; AuthError names what is wrong.

    See :func:`verify_signed_request`, which also returns the signed nonce and expiry."""
    return verify_signed_request(
        headers, method, path, body, chain_id, now=now, markets=markets, contract=contract,
        body_sha256=body_sha256,
    ).address


def verify_signed_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes | None,
    chain_id: int,
    *,
    now: float,
    markets: Collection[str],
    contract: str,
    body_sha256: str | None = None,
) -> SignedRequest:
    """The signer, nonce, expiry and signed body hash of this request; AuthError names what
    is wrong.

    The signature is checked over the body hash the headers carry (``X-Mesh-Body-Sha256``),
    so this needs no body: give ``body=None`` to check the headers before reading the body,
    then :func:`check_body` once it is read. Given ``body``, it is checked here too.
    ``body_sha256`` is the hash the route requires (a blob upload is signed over the blob's
    name, and the store verifies the bytes): the signed hash must equal it. ``markets`` are
    this market's names (:func:`market_name`): the request must be signed for one of them, and
for ``contract``, the JobMarket this market serves.

    Checks presence and shape of the headers, the expiry window (not past, at most
    :data:`MAX_TTL_S` ahead) and that the signature recovers to ``X-Mesh-Address``. The
    caller must still refuse a nonce it has seen before.
    """
    values = _auth_headers(headers)
    raw_address = values[HEADER_ADDRESS]
    if not is_hex_address(raw_address):
        raise AuthError(f"{HEADER_ADDRESS} is not an address: {raw_address[:64]!r}")
    address = to_checksum_address(raw_address)
    nonce = values[HEADER_NONCE]
    if not _NONCE.match(nonce):
        raise AuthError(f"{HEADER_NONCE} must be 32 lowercase hex characters")
    try:
        expires = int(values[HEADER_EXPIRES])
    except ValueError:
        raise AuthError(f"{HEADER_EXPIRES} must be unix seconds (an integer)") from None
    if expires <= now:
        raise AuthError(f"request expired at {expires} (now {int(now)})")
    if expires > now + MAX_TTL_S:
        raise AuthError(f"request expiry {expires} is more than {MAX_TTL_S} s ahead")
    signature = values[HEADER_SIGNATURE]
    if not _SIGNATURE.match(signature):
        raise AuthError(f"{HEADER_SIGNATURE} must be a 65-byte 0x hex signature")
    signed_sha = values[HEADER_BODY_SHA256]
    if not _SHA256.match(signed_sha):
        raise AuthError(f"{HEADER_BODY_SHA256} must be 64 lowercase hex characters")
    market = values[HEADER_MARKET].lower()
    if not _MARKET.match(market):
        raise AuthError(f"{HEADER_MARKET} must be the market's host[:port]")
    if market not in {market_name(name) for name in markets}:
        raise AuthError(f"this request was signed for the market {market!r}, not this one "
                        f"({', '.join(sorted(markets)) or 'no name'}): a request signed for "
                        "one market is not accepted by another")
    if body_sha256 is not None and signed_sha != body_sha256:
        raise AuthError(f"this request must be signed over body-sha256 {body_sha256}, not "
                        f"{signed_sha}")
    text = request_message(
        address=address,
        method=method,
        path=path,
        chain_id=chain_id,
        nonce=nonce,
        expires=expires,
        market=market,
        contract=contract,
        body_sha256=signed_sha,
    )
    try:
        signer = Account.recover_message(
            encode_defunct(text=text), signature=bytes.fromhex(signature[2:])
        )
    except (BadSignature, ValidationError, ValueError) as exc:
        raise AuthError(f"signature cannot be recovered: {exc}") from None
    if to_checksum_address(signer) != address:
        raise AuthError(
            f"signature does not match {address} for {method.upper()} {path} on chain "
            f"{chain_id} for the JobMarket at {to_checksum_address(contract)} (wrong key, or "
            "the body, path, chain id or contract differ: a request signed for another "
            "deployment is not accepted here)"
        )
    signed = SignedRequest(address=address, nonce=nonce, expires=expires, body_sha256=signed_sha)
    if body is not None:
        check_body(signed, hashlib.sha256(body).hexdigest())
    return signed


def check_body(signed: SignedRequest, body_sha256: str) -> None:
    """AuthError unless the body read hashes to what ``signed`` was signed over."""
    if body_sha256 != signed.body_sha256:
        raise AuthError(f"the body does not match the signed {HEADER_BODY_SHA256} (its "
                        f"sha256 is {body_sha256}): altered in transit, or signed over "
                        "other bytes")


def _auth_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The six auth headers; each must appear exactly once. A repeated header is refused:
    servers read "the" value of a header differently (Starlette's ``headers[name]`` is the
    first, ``dict(headers.items())`` the last), so a second X-Mesh-Nonce could get a replayed
    request's signature checked with one nonce and the replay guard fed another."""
    lowered: dict[str, str] = {}
    for key, value in headers.items():
        name = str(key).lower()
        if name in lowered and name in _AUTH_NAMES:
            raise AuthError(f"header {_AUTH_NAMES[name]} is given more than once")
        lowered[name] = str(value)
    out: dict[str, str] = {}
    for name in AUTH_HEADERS:
        value = lowered.get(name.lower())
        if value is None or not value.strip():
            raise AuthError(f"missing header {name} (this request must be signed)")
        out[name] = value.strip()
    return out
