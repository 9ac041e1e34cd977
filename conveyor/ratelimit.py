"""Per-key rate limits: a token bucket in Redis, shared by every api process.

Each key's bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one. The
whole check is one Lua script (one round trip, atomic), timed by Redis's own clock so that api processes on
hosts with different clocks agree. A bucket left alone expires once it would be full again.
"""

from __future__ import annotations

import logging
import math

import redis.asyncio as aioredis
import redis.exceptions

log = logging.getLogger("conveyor.ratelimit")

BUCKET_PREFIX = "conveyor:rate:"

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter:
    """``take(key)`` answers how long the caller must wait: 0 when the request may go ahead."""

    def __init__(self, client: aioredis.Redis, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._script = client.register_script(_TAKE)

    async def take(self, key: str, cost: int = 1) -> float:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them (returns 0.0); otherwise take nothing
        and return the seconds until it would. When Redis cannot be reached the request is let through
        (rate limiting must not turn a Redis outage into a full outage) and a warning logged."""
        try:
            wait = await self._script(keys=[BUCKET_PREFIX + key], args=[self.rate, self.burst, cost])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            log.warning("rate limiter unavailable; request let through error=%r", exc)
            return 0.0
        return float(wait)


def retry_after(wait: float) -> str:
    """The ``Retry-After`` value for a wait: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))
