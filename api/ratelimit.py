"""Per-key rate limits: a token bucket in Redis, shared by every api process.

Each key's bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one. The
whole check is one Lua script (one round trip, atomic), timed by Redis's own clock so that api processes on
hosts with different clocks agree. A bucket left alone expires once it would be full again.

So that a busy key does not cost a round trip per request, an api process takes up to ``burst // 10`` tokens
at once and spends them locally for at most ``LEASE_SECONDS``; unspent ones are forfeited. A key may therefore
go over its limit by at most that many requests per api process; with a burst under 20, tokens are taken one
by one and the limit is exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import redis.asyncio as aioredis

from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS

log = logs.get("conveyor.ratelimit")

BUCKET_PREFIX = "conveyor:rate:"

#: The token-bucket script (one round trip, atomic).
SCRIPT = Path(__file__).with_name("ratelimit.lua")


#: What "Redis cannot be asked" looks like here: let the request through.
_UNREACHABLE: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)

#: Seconds an api process may spend tokens it took ahead.
LEASE_SECONDS = 1.0


class RateLimiter:
    """``take(key)`` answers how long the caller must wait: 0 when the request may go ahead."""

    def __init__(self, client: aioredis.Redis, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.lease = max(1, burst // 10)
        self._script = client.register_script(SCRIPT.read_text())
        self._leased: dict[str, tuple[int, float]] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def take(self, key: str) -> float:
        """Take a token from ``key``'s bucket if it holds one (returns 0.0); otherwise take nothing and return
        the seconds until it would. When Redis cannot be reached or refuses the script (``MISCONF`` on a full disk,
        ``OOM``, ``READONLY``) the request is let through (rate limiting must not turn a Redis outage into a full
        outage) and a warning logged."""
        while True:
            tokens, until = self._leased.get(key, (0, 0.0))
            if tokens > 0 and time.monotonic() < until:
                self._leased[key] = (tokens - 1, until)
                return 0.0
            pending = self._pending.get(key)
            if pending is None:
                break
            await asyncio.shield(pending)  # one request of this process asks Redis; the others wait for its lease
        pending = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._lease(key)
        finally:
            del self._pending[key]
            pending.set_result(None)

    async def _lease(self, key: str) -> float:
        try:
            granted, wait = await self._script(keys=[BUCKET_PREFIX + key], args=[self.rate, self.burst, self.lease])
        except _UNREACHABLE as exc:
            log.warning("rate limiter unavailable; request let through", error=repr(exc))
            return 0.0
        if int(granted) < 1:
            self._leased.pop(key, None)
            return float(wait)
        if len(self._leased) >= 10_000:
            self._leased.clear()
        self._leased[key] = (int(granted) - 1, time.monotonic() + LEASE_SECONDS)
        return 0.0


def retry_after(wait: float) -> str:
    """The ``Retry-After`` value for a wait: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
