"""The ASGI ``/ws`` route (what serves ``/ws`` under any other server, or with ``CONVEYOR_WS_NATIVE=false``):
the same messages, order and close codes as the native protocol."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Stack
from tests.events_support import FINISHED, api_process, publish, recv, submit


@pytest.fixture(scope="module")
def asgi_ws(stack: Stack) -> Iterator[str]:
    """A second api on the stack's Redis and job store, serving /ws through FastAPI."""
    settings = {"CONVEYOR_WS_NATIVE": "false", "CONVEYOR_WS_SEND_QUEUE": "10"}
    with api_process("api-asgi", stack.redis_url, stack.data_dir, **settings) as base_url:
        yield base_url.replace("http://", "ws://")


def closed_with(ws: ClientConnection, code: int) -> str:
    message = recv(ws, 10)
    assert message["type"] == "error"
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    detail: str = message["detail"]
    return detail


def test_resume_and_subscribe_with_snapshot(stack: Stack, asgi_ws: str) -> None:
    ids = publish(stack.redis_url, 3, topic="asgi")
    with connect(
        f"{asgi_ws}/ws?topic=asgi&last_event_id={ids[0]}", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        assert [recv(ws)["event_id"] for _ in ids[1:]] == ids[1:]
        job_id = submit(stack.base_url, headers=stack.headers)
        ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
        snapshot = recv(ws)
        assert snapshot["type"] == "snapshot" and snapshot["job"]["job_id"] == job_id
        if snapshot["job"]["status"] != "succeeded":
            while (event := recv(ws))["type"] not in FINISHED:
                assert event["job_id"] == job_id
        ws.send(json.dumps({"op": "unsubscribe", "topic": "asgi"}))
        while (message := recv(ws)).get("type") != "unsubscribed":
            assert message["job_id"] == job_id, "only the job's events (restating the snapshot) may come first"
        assert message == {"type": "unsubscribed", "topic": "asgi"}


@pytest.mark.parametrize(
    ("send", "code"),
    [(b"\x00", 1003), ("[1, 2]", 1008), ('{"op": "subscribe"}', 1008), ('{"topic": "' + "x" * 5000 + '"}', 1009)],
)
def test_bad_messages_close_with_a_code(stack: Stack, asgi_ws: str, send: str | bytes, code: int) -> None:
    with connect(f"{asgi_ws}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        ws.send(send)
        closed_with(ws, code)


def test_a_client_that_stops_reading_is_closed_1013(stack: Stack, asgi_ws: str) -> None:
    host, port = asgi_ws.removeprefix("ws://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    got: list[str] = []
    with (
        connect(
            f"{asgi_ws}/ws?topic=flood",
            sock=sock,
            open_timeout=10,
            max_queue=4,
            max_size=2**20,
            additional_headers=stack.headers,
        ) as slow,
        connect(f"{asgi_ws}/ws?topic=flood", open_timeout=10, max_size=2**20, additional_headers=stack.headers) as fast,
    ):
        reader = threading.Thread(target=lambda: got.extend(recv(fast)["event_id"] for _ in range(150)))
        reader.start()
        ids = publish(stack.redis_url, 150, topic="flood", size=64 * 1024)
        reader.join(60)
        assert got == ids
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(recv(slow, 15))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert messages[-1]["type"] == "error" and len(messages) < 150
