"""The WebSocket protocol on ``/ws`` (Conveyor's native one, inside uvicorn): commands, snapshots, topics, resuming,
errors and close codes. (The ASGI ``/ws`` route in-process: tests/api/routes/test_ws.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.conftest import Stack
from tests.events_support import (
    FINISHED,
    JOB_TYPES,
    api_process,
    publish,
    publish_job_event,
    recv,
    submit,
    subscribed,
    wait_finished,
)
from tests.support import base_env, bearer, create_key

pytestmark = pytest.mark.system

#: The session redis-server's database of the ``idle`` api (see tests/conftest.py for the others).
IDLE_DB = 7


def closed_with(ws: ClientConnection, code: int) -> str:
    """Read the error message that precedes a close, then the close; returns the error's detail."""
    message = recv(ws, 10)
    assert message["type"] == "error", message
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    detail: str = message["detail"]
    return detail


@dataclass
class Idle:
    """An api process whose jobs no worker takes: each waits, ``queued``, until the test runs it (``worker``)."""

    base_url: str
    redis_url: str
    headers: dict[str, str]
    worker: BurstWorker

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def idle(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    """An api process on a Redis database of its own, which no worker process consumes from; its queued jobs run in
    this process when the test drains them with a burst worker (tests/burst.py)."""
    data_dir = tmp_path_factory.mktemp("idle")
    redis_url = f"{stack.redis_url.rsplit('/', 1)[0]}/{IDLE_DB}"
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    headers = bearer(create_key(base_env(data_dir), "tests"))
    with api_process("api-idle", redis_url, data_dir) as base_url:
        worker = BurstWorker(Settings(_env_file=None, data_dir=data_dir, redis_url=redis_url))  # type: ignore[call-arg]
        try:
            yield Idle(base_url, redis_url, headers, worker)
        finally:
            worker.close()


def test_subscribe_to_a_job_sends_its_snapshot_first_then_its_events_once(idle: Idle) -> None:
    """The snapshot of a job still queued is the job as the store has it; its later events follow, each once."""
    with connect(f"{idle.ws_url}/ws?topic=nothing-here", open_timeout=10, additional_headers=idle.headers) as ws:
        assert subscribed(ws) == []
        job_id = submit(idle.base_url, headers=idle.headers)
        ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
        snapshot = recv(ws)
        assert snapshot["type"] == "snapshot" and snapshot["job_id"] == job_id
        stored = httpx.get(f"{idle.base_url}/jobs/{job_id}", headers=idle.headers, timeout=10).json()
        assert snapshot["job"] == stored and stored["status"] == "queued"
        assert idle.worker.drain() == [job_id]
        events = [recv(ws)]
        while events[-1]["type"] not in FINISHED:
            events.append(recv(ws))
    assert all(e["job_id"] == job_id for e in events)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    types = [e["type"] for e in events]  # job.queued comes too when the api read it after the subscribe
    assert types in (["job.queued", "job.started", "job.succeeded"], ["job.started", "job.succeeded"]), types


def test_unsubscribe_stops_a_jobs_events_and_is_confirmed(stack: Stack) -> None:
    """After ``unsubscribed``, an event of the job published before a marker does not arrive: the marker does."""
    with connect(
        f"{stack.ws_url}/ws?topic=unsubscribe-marker", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        assert subscribed(ws) == []
        job_id = submit(stack.base_url, headers=stack.headers)
        ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
        assert recv(ws)["type"] == "snapshot"
        ws.send(json.dumps({"op": "unsubscribe", "job_id": job_id}))
        while (message := recv(ws))["type"] != "unsubscribed":
            assert message["job_id"] == job_id
        assert message == {"type": "unsubscribed", "job_id": job_id}
        publish_job_event(stack.redis_url, job_id)
        marker = publish(stack.redis_url, 1, topic="unsubscribe-marker")
        assert recv(ws)["event_id"] == marker[0]


def test_topic_messages_reach_topic_listeners_only(stack: Stack) -> None:
    """A topic listener gets the topic's messages and no job event; a listener of all jobs gets job events and no
    topic message (events of jobs that earlier tests submitted may still arrive on it: they are job events too)."""
    with (
        connect(f"{stack.ws_url}/ws?topic=alerts", open_timeout=10, additional_headers=stack.headers) as listener,
        connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as all_jobs,
    ):
        assert subscribed(listener) == []
        early = subscribed(all_jobs)
        assert all(m["type"] in JOB_TYPES for m in early), early
        ids = publish(stack.redis_url, 3, topic="alerts")
        got = [recv(listener) for _ in ids]
        assert [m["event_id"] for m in got] == ids and all(m["type"] == "topic.message" for m in got)
        job_id = submit(stack.base_url, headers=stack.headers)
        while (event := recv(all_jobs)).get("job_id") != job_id:
            assert event["type"] in JOB_TYPES, event
        marker = publish(stack.redis_url, 1, topic="alerts")
        assert recv(listener)["event_id"] == marker[0]  # no job event came before it


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
