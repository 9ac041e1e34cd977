"""Helpers for the event-stream tests: real clients (WebSocket, SSE over httpx), extra api processes, publishing."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx
import redis
from websockets.sync.client import ClientConnection

from conveyor.events import EventLog, decode
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port
from conveyor.schemas import Event, EventType, JobStatus
from tests.support import base_env, conveyor, wait_until_healthy

JOB_TYPES = {t.value for t in EventType} - {EventType.TOPIC_MESSAGE.value}
FINISHED = {"job.succeeded", "job.failed", "job.cancelled"}
#: The owner of the session stack's key (tests/conftest.py): events published here straight to the stream
#: carry it, so that its streams receive them.
OWNER = "tests"


def recv(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str)
    data: dict[str, Any] = json.loads(message)
    return data


def subscribed(ws: ClientConnection, topic: str = "ack") -> list[dict[str, Any]]:
    """Subscribe an open WebSocket to ``topic`` and wait for the acknowledgement; returns the messages that came
    before it. A stream takes commands only once it is admitted and subscribed to the hub, so after this the
    connection receives every event published next."""
    ws.send(json.dumps({"op": "subscribe", "topic": topic}))
    before = []
    while (message := recv(ws)) != {"type": "subscribed", "topic": topic}:
        assert message.get("type") != "error", message
        before.append(message)
    return before


def submit(base_url: str, message: str = "hello", *, headers: Mapping[str, str]) -> str:
    response = httpx.post(
        f"{base_url}/notifications", json={"channel": "log", "message": message}, headers=headers, timeout=30
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def wait_finished(base_url: str, job_ids: list[str], timeout: float = 60, *, headers: Mapping[str, str]) -> None:
    """Poll the job store until every job finished (without using the streams under test)."""
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        while pending and time.monotonic() < deadline:
            for job_id in tuple(pending):
                response = client.get(f"/jobs/{job_id}")
                if response.status_code == 429:  # the key's rate limit: wait as told
                    time.sleep(float(response.headers["retry-after"]))
                    continue
                if response.json()["status"] in ("succeeded", "failed", "cancelled"):
                    pending.discard(job_id)
            time.sleep(0.05)
    assert not pending, f"{len(pending)} jobs did not finish"


Entry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: Any) -> list[Entry]:
    """An ``XRANGE``/``XREVRANGE`` reply of a client without ``decode_responses``, typed as what it is."""
    return cast(list[Entry], reply or [])


def stream_events(client: redis.Redis) -> list[Event]:
    """Every event the stream holds, oldest first."""
    return [decode(entry_id, fields) for entry_id, fields in stream_entries(client.xrange(EVENTS_STREAM))]


def job_events_after(redis_url: str, after: str, owner: str = OWNER) -> list[str]:
    """Ids of ``owner``'s job events (not topic messages) the stream holds after ``after``, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries = stream_entries(client.xrange(EVENTS_STREAM, min=f"({after}"))
        events = [(entry_id.decode(), json.loads(fields[b"e"])) for entry_id, fields in entries]
        return [
            entry_id
            for entry_id, event in events
            if event.get("type") in JOB_TYPES and event.get("job_id") and event.get("owner") == owner
        ]
    finally:
        client.close()


def publish(
    redis_url: str, count: int, *, topic: str | None = None, size: int = 0, job: str = "", owner: str = OWNER
) -> list[str]:
    """Append ``count`` events straight to the stream (topic messages, or ``job.started`` of made-up jobs), as
    ``owner``'s."""
    client = redis.Redis.from_url(redis_url)
    log = EventLog(client, max_len=100_000)
    ids = []
    try:
        for i in range(count):
            if topic is not None:
                event = Event(
                    type=EventType.TOPIC_MESSAGE, topic=topic, message="x" * size or i, ts=time.time(), owner=owner
                )
            else:
                job_id = f"{job}{i}"
                event = Event(type=EventType.STARTED, job_id=job_id, status=JobStatus.STARTED, ts=time.time(),
                              message="x" * size or None, owner=owner)  # fmt: skip
            ids.append(log.publish(event))
        return ids
    finally:
        client.close()


def publish_job_event(redis_url: str, job_id: str, owner: str = OWNER) -> str:
    """Append a ``job.progress`` event of ``job_id`` (``owner``'s) straight to the stream; returns its id."""
    client = redis.Redis.from_url(redis_url)
    try:
        event = Event(type=EventType.PROGRESS, job_id=job_id, status=JobStatus.STARTED, progress=0.5, ts=time.time(),
                      owner=owner)  # fmt: skip
        return EventLog(client, max_len=100_000).publish(event)
    finally:
        client.close()


SseMessage = tuple[str | None, dict[str, Any] | None, str | None]


class SseParser:
    """Server-Sent Events, line by line: :meth:`feed` returns a message (id, data, comment) at each blank line that
    ends one."""

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.data: str | None = None
        self.comment: str | None = None

    def feed(self, line: str) -> SseMessage | None:
        if line == "":
            message = (self.event_id, json.loads(self.data) if self.data else None, self.comment)
            self.event_id = self.data = self.comment = None
            return message if any(message) else None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            self.event_id = value
        elif field == "data":
            self.data = value
        elif field == "":
            self.comment = value
        return None


class SseReader:
    """A Server-Sent Events client over httpx: ``next()`` returns the next message as (id, data, comment)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.parser = SseParser()

    def next(self) -> SseMessage:
        for line in self.lines:
            if (message := self.parser.feed(line)) is not None:
                return message
        raise EOFError("stream ended")

    def next_data(self) -> tuple[str | None, dict[str, Any]]:
        while True:
            event_id, data, _comment = self.next()
            if data is not None:
                return event_id, data


@contextlib.contextmanager
def sse(base_url: str, path: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Iterator[SseReader]:
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout, connect=10)) as client:
        with client.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            yield SseReader(response)


@contextlib.contextmanager
def api_process(
    name: str, redis_url: str, data_dir: Path, database_url: str | None = None, **settings: str
) -> Iterator[str]:
    """One more ``conveyor api`` process on ``redis_url`` and ``data_dir`` (and the job store at ``database_url``,
    default SQLite under ``data_dir``); yields its base URL."""
    port = free_port()
    env = base_env(data_dir, CONVEYOR_REDIS_URL=redis_url, CONVEYOR_API_PORT=str(port), **settings)
    if database_url is not None:
        env["CONVEYOR_DATABASE_URL"] = database_url
    process = conveyor(name, ["api"], env, data_dir / "logs")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 60, [process])
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()
