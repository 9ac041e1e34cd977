"""Every route answers 503, never 500, when what it needs is gone — and its usual answer when what is gone is not
needed. Three outages of real processes: Redis stopped; the SQLite job store locked by another process (nothing can
be written: a stuck writer, a backup); PostgreSQL cut off (a TCP proxy in front of it is killed).

The tables name every operation of the OpenAPI document (one missing fails the test) and the event streams. Keys are
remembered by the api for an hour here (``CONVEYOR_AUTH_CACHE_SECONDS``), so that each route's own code meets the
outage; a key the api has not seen yet meets it in the guard (503 too).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conveyor.names import QUEUE_NOTIFICATIONS, QUEUE_UPLOADS
from tests.events_support import SseReader, recv
from tests.support import bearer, create_key, wait_until_healthy
from tests.system.faults import FaultStack
from tests.system.tcp_proxy import tcp_proxy

pytestmark = [pytest.mark.system, pytest.mark.slow]

#: The outcome of an event stream: admitted (it took a command, or an SSE stream sent its keep-alive), closed with
#: 1011 after an ``error`` message (WebSocket), ended after an ``error`` message (SSE), or an HTTP status.
ADMITTED, CLOSED_1011, ENDED_WITH_ERROR = "admitted", "closed 1011", "ended with error"

#: What each operation is asked, by the OpenAPI document's method and path (streams: by their query).
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}/attempts"),
    ("POST", "/jobs/{job_id}/retry"),
    ("POST", "/notifications"),
    ("POST", "/notifications:batch"),
    ("POST", "/uploads"),
    ("GET", "/uploads"),
    ("GET", "/uploads/{upload_id}"),
    ("GET", "/uploads/{upload_id}/content"),
    ("POST", "/ws-tickets"),
    ("GET", "/events"),
    ("GET", "/events?job_id"),
    ("WS", "/ws"),
    ("WS", "/ws?job_id"),
    ("WS", "/ws?last_event_id"),
    ("POST", "/schedules"),
    ("GET", "/schedules"),
    ("GET", "/schedules/{schedule_id}"),
    ("PATCH", "/schedules/{schedule_id}"),
    ("DELETE", "/schedules/{schedule_id}"),
    ("POST", "/rooms"),
    ("GET", "/rooms/{room_id}"),
    ("DELETE", "/rooms/{room_id}"),
    ("GET", "/rooms/{room_id}/events"),
    ("WS", "/rooms/{room_id}/ws"),
]

#: A room's operations: Redis only.
ROOMS_UP: dict[tuple[str, str], int | str] = {
    ("POST", "/rooms"): 201,
    ("GET", "/rooms/{room_id}"): 200,
    ("DELETE", "/rooms/{room_id}"): 204,
    ("GET", "/rooms/{room_id}/events"): ADMITTED,
    ("WS", "/rooms/{room_id}/ws"): ADMITTED,
}

REDIS_STOPPED: dict[tuple[str, str], int | str] = {
    ("GET", "/health"): 503,
    ("GET", "/jobs/{job_id}"): 200,
    ("DELETE", "/jobs/{job_id}"): 202,  # the cancel is recorded (the job store is the truth); its event is lost
    ("GET", "/jobs"): 200,
    ("GET", "/jobs/{job_id}/attempts"): 200,
    ("POST", "/jobs/{job_id}/retry"): 202,  # recorded; the dispatcher sends it when Redis is back
    ("POST", "/notifications"): 202,  # likewise
    ("POST", "/notifications:batch"): 202,
    ("POST", "/uploads"): 202,
    ("GET", "/uploads"): 200,
    ("GET", "/uploads/{upload_id}"): 200,
    ("GET", "/uploads/{upload_id}/content"): 200,
    ("POST", "/ws-tickets"): 503,
    ("GET", "/events"): ADMITTED,  # live events only: they come once the hub reads again
    ("GET", "/events?job_id"): ENDED_WITH_ERROR,  # its history cannot be read
    ("WS", "/ws"): ADMITTED,
    ("WS", "/ws?job_id"): CLOSED_1011,
    ("WS", "/ws?last_event_id"): CLOSED_1011,
    ("POST", "/schedules"): 201,  # the job store only
    ("GET", "/schedules"): 200,
    ("GET", "/schedules/{schedule_id}"): 200,
    ("PATCH", "/schedules/{schedule_id}"): 200,
    ("DELETE", "/schedules/{schedule_id}"): 204,
    ("POST", "/rooms"): 503,  # Redis only
    ("GET", "/rooms/{room_id}"): 503,
    ("DELETE", "/rooms/{room_id}"): 503,
    ("GET", "/rooms/{room_id}/events"): 503,
    ("WS", "/rooms/{room_id}/ws"): CLOSED_1011,
}

STORE_LOCKED: dict[tuple[str, str], int | str] = {
    **{operation: 200 for operation in REDIS_STOPPED if operation[0] == "GET"},
    ("GET", "/health"): 200,  # /health reads the store, which answers
    ("DELETE", "/jobs/{job_id}"): 503,
    ("POST", "/jobs/{job_id}/retry"): 503,
    ("POST", "/notifications"): 503,
    ("POST", "/notifications:batch"): 503,
    ("POST", "/uploads"): 503,
    ("POST", "/ws-tickets"): 201,  # Redis only
    ("GET", "/events"): ADMITTED,
    ("GET", "/events?job_id"): ADMITTED,
    ("WS", "/ws"): ADMITTED,
    ("WS", "/ws?job_id"): ADMITTED,
    ("WS", "/ws?last_event_id"): ADMITTED,
    ("POST", "/schedules"): 503,
    ("PATCH", "/schedules/{schedule_id}"): 503,
    ("DELETE", "/schedules/{schedule_id}"): 503,
    **ROOMS_UP,
}

POSTGRES_CUT: dict[tuple[str, str], int | str] = {
    **{operation: 503 for operation in OPERATIONS},
    ("POST", "/ws-tickets"): 201,  # Redis only
    ("GET", "/events"): ADMITTED,  # live events: Redis only
    ("WS", "/ws"): ADMITTED,
    ("WS", "/ws?job_id"): CLOSED_1011,  # the job is looked up in the store
    ("WS", "/ws?last_event_id"): ADMITTED,  # the backlog is Redis's
    **ROOMS_UP,
}


@dataclass
class Subjects:
    """What the operations act on: a queued job (read, cancelled), a failed one (retried), a stored upload; a
    schedule and a room read, changed or joined, and one of each deleted (``(room id, join token)``)."""

    queued: str
    failed: str
    upload: str
    schedule: str
    doomed_schedule: str
    room: tuple[str, str]
    doomed_room: str


Call = Callable[[httpx.Client, Subjects], int | str]


def sse_outcome(response: httpx.Response) -> int | str:
    """An SSE answer: its status, unless 200; then whether the stream goes on (a keep-alive comes: the heartbeat is
    1 s here) or ends after an ``error`` message."""
    if response.status_code != 200:
        return response.status_code
    reader = SseReader(response)
    while True:
        _event_id, data, comment = reader.next()
        if comment is not None or (data is not None and data.get("type") != "error"):
            return ADMITTED
        if data is not None:
            return ENDED_WITH_ERROR


def ws_outcome(url: str, headers: dict[str, str]) -> str:
    """A WebSocket's fate: admitted (its ``subscribe`` is acknowledged) or closed with 1011 after an error."""
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(json.dumps({"op": "subscribe", "topic": "ack"}))
        while (message := recv(ws))["type"] not in ("subscribed", "error"):
            pass
        if message["type"] == "subscribed":
            return ADMITTED
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None, message
        return f"closed {closed.value.rcvd.code}"


def room_outcome(url: str) -> str:
    """A room's WebSocket: admitted (the room's state arrives) or closed with 1011 after an error."""
    with connect(url, open_timeout=30) as ws:
        message = recv(ws)
        if message["type"] == "room.state":
            return ADMITTED
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None, message
        return f"closed {closed.value.rcvd.code}"


def calls(ws_url: str, headers: dict[str, str]) -> dict[tuple[str, str], Call]:
    def status(method: str, path: Callable[[Subjects], str], **kwargs: object) -> Call:
        return lambda client, s: client.request(method, path(s), **kwargs).status_code  # type: ignore[arg-type]

    def sse(query: Callable[[Subjects], str]) -> Call:
        def call(client: httpx.Client, s: Subjects) -> int | str:
            with client.stream("GET", "/events" + query(s)) as response:
                return sse_outcome(response)

        return call

    def ws(query: Callable[[Subjects], str]) -> Call:
        return lambda _client, s: ws_outcome(f"{ws_url}/ws{query(s)}", headers)

    def room_events(client: httpx.Client, s: Subjects) -> int | str:
        room_id, token = s.room
        with client.stream("GET", f"/rooms/{room_id}/events?token={token}") as response:
            return sse_outcome(response)

    def schedule() -> dict[str, object]:
        return {"name": f"s-{secrets.token_hex(4)}", "every_seconds": 3600, "notification": log}

    log = {"channel": "log", "message": "during the outage"}
    return {
        ("GET", "/health"): status("GET", lambda s: "/health"),
        ("GET", "/jobs/{job_id}"): status("GET", lambda s: f"/jobs/{s.queued}"),
        ("DELETE", "/jobs/{job_id}"): status("DELETE", lambda s: f"/jobs/{s.queued}"),
        ("GET", "/jobs"): status("GET", lambda s: "/jobs"),
        ("GET", "/jobs/{job_id}/attempts"): status("GET", lambda s: f"/jobs/{s.failed}/attempts"),
        ("POST", "/jobs/{job_id}/retry"): status("POST", lambda s: f"/jobs/{s.failed}/retry"),
        ("POST", "/notifications"): status("POST", lambda s: "/notifications", json=log),
        ("POST", "/notifications:batch"): status(
            "POST", lambda s: "/notifications:batch", json={"notifications": [log]}
        ),
        ("POST", "/uploads"): status("POST", lambda s: "/uploads", files={"file": ("b.txt", b"b\n", "text/plain")}),
        ("GET", "/uploads"): status("GET", lambda s: "/uploads"),
        ("GET", "/uploads/{upload_id}"): status("GET", lambda s: f"/uploads/{s.upload}"),
        ("GET", "/uploads/{upload_id}/content"): status("GET", lambda s: f"/uploads/{s.upload}/content"),
        ("POST", "/ws-tickets"): status("POST", lambda s: "/ws-tickets"),
        ("GET", "/events"): sse(lambda s: ""),
        ("GET", "/events?job_id"): sse(lambda s: f"?job_id={s.queued}"),
        ("WS", "/ws"): ws(lambda s: ""),
        ("WS", "/ws?job_id"): ws(lambda s: f"?job_id={s.queued}"),
        ("WS", "/ws?last_event_id"): ws(lambda s: "?last_event_id=0-0"),
        ("POST", "/schedules"): lambda client, s: client.post("/schedules", json=schedule()).status_code,
        ("GET", "/schedules"): status("GET", lambda s: "/schedules"),
        ("GET", "/schedules/{schedule_id}"): status("GET", lambda s: f"/schedules/{s.schedule}"),
        ("PATCH", "/schedules/{schedule_id}"): status(
            "PATCH", lambda s: f"/schedules/{s.schedule}", json={"paused": True}
        ),
        ("DELETE", "/schedules/{schedule_id}"): status("DELETE", lambda s: f"/schedules/{s.doomed_schedule}"),
        ("POST", "/rooms"): status("POST", lambda s: "/rooms", json={"ttl_seconds": 600}),
        ("GET", "/rooms/{room_id}"): status("GET", lambda s: f"/rooms/{s.room[0]}"),
        ("DELETE", "/rooms/{room_id}"): status("DELETE", lambda s: f"/rooms/{s.doomed_room}"),
        ("GET", "/rooms/{room_id}/events"): room_events,
        ("WS", "/rooms/{room_id}/ws"): lambda _client, s: room_outcome(
            f"{ws_url}/rooms/{s.room[0]}/ws?token={s.room[1]}"
        ),
    }


def test_the_tables_name_every_operation_of_the_openapi_document(tmp_path: Path) -> None:
    from api.main import create_app
    from conveyor.settings import Settings

    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # type: ignore[call-arg]
    documented = {
        (method.upper(), path)
        for path, operations in create_app(settings).openapi()["paths"].items()
        for method in operations
    }
    named = {operation for operation in OPERATIONS if operation[0] != "WS" and "?" not in operation[1]}
    assert named == documented
    for table in (REDIS_STOPPED, STORE_LOCKED, POSTGRES_CUT):
        assert set(table) == set(OPERATIONS)


class Outage:
    """A stack of real processes (redis-server, ``conveyor api``, workers for making the subjects) to take apart."""

    def __init__(self, root: Path, **env: str) -> None:
        self.stack = FaultStack(
            root,
            env={
                "CONVEYOR_AUTH_CACHE_SECONDS": "3600",
                "CONVEYOR_SSE_HEARTBEAT_SECONDS": "1",
                "CONVEYOR_REQUEST_TIMEOUT_SECONDS": "6",
                "CONVEYOR_MAX_ATTEMPTS": "1",
                "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
                "CONVEYOR_WEBHOOK_SECRET": "whsec_" + "A" * 32,
                **env,
            },
        )

    def start(self, failed_jobs: int) -> list[str]:
        """Start the stack; store an upload and make ``failed_jobs`` failed jobs; then stop the workers (queued jobs
        stay queued). Returns the failed jobs' ids."""
        stack = self.stack
        stack.start_redis()
        stack.start("api", ["api"])
        stack.worker("uploads", QUEUE_UPLOADS, concurrency=1)
        stack.worker("notifications", QUEUE_NOTIFICATIONS, concurrency=1)
        stack.wait_ready(["uploads", "notifications"])
        with self.client() as client:
            upload = client.post("/uploads", files={"file": ("a.txt", b"a\n", "text/plain")})
            assert upload.status_code == 202, upload.text
            self.upload = upload.json()["job_id"]
            refused = {"channel": "webhook", "url": "http://127.0.0.1:1/nobody-listens"}
            failed = [client.post("/notifications", json=refused).json()["job_id"] for _ in range(failed_jobs)]
        stack.wait_finished([self.upload], 60)
        stack.wait_finished(failed, 60, status="failed")
        stack.processes["uploads"].stop()
        stack.processes["notifications"].stop()
        return failed

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base_url, headers=self.stack.headers, timeout=60)

    def queued_job(self) -> str:
        with self.client() as client:
            response = client.post("/notifications", json={"channel": "log", "message": "waits"})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def subjects(self, failed: str) -> Subjects:
        """Fresh subjects for one outage (see :class:`Subjects`), made while everything is up."""
        made = []
        with self.client() as client:
            for _ in range(2):
                body = {
                    "name": f"s-{secrets.token_hex(4)}",
                    "every_seconds": 3600,
                    "notification": {"channel": "log", "message": "m"},
                }
                schedule = client.post("/schedules", json=body)
                assert schedule.status_code == 201, schedule.text
                made.append(schedule.json()["schedule_id"])
            rooms = [client.post("/rooms", json={"ttl_seconds": 600}).json() for _ in range(2)]
        return Subjects(
            self.queued_job(),
            failed,
            self.upload,
            made[0],
            made[1],
            (rooms[0]["room_id"], rooms[0]["join_token"]),
            rooms[1]["room_id"],
        )

    def check(self, expected: dict[tuple[str, str], int | str], subjects: Subjects) -> None:
        """Ask every operation at once (writes may wait for the store's lock: the request timeout then answers) and
        compare with ``expected``; then a key the api has never seen."""
        table = calls(self.stack.ws_url, self.stack.headers)
        with self.client() as client, ThreadPoolExecutor(len(OPERATIONS)) as pool:
            got = dict(zip(OPERATIONS, pool.map(lambda op: table[op](client, subjects), OPERATIONS), strict=True))
        wrong = {op: (got[op], expected[op]) for op in OPERATIONS if got[op] != expected[op]}
        assert not wrong, f"(got, expected) by operation: {wrong}\n{self.stack.output()}"
        assert 500 not in got.values()

    def unseen_key(self) -> dict[str, str]:
        return bearer(create_key(self.stack.env, f"unseen-{secrets.token_hex(3)}"))


@pytest.mark.timeout(240)
def test_redis_stopped_and_sqlite_locked(tmp_path: Path) -> None:
    outage = Outage(tmp_path)
    stack = outage.stack
    try:
        failed = outage.start(failed_jobs=2)
        unseen = outage.unseen_key()

        subjects = outage.subjects(failed[0])
        stack.processes["redis"].stop()
        outage.check(REDIS_STOPPED, subjects)
        stack.start_redis()
        wait_until_healthy(stack.base_url, 60, [stack.processes["api"]])

        subjects = outage.subjects(failed[1])
        with sqlite_locked(stack.data_dir / "conveyor.db"):
            outage.check(STORE_LOCKED, subjects)
            answer = httpx.post(
                f"{stack.base_url}/notifications", json={"channel": "log", "message": "x"}, headers=unseen, timeout=60
            )
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
    finally:
        stack.stop_all()


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Hold the SQLite database's write lock from this process (readers go on; every writer waits, then fails)."""
    holder = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_postgres_cut_off(tmp_path: Path, postgres_schema: tuple[sa.URL, str]) -> None:
    url, schema = postgres_schema
    options = {"options": f"-csearch_path={schema}"}
    with tcp_proxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port, query=options)
        outage = Outage(tmp_path, CONVEYOR_DATABASE_URL=through_proxy.render_as_string(hide_password=False))
        outage.stack.store_url = url.set(query=options).render_as_string(hide_password=False)
        try:
            (failed,) = outage.start(failed_jobs=1)
            unseen = outage.unseen_key()
            subjects = outage.subjects(failed)
            proxy.cut()
            outage.check(POSTGRES_CUT, subjects)
            answer = httpx.get(f"{outage.stack.base_url}/jobs", headers=unseen, timeout=60)
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
        finally:
            outage.stack.stop_all()
