"""Caps on what one API key holds at once — event streams, uploads in progress — that hold across api processes.

Each held thing is a lease: a member of a Redis sorted set per key and kind (``conveyor:leases:<kind>:<key id>``),
scored by when it expires by Redis's clock. Taking one is one Lua script (one round trip, atomic): expired leases are
dropped, and a new one is added only while fewer than the cap are left. The process that holds a lease renews it
every :data:`RENEW_SECONDS` (one script for all of its leases) and removes it when the thing ends; the leases of an
api process that died expire within :data:`LEASE_SECONDS`.

When Redis cannot be asked (down, or refusing writes), the thing is let through with a warning, as the rate limiter
does, and counted by this process only (the hub still caps streams per key in each process).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from conveyor import logs
from conveyor.names import LEASES_PREFIX
from conveyor.redis_client import REDIS_ERRORS

log = logs.get("conveyor.leases")

#: Seconds a lease lives without renewal: how long the leases of a process that died keep counting.
LEASE_SECONDS = 30.0
#: How often a process renews every lease it holds.
RENEW_SECONDS = 10.0
#: Leases renewed per script call.
RENEW_BATCH = 500

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


@dataclass(frozen=True)
class Lease:
    """One thing a key holds. ``shared`` is false when Redis could not be asked (it counts in no other process)."""

    key: str
    token: str
    shared: bool = True


class Leases:
    """Leases of this api process. :meth:`run` renews them until cancelled."""

    def __init__(self, client: aioredis.Redis, ttl: float = LEASE_SECONDS) -> None:
        self.client = client
        self.ttl_ms = int(ttl * 1000)
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self.held: set[Lease] = set()
        self._releasing: set[asyncio.Task[None]] = set()
        #: When the last renewal succeeded (monotonic), and how many renewals failed.
        self.renewed_at = 0.0
        self.failures = 0

    async def take(self, kind: str, holder: str, cap: int) -> Lease | None:
        """A lease on one of ``holder``'s ``cap`` places for ``kind`` (``None``: all are taken). Let through when
        Redis cannot be asked (see the module docstring). Release it with :meth:`release`."""
        lease = Lease(f"{LEASES_PREFIX}{kind}:{holder}", secrets.token_hex(8))
        try:
            granted = await self._take(keys=[lease.key], args=[cap, self.ttl_ms, lease.token])
        except REDIS_ERRORS as exc:
            log.warning("lease unavailable; let through", kind=kind, key_id=holder, error=repr(exc))
            return Lease(lease.key, lease.token, shared=False)
        if not int(granted):
            return None
        self.held.add(lease)
        return lease

    def release(self, lease: Lease | None) -> None:
        """Give ``lease`` back (harmless for ``None`` or a lease already released); the place is free for every
        process as soon as Redis has been told, else once the lease expires."""
        if lease is None or lease not in self.held:
            return
        self.held.discard(lease)
        task = asyncio.get_running_loop().create_task(self._remove(lease))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _remove(self, lease: Lease) -> None:
        try:
            await self.client.zrem(lease.key, lease.token)
        except REDIS_ERRORS as exc:
            log.warning("lease not released; it expires", error=repr(exc))

    async def run(self, every: float = RENEW_SECONDS) -> None:
        """Renew every held lease each ``every`` seconds, until cancelled. A failure is logged (with its traceback
        when it is not Redis's) and the next round goes on; ``failures`` counts them."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.renew()
                self.renewed_at = time.monotonic()
            except REDIS_ERRORS as exc:
                self.failures += 1
                log.warning("leases not renewed; trying again", leases=len(self.held), error=repr(exc))
            except Exception as exc:
                self.failures += 1
                log.error("lease renewal failed; going on", error=repr(exc), exc_info=exc)

    async def renew(self) -> int:
        """Renew every held lease now (one that expired meanwhile is taken again); returns how many."""
        held = list(self.held)
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            tokens = [lease.token for lease in batch]
            await self._renew(keys=[lease.key for lease in batch], args=[self.ttl_ms, *tokens])
        return len(held)

    async def aclose(self) -> None:
        """Release every held lease (at shutdown), as far as Redis can be told."""
        for lease in list(self.held):
            self.release(lease)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
