"""The event stream on a real Redis."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aioredis

from conveyor.events import AsyncEventLog, EventLog, Retention, StreamEvent, decode, encode, id_key, predecessor
from conveyor.ids import new_id
from conveyor.names import EVENTS_STREAM
from conveyor.redis_client import text
from conveyor.schemas import Event, EventType, JobStatus
from tests.events_support import stream_entries


def event(job_id: str, type_: EventType = EventType.PROGRESS, progress: float = 1.0) -> Event:
    return Event(type=type_, job_id=job_id, status=JobStatus.STARTED, progress=progress, ts=time.time())


def test_encode_decode_round_trip() -> None:
    original = event(new_id())
    decoded = decode(b"5-1", encode(original))
    assert decoded == original.model_copy(update={"event_id": "5-1"})
    assert id_key("5-1") < id_key("5-2") < id_key("6-0")


def test_a_stored_event_reaches_clients_as_the_model_would_write_it() -> None:
    original = event(new_id()).model_copy(update={"owner": "ann", "result": {"a": [1, 2]}})
    read = StreamEvent.read(b"7-3", encode(original))
    as_model = original.model_copy(update={"event_id": "7-3"}).model_dump(mode="json", exclude_none=True)
    assert json.loads(read.text) == as_model and list(json.loads(read.text)) == list(as_model)
    routing = (read.event_id, read.type, read.job_id, read.owner, read.topic)
    assert routing == ("7-3", original.type, original.job_id, "ann", None)


def test_publish_then_read_after_any_id(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = EventLog(client, max_len=10_000)
    job_id = new_id()
    ids = [log.publish(event(job_id, progress=p)) for p in range(5)]
    assert [id_key(i) for i in ids] == sorted(id_key(i) for i in ids)

    async def read() -> None:
        async_client = aioredis.Redis.from_url(redis_url)
        reader = AsyncEventLog(async_client, 10_000)
        after = [decode(entry_id, fields) for entry_id, fields in await reader.after(ids[1])]
        mine = [e for e in after if e.job_id == job_id]
        assert [e.event_id for e in mine] == ids[2:]
        assert [e.progress for e in mine] == [2.0, 3.0, 4.0]
        assert await reader.last_id() == ids[-1]
        live = await reader.read(ids[-1], block_ms=50)
        assert live == []
        await async_client.aclose()

    asyncio.run(read())
    client.close()


def test_trim_older_than_drops_only_old_events(private_redis_url: str) -> None:
    """An event two hours old (its id says when it was added) goes; one just published stays."""
    client = redis.Redis.from_url(private_redis_url)
    try:
        log = EventLog(client, max_len=10_000)
        two_hours_ago = int((time.time() - 7200) * 1000)
        old = text(client.xadd(EVENTS_STREAM, encode(event(new_id())), id=f"{two_hours_ago}-0"))  # type: ignore[arg-type]
        fresh = log.publish(event(new_id()))
        assert [entry_id for entry_id, _ in stream_entries(client.xrange(EVENTS_STREAM))] == [
            old.encode(),
            fresh.encode(),
        ]
        assert log.trim_older_than(3600) == 1
        assert [entry_id for entry_id, _ in stream_entries(client.xrange(EVENTS_STREAM))] == [fresh.encode()]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("retention", "after", "covered"),
    [
        (Retention("10-0", "20-0"), "10-0", True),
        (Retention("10-0", "20-0"), "15-3", True),
        (Retention("10-0", "20-0"), predecessor("10-0"), True),
        (Retention("10-0", "20-0"), "9-0", False),
        (Retention("10-0", "20-0"), "0-0", False),
        (Retention("10-0", "20-0", complete=True), "0-0", True),
        (Retention("10-0", "20-0"), "21-0", False),
        (Retention(None, "20-0"), "20-0", True),
        (Retention(None, "20-0"), "19-0", False),
        (Retention(None, None), "0-0", True),
        (Retention(None, None), "5-0", False),
    ],
)
def test_retention_covers_exactly_when_nothing_after_the_resume_point_can_be_gone(
    retention: Retention, after: str, covered: bool
) -> None:
    assert retention.covers(after) is covered
