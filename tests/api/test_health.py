"""The checks behind ``/health`` on a real Redis and a real SQLite job store: each part reported, callers at the same
moment share one round of checks, and a stopped event reader or a missing worker makes the report degraded."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
import redis

from api.health import Health
from api.streams.hub import Hub
from conveyor import liveness, names
from conveyor.events import AsyncEventLog
from conveyor.redis_client import redis_client
from conveyor.store.db import create_engine

pytestmark = pytest.mark.timeout(30)


def evals(redis_url: str) -> int:
    """How many EVAL commands the Redis server has run so far (all its databases)."""
    with redis.Redis.from_url(redis_url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


def test_each_part_is_reported_and_concurrent_callers_share_one_round(private_redis_url: str, tmp_path: Path) -> None:
    queue = names.QUEUE_NOTIFICATIONS
    redis_url = private_redis_url  # no other test's workers beat there

    async def scenario() -> None:
        client = redis_client(redis_url, asynchronous=True, max_connections=2)
        engine = create_engine(f"sqlite:///{tmp_path / 'health.db'}", pool_size=1, max_overflow=1)
        hub = Hub(AsyncEventLog(client, 1000), 100, block_ms=200)
        reader = asyncio.create_task(hub.run())
        health = Health(client, engine, hub, lambda: reader, [queue])
        try:
            await asyncio.wait_for(hub.ready.wait(), 10)
            with redis.Redis.from_url(redis_url) as sync:
                node = f"w-{secrets.token_hex(4)}@test"
                liveness.beat(sync, node, [queue])
                try:
                    report = await health.report()
                    assert report.ok, report.problems
                    assert report.fields()["redis"] == "ok" and report.fields()["database"] == "ok"
                    assert report.events == "ok" and report.workers is not None and report.workers[queue] >= 1
                    assert report.errors == {"event_reader": 0}

                    before = evals(redis_url)
                    reports = await asyncio.gather(*(health.report() for _ in range(300)))
                    rounds = evals(redis_url) - before
                    assert all(r.ok for r in reports)
                    assert 1 <= rounds <= 3, f"300 callers at once made {rounds} rounds of checks"
                finally:
                    liveness.leave(sync, node, [queue])

            # The required queue's only worker left: degraded, and says why.
            degraded = await health.report()
            assert degraded.workers is not None and degraded.workers[queue] == 0
            assert degraded.problems == [f"no live worker for queue {queue}"]

            # The event reader stopped: degraded.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            stopped = await health.report()
            assert stopped.events == "stopped" and "event reader stopped" in stopped.problems
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await client.aclose()
            engine.dispose()

    asyncio.run(scenario())


def test_an_unreachable_redis_is_reported_never_raised(tmp_path: Path) -> None:
    async def scenario() -> None:
        from conveyor.ops.redis_server import free_port

        client = redis_client(f"redis://127.0.0.1:{free_port()}/0", asynchronous=True, max_connections=2)
        engine = create_engine(f"sqlite:///{tmp_path / 'health.db'}")
        hub = Hub(AsyncEventLog(client, 1000), 100)
        health = Health(client, engine, hub, lambda: None, [names.QUEUE_UPLOADS])
        try:
            report = await health.report()
            assert report.redis.startswith("unavailable: ") and report.workers is None
            assert report.database == "ok" and report.events == "stopped"
            assert not report.ok and report.problems[0].startswith("redis unavailable")
        finally:
            await client.aclose()
            engine.dispose()

    asyncio.run(scenario())
