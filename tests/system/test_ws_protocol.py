"""The WebSocket protocol on ``/ws`` (Conveyor's native one, inside uvicorn): commands, snapshots, topics, resuming,
errors and close codes. (The ASGI ``/ws`` route in-process: tests/api/routes/test_ws.py.)"""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Stack
from tests.events_support import FINISHED, publish, recv, submit, wait_finished

pytestmark = pytest.mark.system


def closed_with(ws: ClientConnection, code: int) -> str:
    """Read the error message that precedes a close, then the close; returns the error's detail."""
    message = recv(ws, 10)
    assert message["type"] == "error", message
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    detail: str = message["detail"]
    return detail


def test_subscribe_to_a_job_sends_its_snapshot_first_then_its_events_once(stack: Stack) -> None:
    with connect(f"{stack.ws_url}/ws?topic=nothing-here", open_timeout=10, additional_headers=stack.headers) as ws:
        job_id = submit(stack.base_url, headers=stack.headers)
        ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
        snapshot = recv(ws)
        assert snapshot["type"] == "snapshot" and snapshot["job_id"] == job_id
        assert snapshot["job"]["job_id"] == job_id and snapshot["job"]["status"] in ("queued", "started", "succeeded")
        events = []
        while snapshot["job"]["status"] != "succeeded":
            event = recv(ws)
            events.append(event)
            if event["type"] in FINISHED:
                break
        assert all(e["job_id"] == job_id for e in events)
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids))
        order = ["job.queued", "job.started", "job.succeeded"]
        types = [e["type"] for e in events]
        assert types == order[len(order) - len(types) :], types


def test_unsubscribe_stops_a_jobs_events_and_is_confirmed(stack: Stack) -> None:
    with connect(f"{stack.ws_url}/ws?topic=nothing-here", open_timeout=10, additional_headers=stack.headers) as ws:
        job_id = submit(stack.base_url, headers=stack.headers)
        ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
        assert recv(ws)["type"] == "snapshot"
        ws.send(json.dumps({"op": "unsubscribe", "job_id": job_id}))
        while (message := recv(ws))["type"] != "unsubscribed":
            assert message["job_id"] == job_id
        assert message == {"type": "unsubscribed", "job_id": job_id}
        ws.send(json.dumps({"op": "subscribe", "topic": "after"}))
        assert recv(ws) == {"type": "subscribed", "topic": "after"}
        other = submit(stack.base_url, headers=stack.headers)
        publish(stack.redis_url, 1, topic="after")
        message = recv(ws)
        assert message["type"] == "topic.message" and message["topic"] == "after", (message, other)


def test_topic_messages_reach_topic_listeners_only(stack: Stack) -> None:
    with (
        connect(f"{stack.ws_url}/ws?topic=alerts", open_timeout=10, additional_headers=stack.headers) as listener,
        connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as all_jobs,
    ):
        ids = publish(stack.redis_url, 3, topic="alerts")
        got = [recv(listener) for _ in ids]
        assert [m["event_id"] for m in got] == ids and all(m["type"] == "topic.message" for m in got)
        job_id = submit(stack.base_url, headers=stack.headers)
        assert recv(all_jobs)["job_id"] == job_id


def test_resume_with_a_topic_replays_its_messages(stack: Stack) -> None:
    first, *rest = publish(stack.redis_url, 4, topic="replay")
    with connect(
        f"{stack.ws_url}/ws?topic=replay&last_event_id={first}", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        assert [recv(ws)["event_id"] for _ in rest] == rest


@pytest.mark.parametrize(
    ("send", "code", "words"),
    [
        (b"\x00\x01", 1003, "binary"),
        ("{not json", 1008, "bad command"),
        (json.dumps({"op": "shout", "job_id": "x"}), 1008, "op"),
        (json.dumps({"op": "subscribe"}), 1008, "exactly one"),
        (json.dumps({"op": "subscribe", "job_id": "a", "topic": "b"}), 1008, "exactly one"),
        (json.dumps({"op": "subscribe", "job_id": "01a207a2-fb69-7023-9247-baa030751cb3"}), 1008, "no job"),
        (json.dumps({"op": "subscribe", "topic": "x", "surprise": 1}), 1008, "surprise"),
    ],
)
def test_a_bad_message_gets_an_error_and_a_close_code(stack: Stack, send: str | bytes, code: int, words: str) -> None:
    with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        ws.send(send)
        assert words in closed_with(ws, code)
    with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        ws.send(json.dumps({"op": "subscribe", "topic": "still-fine"}))
        assert recv(ws)["type"] == "subscribed"


def test_a_message_too_big_gets_the_error_message_then_1009(stack: Stack) -> None:
    """The sans-I/O protocol refuses a frame over the limit itself while parsing it; the error message still comes
    first, as for every other refusal."""
    for size in (4097, 10_000):
        with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers, max_size=None) as ws:
            ws.send(json.dumps({"op": "subscribe", "topic": "x" * size}))
            assert "at most 4096 bytes" in closed_with(ws, 1009)


def test_bad_query_closes_1008(stack: Stack) -> None:
    for query in ("last_event_id=yesterday", "job_id=01a207a2-fb69-7023-9247-baa030751cb3", "job_id=" + "j" * 65):
        with connect(f"{stack.ws_url}/ws?{query}", open_timeout=10, additional_headers=stack.headers) as ws:
            closed_with(ws, 1008)


def test_other_websocket_paths_are_left_to_the_asgi_app(stack: Stack) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        connect(f"{stack.ws_url}/not-a-socket", open_timeout=10, additional_headers=stack.headers)
    assert refused.value.response.status_code == 403


def test_websocket_resumes_after_last_event_id_without_gap_or_repeat(stack: Stack) -> None:
    with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        first = submit(stack.base_url, "a", headers=stack.headers)
        seen = []
        while True:
            event = recv(ws)
            seen.append(event)
            if event["job_id"] == first and event["type"] == "job.succeeded":
                break
    resume_from = seen[-1]["event_id"]
    missed = [submit(stack.base_url, str(i), headers=stack.headers) for i in range(5)]
    wait_finished(stack.base_url, missed, headers=stack.headers)
    with connect(
        f"{stack.ws_url}/ws?last_event_id={resume_from}", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        got = []
        done: set[str] = set()
        while done != set(missed):
            event = recv(ws)
            got.append(event)
            if event["type"] == "job.succeeded" and event["job_id"] in missed:
                done.add(event["job_id"])
    ids = [event["event_id"] for event in got]
    assert len(ids) == len(set(ids)), "an event was repeated"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    mine = [(e["job_id"], e["type"]) for e in got if e["job_id"] in missed]
    for job_id in missed:
        assert [t for j, t in mine if j == job_id] == ["job.queued", "job.started", "job.succeeded"]
