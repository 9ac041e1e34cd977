"""The token bucket, against a real redis-server."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

from api import ratelimit
from api.ratelimit import RateLimiter, retry_after


def test_a_burst_passes_then_waits_then_refills(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            limiter = RateLimiter(client, rate=0.01, burst=5)  # a token per 100 s: none refills during the test
            key = secrets.token_hex(4)
            assert [await limiter.take(key) for _ in range(5)] == [0.0] * 5
            wait = await limiter.take(key)
            assert 99 < wait <= 100 and retry_after(wait) == "100"
            assert await limiter.take(secrets.token_hex(4)) == 0.0  # other keys have their own bucket

            quick = RateLimiter(client, rate=4.0, burst=1)
            key = secrets.token_hex(4)
            assert await quick.take(key) == 0.0
            for _ in range(20):  # a token may have come back already (a round trip slower than 0.25 s)
                if (wait := await quick.take(key)) > 0:
                    break
            assert 0 < wait <= 0.25 and retry_after(wait) == "1"
            await asyncio.sleep(wait + 0.01)  # the behaviour under test: the announced wait refills a token
            assert await quick.take(key) == 0.0
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_two_limiters_share_one_bucket(redis_url: str) -> None:
    """Two api processes each hold a limiter; the bucket is in Redis, so the limit is for both together."""

    async def scenario() -> None:
        first, second = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
        try:
            a, b = RateLimiter(first, rate=0.01, burst=4), RateLimiter(second, rate=0.01, burst=4)
            key = secrets.token_hex(4)
            results = [await (a if i % 2 else b).take(key) for i in range(6)]
            assert results[:4] == [0.0] * 4 and all(wait > 99 for wait in results[4:])
            assert retry_after(results[4]) == "100"
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_lets_requests_through() -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        try:
            assert await RateLimiter(client, rate=1, burst=1).take("k") == 0.0
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_tokens_taken_ahead_never_exceed_the_bucket(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a burst of 100, a process takes 10 tokens at a time: one round trip per 10 requests, never more than
    the bucket holds in all. (Leases last the whole test here, not the usual second.)"""
    monkeypatch.setattr(ratelimit, "LEASE_SECONDS", 3600.0)

    async def scenario() -> None:
        first, second = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
        try:
            a, b = RateLimiter(first, rate=0.01, burst=100), RateLimiter(second, rate=0.01, burst=100)
            key = secrets.token_hex(4)
            passed = [await (a if i < 5 else b).take(key) == 0.0 for i in range(120)]
            assert sum(passed) == 95  # a leased 10 and spent 5; b got the other 90
            assert passed[:95] == [True] * 95
            assert [await a.take(key) == 0.0 for _ in range(6)] == [True] * 5 + [False]  # a's lease, then empty
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(scenario())


def test_concurrent_requests_of_one_process_share_one_lease(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "LEASE_SECONDS", 3600.0)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            limiter = RateLimiter(client, rate=0.01, burst=100)
            key = secrets.token_hex(4)
            waits = await asyncio.gather(*(limiter.take(key) for _ in range(100)))
            assert waits == [0.0] * 100  # ten leases of ten, one at a time: the bucket is spent exactly
            assert await limiter.take(key) > 0
        finally:
            await client.aclose()

    asyncio.run(scenario())
