"""Request rates, the market's adapter around :func:`meshcompute.core.quota.request_rate`:
signed requests are limited per address in proportion to its stake and open escrow (an address
with neither gets a small rate, and all of those together share one), unsigned requests per
client IP. Counted in Redis with the ``limits`` library's sliding-window counter, so every API
process of one market shares the counts; a request over its rate gets 429 with Retry-After
before its body is read (:mod:`meshcompute.market.api.gate`)."""

from __future__ import annotations

import math
import threading
import time

import redis
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from meshcompute.core.quota import RatePolicy, credits_of, is_stranger, request_rate
from meshcompute.errors import MeshError, ServiceUnavailable
from meshcompute.market import quotas
from meshcompute.market.runtime import MarketRuntime
from meshcompute.settings import Settings


class RateLimited(MeshError):
    """Too many requests from one address or client (HTTP 429, with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def policy(settings: Settings) -> RatePolicy:
    return RatePolicy(base_per_s=settings.rate_base_per_s,
                      per_credit_per_s=settings.rate_per_credit_per_s,
                      max_per_s=settings.rate_max_per_s,
                      strangers_per_s=settings.rate_strangers_per_s)


class RequestLimiter:
    """Checks one request against its rate (``check``); built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limiter: SlidingWindowCounterRateLimiter | None = None
        self._lock = threading.Lock()

    def _get(self, rt: MarketRuntime) -> SlidingWindowCounterRateLimiter:
        if self._limiter is None:
            with self._lock:
                if self._limiter is None:
                    storage = RedisStorage(self.settings.redis_url,
                                           key_prefix=f"{rt.state.prefix}rate",
                                           wrap_exceptions=True)
                    self._limiter = SlidingWindowCounterRateLimiter(storage)
        return self._limiter

    def check(self, rt: MarketRuntime, *, address: str | None, client_ip: str,
              lookup: bool = True) -> bool | None:
        """RateLimited when this request passes its rate: ``address``'s when it is signed,
        else ``client_ip``'s; ServiceUnavailable when Redis cannot count. Returns whether the
        signer is a stranger (no stake, no open escrow), or None, having counted nothing,
        when that takes a chain read for an address that had no credit lately and ``lookup``
        is False (the gate then queues the request among other such lookups and asks again
        with ``lookup=True``)."""
        try:
            return self._check(rt, address=address, client_ip=client_ip, lookup=lookup)
        except MeshError:
            raise
        except (StorageError, redis.RedisError) as exc:
            raise ServiceUnavailable(f"request rates cannot be counted: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a node error reading the stake: 503, not 500
            raise ServiceUnavailable(f"the signer's standing cannot be read: "
                                     f"{type(exc).__name__}: {exc}") from None

    def _check(self, rt: MarketRuntime, *, address: str | None, client_ip: str,
               lookup: bool) -> bool | None:
        limiter = self._get(rt)
        if address is None:
            self._hit(limiter, self.settings.rate_public_per_s, "ip", client_ip,
                      f"requests from {client_ip}")
            return False
        cached = quotas.cached_standing(rt, address)
        if cached is None and not quotas.recently_credited(rt, address):
            if not lookup:
                return None
            # an address without credit lately costs a chain read: fresh keys are free to
            # make, so those reads are rationed per client IP and in all (an address with
            # credit refreshes its standing once per stake_cache_s, outside these rations:
            # many users behind one proxy are not one flood)
            self._hit(limiter, self.settings.rate_lookups_per_ip_per_s, "lookup-ip",
                      client_ip, f"requests from new addresses at {client_ip}")
            self._hit(limiter, self.settings.rate_lookups_per_s, "lookup", "all",
                      "requests from new addresses")
        stake, escrow = cached or quotas.standing(rt, address, fresh=True)
        credits = credits_of(stake=stake, escrow=escrow)
        rules = policy(self.settings)
        self._hit(limiter, request_rate(rules, credits=credits), "address", address.lower(),
                  f"signed requests from {address}")
        if is_stranger(stake=stake, escrow=escrow):
            self._hit(limiter, rules.strangers_per_s, "strangers", "all",
                      "signed requests from addresses without stake or escrow")
            return True
        return False

    @staticmethod
    def _hit(limiter: SlidingWindowCounterRateLimiter, per_s: int, kind: str, who: str,
             what: str) -> None:
        item = RateLimitItemPerSecond(max(1, per_s))
        if limiter.hit(item, kind, who):
            return
        reset = limiter.get_window_stats(item, kind, who).reset_time
        wait = max(0.05, reset - time.time())
        raise RateLimited(f"too many {what}: at most {per_s} a second; retry after "
                          f"{math.ceil(wait * 10) / 10:.1f} s", wait)
