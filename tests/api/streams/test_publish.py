"""Client broadcasts on the ASGI ``/ws`` route: ``{"op": "publish"}`` and ``?topic=…&publish=text`` publish a
``topic.message`` event to every listener of the topic (the stream's own, resumable), when the key may; a refusal is
a ``refused`` message and publishes nothing. (The native ``/ws`` and two api processes: tests/system/test_rooms.py.)"""

from __future__ import annotations

import json

import pytest

from tests.asgi import WebSocketClosed
from tests.inprocess import Api, serve

pytestmark = pytest.mark.anyio


async def test_a_published_message_reaches_every_listener_of_the_topic(api: Api) -> None:
    async with (
        api.websocket("/ws?topic=notices") as reader,
        api.websocket("/ws?topic=other") as elsewhere,
        api.websocket("/ws?topic=notices") as writer,
    ):
        await writer.send_text(json.dumps({"op": "publish", "topic": "notices", "message": {"text": "lunch at 12"}}))
        published = await writer.receive_json()
        assert published["type"] == "published" and published["topic"] == "notices"
        for session in (reader, writer):  # the publisher listens to the topic too
            event = await session.receive_json()
            assert event["type"] == "topic.message" and event["message"] == {"text": "lunch at 12"}
            assert event["event_id"] == published["event_id"] and event["owner"] == "tests"
        await elsewhere.send_text(json.dumps({"op": "publish", "topic": "other", "message": "marker"}))
        assert (await elsewhere.receive_json())["type"] == "published"
        assert (await elsewhere.receive_json())["message"] == "marker"  # not the notice before it


async def test_publish_text_publishes_each_text_message(api: Api) -> None:
    async with api.websocket("/ws?topic=notices") as reader, api.websocket("/ws?topic=notices&publish=text") as cli:
        await cli.send_text("new menu is up")
        assert (await cli.receive_json())["type"] == "published"
        event = await reader.receive_json()
        assert event["type"] == "topic.message" and event["message"] == "new menu is up"
        # Resumable like every event: a client coming back after it with last_event_id gets what followed.
        await cli.send_text("second")
        await cli.receive_json()
        second = await reader.receive_json()
    async with api.websocket(f"/ws?topic=notices&last_event_id={event['event_id']}") as late:
        assert (await late.receive_json())["event_id"] == second["event_id"]


@pytest.mark.parametrize(
    ("query", "detail"),
    [("topic=a&topic=b&publish=text", "exactly one topic"), ("topic=a&publish=json", "publish takes one value")],
)
async def test_publish_text_needs_one_topic(api: Api, query: str, detail: str) -> None:
    async with api.websocket(f"/ws?{query}", subscribed=False) as session:
        assert detail in (await session.receive_json())["detail"]
        with pytest.raises(WebSocketClosed) as closed:
            await session.receive()
        assert closed.value.code == 1008


async def test_a_key_without_publish_rights_is_refused_and_nothing_is_delivered(api: Api) -> None:
    settings = api.settings.model_copy(update={"shared_topics": "news.*:admin"})
    async with serve(settings) as shared:
        reader_key = {"Authorization": f"Bearer {shared.new_key('reader')}"}
        async with (
            shared.websocket("/ws?topic=news.lunch", reader_key) as reader,
            shared.websocket("/ws?topic=news.lunch&publish=text") as intruder,
        ):
            await intruder.send_text("free pizza")
            refused = await intruder.receive_json()
            assert refused["type"] == "refused" and "may not publish" in refused["detail"]
            await reader.send_text(json.dumps({"op": "publish", "topic": "bad topic!", "message": 1}))
            assert "letters, digits" in (await reader.receive_json())["detail"]
            admin_key = {"Authorization": f"Bearer {shared.new_key('admin')}"}
            async with shared.websocket("/ws", admin_key) as admin:
                await admin.send_text(json.dumps({"op": "publish", "topic": "news.lunch", "message": "marker"}))
                assert (await admin.receive_json())["type"] == "published"
            assert (await reader.receive_json())["message"] == "marker"  # the intruder's text never arrived


async def test_publishing_takes_from_the_keys_rate_limit(api: Api) -> None:
    settings = api.settings.model_copy(update={"rate_limit_per_second": 0.01, "rate_limit_burst": 2})
    async with serve(settings) as limited, limited.websocket("/ws?topic=t&publish=text") as cli:
        outcomes = []
        for n in range(3):  # the handshake took one token; one is left
            await cli.send_text(f"m{n}")
            answer = await cli.receive_json()
            outcomes.append(answer["type"])
            if answer["type"] == "published":
                await cli.receive_json()  # its own event
        assert outcomes[-1] == "refused" and "published" in outcomes


async def test_a_publish_command_needs_a_topic_and_a_message(api: Api) -> None:
    async with api.websocket("/ws") as session:
        await session.send_text(json.dumps({"op": "publish", "topic": "t"}))
        assert "publish names a topic and a message" in (await session.receive_json())["detail"]
