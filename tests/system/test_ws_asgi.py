"""The ASGI ``/ws`` route (what serves ``/ws`` under any other server, or with ``CONVEYOR_WS_NATIVE=false``) behind
uvicorn: a client that stops reading fills the socket's buffers and is closed with 1013. (Its messages, order and
close codes in-process: tests/api/routes/test_ws.py.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.events_support import api_process, publish, recv

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def asgi_ws(stack: Stack) -> Iterator[str]:
    """A second api on the stack's Redis and job store, serving /ws through FastAPI."""
    settings = {"CONVEYOR_WS_NATIVE": "false", "CONVEYOR_WS_SEND_QUEUE": "10"}
    with api_process("api-asgi", stack.redis_url, stack.data_dir, stack.database_url, **settings) as base_url:
        yield base_url.replace("http://", "ws://")


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
