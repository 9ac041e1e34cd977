"""Which workers are alive, per queue: every worker says so in Redis every few seconds, and ``/health`` counts them.

Each queue has a sorted set (:func:`conveyor.names.workers_key`) of worker node names, each scored by when it last
said it was alive, by Redis's own clock (``TIME``), so that hosts whose clocks disagree still agree on who is live.
A worker that stops cleanly leaves at once (:func:`leave`); one that dies drops out of the count ``TTL_SECONDS``
after its last beat. Counting is one round trip whatever the number of keys in Redis (no ``SCAN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from conveyor import names

#: How often a worker says it is alive, and how long after its last beat it stops counting (3 beats missed).
INTERVAL_SECONDS = 5.0
TTL_SECONDS = 15.0
#: A queue's set disappears this long after its last worker's last beat.
FORGET_SECONDS = 86_400

_BEAT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[2]))
  redis.call('EXPIRE', key, ARGV[3])
end
return 1
"""

_COUNT = """
local clock = redis.call('TIME')
local since = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 - tonumber(ARGV[1])
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, since, '+inf')
end
return counts
"""


def beat(client: redis.Redis, node: str, queues: Sequence[str]) -> None:
    """Say that worker ``node``, consuming ``queues``, is alive now (and forget workers long gone)."""
    keys = [names.workers_key(queue) for queue in queues]
    client.eval(_BEAT, len(keys), *keys, node, TTL_SECONDS * 4, FORGET_SECONDS)


def leave(client: redis.Redis, node: str, queues: Sequence[str]) -> None:
    """Say that worker ``node`` stopped: it no longer counts for ``queues``."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(names.workers_key(queue), node)
    pipe.execute()


async def live_workers(client: aioredis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """How many workers of each of ``queues`` said they were alive in the last ``TTL_SECONDS``."""
    keys = [names.workers_key(queue) for queue in queues]
    counts: Any = await client.eval(_COUNT, len(keys), *keys, TTL_SECONDS)
    return {queue: int(count) for queue, count in zip(queues, counts, strict=True)}
