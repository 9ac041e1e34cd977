"""Limits of the event streams, on an api with small settings and its own Redis (the stream is trimmed here):
a client that stops reading is closed while others get everything; resync after trimming; keep-alive pings;
connection caps; SSE heartbeats."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conveyor.names import EVENTS_STREAM
from tests.events_support import OWNER, api_process, publish, recv, sse
from tests.support import base_env, bearer, create_key, redis_server

pytestmark = pytest.mark.system


class Tight:
    def __init__(self, base_url: str, redis_url: str, key: str) -> None:
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://")
        self.redis_url = redis_url
        self.key = key
        self.headers = bearer(key)


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tight]:
    data_dir = tmp_path_factory.mktemp("tight")
    with redis_server(data_dir / "redis") as redis_url:
        settings = {
            "CONVEYOR_WS_SEND_QUEUE": "10",
            "CONVEYOR_STREAM_MAX_CONNECTIONS": "8",
            "CONVEYOR_STREAM_MAX_PER_TOPIC": "2",
            "CONVEYOR_WS_PING_INTERVAL": "0.5",
            "CONVEYOR_WS_PING_TIMEOUT": "0.5",
            "CONVEYOR_SSE_HEARTBEAT_SECONDS": "0.3",
        }
        key = create_key(base_env(data_dir), OWNER)
        with api_process("api-tight", redis_url, data_dir, **settings) as base_url:
            yield Tight(base_url, redis_url, key)


def _slow_socket(ws_url: str, headers: dict[str, str]) -> ClientConnection:
    """A client whose receive buffer is tiny and that reads only when told: it falls behind at once."""
    host, port = ws_url.removeprefix("ws://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return connect(f"{ws_url}/ws", sock=sock, open_timeout=10, max_queue=4, max_size=2**20, additional_headers=headers)


def test_a_client_that_stops_reading_is_closed_and_the_others_get_every_event(tight: Tight) -> None:
    count, size = 200, 64 * 1024
    received: dict[int, list[str]] = {0: [], 1: []}

    def read(ws: ClientConnection, index: int) -> None:
        while len(received[index]) < count:
            received[index].append(recv(ws, 30)["event_id"])

    with (
        connect(f"{tight.ws_url}/ws", open_timeout=10, max_size=2**20, additional_headers=tight.headers) as fast0,
        connect(f"{tight.ws_url}/ws", open_timeout=10, max_size=2**20, additional_headers=tight.headers) as fast1,
        _slow_socket(tight.ws_url, tight.headers) as slow,
    ):
        readers = [threading.Thread(target=read, args=(ws, i)) for i, ws in enumerate((fast0, fast1))]
        for reader in readers:
            reader.start()
        ids = publish(tight.redis_url, count, size=size, job="slow-")
        for reader in readers:
            reader.join(60)
        assert received[0] == ids and received[1] == ids
        got: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(recv(slow, 10))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert got[-1]["type"] == "error" and "too far behind" in got[-1]["detail"]
    events = [m["event_id"] for m in got[:-1]]
    assert events == ids[: len(events)] and len(events) < count


def test_resync_when_the_resume_point_was_trimmed_then_what_is_retained(tight: Tight) -> None:
    ids = publish(tight.redis_url, 6, topic="trimmed")
    client = redis.Redis.from_url(tight.redis_url)
    try:
        client.xtrim(EVENTS_STREAM, minid=ids[3], approximate=False)
    finally:
        client.close()
    with connect(
        f"{tight.ws_url}/ws?topic=trimmed&last_event_id={ids[1]}", open_timeout=10, additional_headers=tight.headers
    ) as ws:
        resync = recv(ws)
        assert resync["type"] == "resync" and resync["after"] == ids[1] and resync["first_event_id"] == ids[3]
        assert [recv(ws)["event_id"] for _ in ids[3:]] == ids[3:]
        live = publish(tight.redis_url, 1, topic="trimmed")
        assert recv(ws)["event_id"] == live[0]
    with connect(
        f"{tight.ws_url}/ws?topic=trimmed&last_event_id={ids[3]}", open_timeout=10, additional_headers=tight.headers
    ) as ws:
        assert [recv(ws)["event_id"] for _ in ids[4:]] == ids[4:], "no resync when nothing was lost"
    with sse(tight.base_url, "/events?topic=trimmed", {**tight.headers, "Last-Event-ID": ids[0]}) as reader:
        event_id, data = reader.next_data()
        assert event_id is None and data["type"] == "resync"
        assert reader.next_data()[0] == ids[3]


def _raw_handshake(ws_url: str, key: str) -> socket.socket:
    host, port = ws_url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    nonce = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_keepalive_pings_and_a_client_that_never_answers_is_dropped(tight: Tight) -> None:
    sock = _raw_handshake(tight.ws_url, tight.key)
    started = time.monotonic()
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert data[:1] == b"\x89", "the first frame is a ping"
    assert time.monotonic() - started < 10, "an unanswered ping drops the connection"
    with connect(f"{tight.ws_url}/ws", open_timeout=10, additional_headers=tight.headers) as ws:
        time.sleep(1.6)
        live = publish(tight.redis_url, 1, job="alive-")
        assert recv(ws)["event_id"] == live[0], "a client that answers pings stays"


def test_caps_per_topic_and_per_process_close_1013_or_answer_503(tight: Tight) -> None:
    def refused(ws: ClientConnection) -> str:
        message = recv(ws, 10)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        detail: str = message["detail"]
        return detail

    def held(stack: contextlib.ExitStack[bool | None], query: str, ack: str) -> None:
        """A connection the api counts: its ``subscribe`` to ``ack`` is acknowledged. A refusal at the process cap
        (a connection of the previous test not released yet) is tried again, for a while."""
        deadline = time.monotonic() + 10
        while True:
            with contextlib.ExitStack() as attempt:
                ws = attempt.enter_context(
                    connect(f"{tight.ws_url}/ws{query}", open_timeout=10, additional_headers=tight.headers)
                )
                ws.send(json.dumps({"op": "subscribe", "topic": ack}))
                message = recv(ws)
                if message["type"] == "subscribed":
                    stack.enter_context(attempt.pop_all())
                    return
            assert "limit of 8" in message["detail"] and time.monotonic() < deadline, message
            time.sleep(0.05)

    with contextlib.ExitStack() as busy:
        held(busy, "?topic=busy", "ack-1")
        held(busy, "?topic=busy", "ack-2")
        with connect(f"{tight.ws_url}/ws?topic=busy", open_timeout=10, additional_headers=tight.headers) as third:
            assert "topic 'busy'" in refused(third)
        response = httpx.get(f"{tight.base_url}/events?topic=busy", headers=tight.headers, timeout=10)
        assert response.status_code == 503 and "topic 'busy'" in response.json()["detail"]
        with connect(f"{tight.ws_url}/ws", open_timeout=10, additional_headers=tight.headers) as ws:
            ws.send('{"op": "subscribe", "topic": "busy"}')
            assert "topic 'busy'" in refused(ws)
        with contextlib.ExitStack() as others:
            for i in range(6):
                held(others, "", f"ack-other-{i}")
            with connect(f"{tight.ws_url}/ws", open_timeout=10, additional_headers=tight.headers) as ninth:
                assert "limit of 8" in refused(ninth)
            response = httpx.get(f"{tight.base_url}/events", headers=tight.headers, timeout=10)
            assert response.status_code == 503 and "limit of 8" in response.json()["detail"]


def test_sse_heartbeat_comments_keep_an_idle_stream_open(tight: Tight, tmp_path: Path) -> None:
    with sse(tight.base_url, "/events?topic=quiet", tight.headers) as reader:
        comments: list[str] = []
        while len(comments) < 2:
            event_id, data, comment = reader.next()
            if comment is not None:
                comments.append(comment)
        assert comments == ["keep-alive", "keep-alive"]
        live = publish(tight.redis_url, 1, topic="quiet")
        assert reader.next_data()[0] == live[0]
