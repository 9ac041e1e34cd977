"""The ASGI ``/ws`` route on the in-process api (what serves ``/ws`` under any server but Conveyor's own uvicorn
setup): the same messages, order and close codes as the native protocol (tests/system/test_ws_protocol.py).
Jobs are run by the burst worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from conveyor.settings import Settings
from tests.asgi import WebSocketClosed, WebSocketSession
from tests.burst import BurstWorker
from tests.events_support import FINISHED, publish, publish_job_event
from tests.inprocess import Api, serve

pytestmark = pytest.mark.anyio

UNKNOWN = "01a207a2-fb69-7023-9247-baa030751cb3"


async def submit(api: Api, message: str = "hello") -> str:
    response = await api.client.post("/notifications", json={"channel": "log", "message": message})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def closed_with(ws: WebSocketSession, code: int) -> str:
    """Read the error message that precedes a close, then the close; returns the error's detail."""
    message = await ws.receive_json()
    assert message["type"] == "error", message
    with pytest.raises(WebSocketClosed) as closed:
        await ws.receive()
    assert closed.value.code == code
    detail: str = message["detail"]
    return detail


async def test_resume_and_subscribe_with_snapshot(api: Api, burst_worker: BurstWorker) -> None:
    redis_url = api.settings.effective_redis_url
    ids = publish(redis_url, 3, topic="asgi")
    async with api.websocket(f"/ws?topic=asgi&last_event_id={ids[0]}") as ws:
        assert [(await ws.receive_json())["event_id"] for _ in ids[1:]] == ids[1:]
        job_id = await submit(api)
        await ws.send_text(json.dumps({"op": "subscribe", "job_id": job_id}))
        snapshot = await ws.receive_json()
        assert snapshot["type"] == "snapshot" and snapshot["job_id"] == job_id
        stored = (await api.client.get(f"/jobs/{job_id}")).json()
        assert snapshot["job"] == stored and stored["status"] == "queued"  # no worker ran it yet
        await burst_worker.drain_async()
        events = []
        while (event := await ws.receive_json())["type"] not in FINISHED:
            assert event["job_id"] == job_id
            events.append(event["type"])
        assert events + [event["type"]] == ["job.started", "job.succeeded"]
        await ws.send_text(json.dumps({"op": "unsubscribe", "topic": "asgi"}))
        assert await ws.receive_json() == {"type": "unsubscribed", "topic": "asgi"}


async def test_unsubscribe_stops_a_jobs_events_and_is_confirmed(api: Api) -> None:
    """After ``unsubscribed``, an event of the job published before a marker does not arrive: the marker does."""
    redis_url = api.settings.effective_redis_url
    async with api.websocket("/ws?topic=unsubscribe-marker") as ws:
        job_id = await submit(api)
        await ws.send_text(json.dumps({"op": "subscribe", "job_id": job_id}))
        assert (await ws.receive_json())["type"] == "snapshot"
        await ws.send_text(json.dumps({"op": "unsubscribe", "job_id": job_id}))
        while (message := await ws.receive_json())["type"] != "unsubscribed":
            assert message["job_id"] == job_id
        assert message == {"type": "unsubscribed", "job_id": job_id}
        publish_job_event(redis_url, job_id)
        marker = publish(redis_url, 1, topic="unsubscribe-marker")
        assert (await ws.receive_json())["event_id"] == marker[0]


async def test_topic_messages_reach_topic_listeners_only(api: Api) -> None:
    async with api.websocket("/ws?topic=alerts") as listener, api.websocket("/ws") as all_jobs:
        ids = publish(api.settings.effective_redis_url, 3, topic="alerts")
        got = [await listener.receive_json() for _ in ids]
        assert [m["event_id"] for m in got] == ids and all(m["type"] == "topic.message" for m in got)
        job_id = await submit(api)
        assert (await all_jobs.receive_json())["job_id"] == job_id
        marker = publish(api.settings.effective_redis_url, 1, topic="alerts")
        assert (await listener.receive_json())["event_id"] == marker[0]  # no job event came before it


async def test_websocket_resumes_after_last_event_id_without_gap_or_repeat(api: Api, burst_worker: BurstWorker) -> None:
    async with api.websocket("/ws") as ws:
        first = await submit(api, "a")
        await burst_worker.drain_async()
        seen = []
        while True:
            event = await ws.receive_json()
            seen.append(event)
            if event["job_id"] == first and event["type"] == "job.succeeded":
                break
    resume_from = seen[-1]["event_id"]
    missed = [await submit(api, str(i)) for i in range(5)]
    await burst_worker.drain_async()
    async with api.websocket(f"/ws?last_event_id={resume_from}") as ws:
        got = []
        done: set[str] = set()
        while done != set(missed):
            event = await ws.receive_json()
            got.append(event)
            if event["type"] == "job.succeeded" and event["job_id"] in missed:
                done.add(event["job_id"])
    ids = [event["event_id"] for event in got]
    assert len(ids) == len(set(ids)), "an event was repeated"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    mine = [(e["job_id"], e["type"]) for e in got if e["job_id"] in missed]
    for job_id in missed:
        assert [t for j, t in mine if j == job_id] == ["job.queued", "job.started", "job.succeeded"]


@pytest.mark.parametrize("query", ["last_event_id=yesterday", f"job_id={UNKNOWN}", "job_id=" + "j" * 65])
async def test_bad_query_closes_1008(api: Api, query: str) -> None:
    async with api.websocket(f"/ws?{query}", subscribed=False) as ws:
        await closed_with(ws, 1008)


@pytest.mark.parametrize(
    ("send", "code", "words"),
    [
        (b"\x00\x01", 1003, "binary"),
        ("[1, 2]", 1008, "bad command"),
        ("{not json", 1008, "bad command"),
        (json.dumps({"op": "shout", "job_id": "x"}), 1008, "op"),
        (json.dumps({"op": "subscribe"}), 1008, "exactly one"),
        (json.dumps({"op": "subscribe", "job_id": "a", "topic": "b"}), 1008, "exactly one"),
        (json.dumps({"op": "subscribe", "job_id": UNKNOWN}), 1008, "no job"),
        (json.dumps({"op": "subscribe", "topic": "x", "surprise": 1}), 1008, "surprise"),
        ('{"topic": "' + "x" * 5000 + '"}', 1009, "at most"),
    ],
)
async def test_a_bad_message_gets_an_error_and_a_close_code(api: Api, send: str | bytes, code: int, words: str) -> None:
    async with api.websocket("/ws") as ws:
        await (ws.send_bytes(send) if isinstance(send, bytes) else ws.send_text(send))
        assert words in await closed_with(ws, code)
    async with api.websocket("/ws") as ws:
        await ws.send_text(json.dumps({"op": "subscribe", "topic": "still-fine"}))
        assert (await ws.receive_json())["type"] == "subscribed"


async def test_no_key_is_closed_1008_before_any_event(api: Api) -> None:
    async with api.websocket("/ws", headers={}, subscribed=False) as ws:
        assert "key" in (await closed_with(ws, 1008)).lower()


async def test_other_websocket_paths_are_refused_at_the_handshake(api: Api) -> None:
    with pytest.raises(WebSocketClosed) as refused:
        async with api.websocket("/not-a-socket"):
            pass
    assert not refused.value.accepted


@pytest.fixture
async def small_mailboxes(api_settings: Settings) -> AsyncIterator[Api]:
    """An api whose streams may hold 10 messages for a client that does not read."""
    async with serve(api_settings.model_copy(update={"ws_send_queue": 10})) as running:
        yield running


async def test_a_client_that_stops_reading_is_closed_1013(small_mailboxes: Api) -> None:
    api = small_mailboxes
    async with (
        api.websocket("/ws?topic=flood", max_queue=4) as slow,
        api.websocket("/ws?topic=flood") as fast,
    ):
        ids = publish(api.settings.effective_redis_url, 150, topic="flood", size=1024)
        assert [(await fast.receive_json())["event_id"] for _ in ids] == ids
        messages = []
        with pytest.raises(WebSocketClosed) as closed:
            while True:
                messages.append(await slow.receive_json())
    assert closed.value.code == 1013
    assert messages[-1]["type"] == "error" and len(messages) < 150


async def test_a_stream_follows_at_most_100_jobs_and_topics(api: Api) -> None:
    async with api.websocket("/ws?topic=t0") as ws:
        for i in range(1, 100):
            await ws.send_text(json.dumps({"op": "subscribe", "topic": f"t{i}"}))
            assert await ws.receive_json() == {"type": "subscribed", "topic": f"t{i}"}
        await ws.send_text(json.dumps({"op": "subscribe", "topic": "one-too-many"}))
        assert "at most 100" in await closed_with(ws, 1008)
