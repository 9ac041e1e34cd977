"""Worker liveness in Redis: beats are counted per queue, a worker that leaves stops counting at once, one that
goes silent stops counting after ``TTL_SECONDS``."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis
import redis.asyncio as aioredis

from conveyor import liveness, names

pytestmark = pytest.mark.timeout(30)


def counts(redis_url: str, queues: list[str]) -> dict[str, int]:
    async def read() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await liveness.live_workers(client, queues)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_beats_are_counted_per_queue_and_leaving_counts_at_once(redis_url: str) -> None:
    a, b = f"q-{secrets.token_hex(4)}", f"q-{secrets.token_hex(4)}"  # queues of this test alone
    with redis.Redis.from_url(redis_url) as client:
        assert counts(redis_url, [a, b]) == {a: 0, b: 0}
        liveness.beat(client, "one@host", [a])
        liveness.beat(client, "two@host", [a, b])
        liveness.beat(client, "two@host", [a, b])  # a second beat of the same worker counts once
        assert counts(redis_url, [a, b]) == {a: 2, b: 1}
        liveness.leave(client, "two@host", [a, b])
        assert counts(redis_url, [a, b]) == {a: 1, b: 0}
        assert 0 < client.ttl(names.workers_key(a)) <= liveness.FORGET_SECONDS


def test_a_silent_worker_stops_counting_after_the_ttl(redis_url: str) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as client:
        # A beat as old as the TTL, in Redis's clock: the worker went silent that long ago.
        now_seconds, now_micros = client.time()
        stale = now_seconds + now_micros / 1e6 - liveness.TTL_SECONDS - 1
        client.zadd(names.workers_key(queue), {"gone@host": stale, "live@host": stale + liveness.TTL_SECONDS})
        assert counts(redis_url, [queue]) == {queue: 1}
