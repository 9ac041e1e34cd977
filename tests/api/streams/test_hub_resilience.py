"""The hub keeps delivering after a stream entry that is not an event (an entry written by something else, or by a
newer version): the entry is logged and skipped, later events arrive."""

from __future__ import annotations

import json

import pytest
import redis

from conveyor.names import EVENTS_STREAM
from tests.inprocess import Api

pytestmark = pytest.mark.anyio


async def test_an_unparseable_entry_is_skipped_and_later_events_arrive(api: Api) -> None:
    async with api.websocket("/ws?topic=after") as listener:
        client = redis.Redis.from_url(api.settings.effective_redis_url)
        try:
            client.xadd(EVENTS_STREAM, {b"e": b"{not json"})
            client.xadd(EVENTS_STREAM, {b"e": json.dumps({"v": 1, "type": "no.such.type", "ts": 1.0}).encode()})
            client.xadd(EVENTS_STREAM, {b"other": b"field"})
        finally:
            client.close()
        await listener.send_text(json.dumps({"op": "publish", "topic": "after", "message": "still here"}))
        assert (await listener.receive_json())["type"] == "published"
        event = await listener.receive_json()
        assert event["type"] == "topic.message" and event["message"] == "still here"
    assert api.state.hub.failures == 0  # skipped as "not an event", not counted as a failure of the reader
