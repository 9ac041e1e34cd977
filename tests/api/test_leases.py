"""Per-key caps across api processes (api/leases.py), on a real Redis: places taken up to the cap and given back, the
leases of a process that died expire, renewal keeps them, the renewal loop outlives Redis errors; and the cap on
event streams holds on an api whose places another process holds (503 on SSE, 1013 on WebSocket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from api.leases import Lease, Leases
from conveyor.names import LEASE_STREAM, LEASES_PREFIX
from conveyor.ops.redis_server import free_port
from conveyor.redis_client import redis_client
from conveyor.settings import Settings
from tests.asgi import WebSocketClosed
from tests.inprocess import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(private_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(private_redis_url, asynchronous=True)
    yield client
    await client.aclose()


async def test_places_up_to_the_cap_then_none_until_one_is_given_back(client: aioredis.Redis) -> None:
    one, other = Leases(client), Leases(client)
    taken = [
        await one.take("thing", "key1", 3),
        await other.take("thing", "key1", 3),
        await one.take("thing", "key1", 3),
    ]
    assert all(lease is not None and lease.shared for lease in taken)
    assert await other.take("thing", "key1", 3) is None
    assert await other.take("thing", "key2", 3) is not None, "each key has its own places"
    one.release(taken[0])
    with anyio.fail_after(10):
        while await other.take("thing", "key1", 3) is None:
            await anyio.sleep(0.01)
    await one.aclose()
    await other.aclose()


async def test_the_leases_of_a_process_that_died_expire(client: aioredis.Redis) -> None:
    dead = Leases(client, ttl=0.3)  # never renewed, never released
    assert await dead.take("thing", "key", 1) is not None
    alive = Leases(client)
    assert await alive.take("thing", "key", 1) is None
    with anyio.fail_after(10):
        while await alive.take("thing", "key", 1) is None:
            await anyio.sleep(0.05)
    await alive.aclose()


async def test_renewal_moves_every_held_lease_forward(client: aioredis.Redis) -> None:
    leases = Leases(client, ttl=5)
    held = [await leases.take("thing", f"key{i}", 1) for i in range(3)]
    assert all(held)
    before = {lease.key: await client.zscore(lease.key, lease.token) for lease in held if lease is not None}
    await anyio.sleep(0.01)
    assert await leases.renew() == 3
    for lease in held:
        assert lease is not None
        after = await client.zscore(lease.key, lease.token)
        assert after is not None and after > (before[lease.key] or 0)
    await client.delete(*(lease.key for lease in held if lease is not None))
    assert await leases.renew() == 3, "a lease Redis lost is taken again"
    assert all([await client.zscore(lease.key, lease.token) for lease in held if lease is not None])
    await leases.aclose()


async def test_the_renewal_loop_outlives_redis_errors() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", asynchronous=True)  # nothing listens there
    leases = Leases(client)
    leases.held.add(await _unshared(leases))  # as if taken before Redis went away: renewal must try it
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(leases.run, 0.01)
            while leases.failures < 3:
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()
    await client.aclose()


async def _unshared(leases: Leases) -> Lease:
    lease = await leases.take("thing", "key", 1)
    assert lease is not None and not lease.shared, "Redis cannot be asked: let through, counted here only"
    return lease


async def test_a_keys_streams_are_capped_across_processes(
    tmp_path: Path, private_redis_url: str, client: aioredis.Redis
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=private_redis_url, max_streams_per_key=2)  # type: ignore[call-arg]
    async with serve(settings) as api:
        holder = api.key.split("_")[1]
        other = Leases(client)  # another api process, holding two streams of this key
        held = [await other.take(LEASE_STREAM, holder, 2) for _ in range(2)]
        assert all(held)
        refused = await api.client.get("/events")
        assert refused.status_code == 503 and "limit of 2 event streams" in refused.json()["detail"]
        async with api.websocket("/ws", subscribed=False) as ws:
            message = await ws.receive_json()
            assert message["type"] == "error" and "limit of 2 event streams" in message["detail"]
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1013
        other.release(held[0])
        with anyio.fail_after(10):
            while await client.zcard(f"{LEASES_PREFIX}{LEASE_STREAM}:{holder}") > 1:
                await anyio.sleep(0.01)
        async with api.events("/events?topic=now-mine") as stream:
            assert await client.zcard(f"{LEASES_PREFIX}{LEASE_STREAM}:{holder}") == 2
            del stream
        with anyio.fail_after(10):
            while await client.zcard(f"{LEASES_PREFIX}{LEASE_STREAM}:{holder}") > 1:
                await anyio.sleep(0.01)  # the stream's place is given back when it ends
        await other.aclose()
