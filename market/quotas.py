"""Upload quotas, the market's adapter around :mod:`meshcompute.core.quota`: reads an
address's standing (stake from the chain, cached; open escrow from the indexed jobs) and its
bytes stored in the window (Redis), refuses an upload that does not fit (HTTP 429, naming the
numbers), and charges what a new blob stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from meshcompute.core.quota import QuotaPolicy, Usage, is_stranger, refusal
from meshcompute.errors import MeshError
from meshcompute.market.runtime import MarketRuntime
from meshcompute.settings import Settings


class QuotaExceeded(MeshError):
    """An upload over the address's quota (HTTP 429)."""


@dataclass(frozen=True)
class Admitted:
    """An upload let in: who, whether it counts against the strangers' pool, and the bytes
    reserved for it."""

    address: str
    stranger: bool
    reserved: int = 0


def policy(settings: Settings) -> QuotaPolicy:
    return QuotaPolicy(base_bytes=settings.quota_base_bytes,
                       bytes_per_credit=settings.quota_bytes_per_credit,
                       strangers_bytes=settings.quota_strangers_bytes)


def open_escrows(rt: MarketRuntime) -> dict[str, int]:
    """Reward and audit fee of each client's jobs not yet ended, as indexed (lower-case
    addresses). Counted once per indexed block, however many requests ask."""
    block = rt.indexer.indexed_block
    if rt.escrows is not None and rt.escrows[0] == block:
        return rt.escrows[1]
    escrows: dict[str, int] = {}
    for record in rt.indexer.open_job_records().values():
        who = record.client.lower()
        escrows[who] = escrows.get(who, 0) + record.reward + record.audit_fee
    rt.escrows = (block, escrows)
    return escrows


def open_escrow(rt: MarketRuntime, address: str) -> int:
    return open_escrows(rt).get(address.lower(), 0)


def _standing_key(rt: MarketRuntime, address: str) -> str:
    return f"{rt.state.prefix}credit-standing:{address.lower()}"


def _credited_key(rt: MarketRuntime, address: str) -> str:
    return f"{rt.state.prefix}credited:{address.lower()}"


def recently_credited(rt: MarketRuntime, address: str) -> bool:
    """Whether ``address`` had stake or open escrow when its standing was last read, within
    ``market_credited_memory_s``: its next chain read does not queue behind strangers'."""
    return bool(rt.redis.exists(_credited_key(rt, address)))


def cached_standing(rt: MarketRuntime, address: str) -> tuple[int, int] | None:
    """``(stake, open escrow)`` from the cache, or None when it would take a chain read."""
    if rt.settings.stake_cache_s <= 0:
        return None
    cached = rt.redis.get(_standing_key(rt, address))
    if cached is None:
        return None
    stake, escrow = (int(part) for part in cached.decode().split(":"))
    return stake, escrow


def standing(rt: MarketRuntime, address: str, *, fresh: bool = False) -> tuple[int, int]:
    """``(stake, open escrow)`` of ``address`` in wei, cached in Redis for ``stake_cache_s``
    (every signed request's rate limit reads it); ``fresh`` skips the cache. The stake is one
    chain read; the escrow comes from the index."""
    if not fresh:
        cached = cached_standing(rt, address)
        if cached is not None:
            return cached
    position = rt.contracts.stake_of(address)
    stake = position.free + position.locked
    escrow = open_escrow(rt, address)
    ttl = rt.settings.stake_cache_s
    if ttl > 0:
        rt.redis.set(_standing_key(rt, address), f"{stake}:{escrow}",
                     px=max(1, int(ttl * 1000)))
    if not is_stranger(stake=stake, escrow=escrow):
        rt.redis.set(_credited_key(rt, address), 1,
                     px=max(1, int(rt.settings.market_credited_memory_s * 1000)))
    else:  # unstaked or reclaimed since: its reads queue and count like any stranger's
        rt.redis.delete(_credited_key(rt, address))
    return stake, escrow


def admit(rt: MarketRuntime, address: str, incoming: int, *, now: float) -> Admitted:
    """QuotaExceeded unless ``incoming`` more bytes from ``address`` fit its quota (its
    stake as cached by the rate limit, its escrow as of the latest indexed block). The bytes
    are reserved at once (uploads running side by side each see the others'), and settled
    by :func:`charge` with what was actually stored."""
    stake, _ = standing(rt, address)
    escrow = open_escrow(rt, address)
    stranger = is_stranger(stake=stake, escrow=escrow)
    window = rt.settings.quota_window_s
    own, strangers = rt.state.upload_usage(address, now=now, window_s=window)
    reason = refusal(policy(rt.settings), Usage(own=own, strangers=strangers), incoming,
                     stake=stake, escrow=escrow)
    if reason is not None:  # refused before reserving: a refusal writes nothing
        rt.state.incr_metric("uploads_over_quota")
        raise QuotaExceeded(reason)
    rt.state.charge_upload(address, incoming, stranger=stranger, now=now, window_s=window)
    own, strangers = rt.state.upload_usage(address, now=now, window_s=window)
    reason = refusal(policy(rt.settings),
                     Usage(own=own - incoming, strangers=strangers - incoming), incoming,
                     stake=stake, escrow=escrow)
    if reason is not None:
        rt.state.charge_upload(address, -incoming, stranger=stranger, now=now,
                               window_s=window)
        rt.state.incr_metric("uploads_over_quota")
        raise QuotaExceeded(reason)
    return Admitted(address=address, stranger=stranger, reserved=incoming)


def charge(rt: MarketRuntime, admitted: Admitted, size: int, *, now: float) -> None:
    """Settle an admitted upload: ``size`` bytes of new blobs were stored (the reservation
    is replaced by them; nothing stored gives it all back)."""
    change = size - admitted.reserved
    if change:
        rt.state.charge_upload(admitted.address, change, stranger=admitted.stranger, now=now,
                               window_s=rt.settings.quota_window_s)


@contextmanager
def settled(rt: MarketRuntime, admitted: Admitted, *, now: float) -> Iterator[Callable[[int],
                                                                                     None]]:
    """Settle ``admitted`` with what the block stored (call the yielded function with the
    bytes of new blobs); when it raises first, the whole reservation is given back."""
    stored: list[int] = []
    try:
        yield stored.append
    finally:
        charge(rt, admitted, stored[-1] if stored else 0, now=now)
