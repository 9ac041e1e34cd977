"""uvicorn's WebSocket and HTTP protocol internals, as ``api.streams.native`` and ``api.connections`` rely on them.

``conveyor api`` runs uvicorn with ``ws="api.streams.native:WebSocketProtocol"`` (``conveyor/ops/cli.py``): uvicorn's
HTTP protocol builds that class for every upgrade request, as ``cls(config=, server_state=, app_state=)``, then
calls ``connection_made`` and feeds it the request. The class serves ``/ws`` itself (registering in
``server_state.connections``, so that uvicorn calls its ``shutdown()`` when the server stops) and hands any other
path to uvicorn's own ``WebSocketsSansIOProtocol``, built with the same three arguments.

``conveyor api`` also runs uvicorn with ``http="api.connections:HttpProtocol"``, a subclass of uvicorn's
``HttpToolsProtocol`` built as ``cls(config, server_state, app_state)``. It overrides ``connection_made``,
``connection_lost``, ``data_received``, ``on_message_begin``, ``on_headers_complete`` and
``handle_websocket_upgrade`` (calling uvicorn's), arms uvicorn's own keep-alive timer (``timeout_keep_alive_task``,
``timeout_keep_alive_handler``) on a new connection, reads ``client``, ``scope``, ``cycle.response_complete`` and
``transport``, and writes its answers with ``STATUS_LINE``.

When a test here fails, uvicorn changed one of those internals: adapt ``api/streams/native.py`` (or run
``conveyor api`` with ``ws="websockets-sansio"`` and the ASGI route ``api/routes/ws.py`` until it is adapted), or
``api/connections.py`` (or run ``conveyor api`` with ``http="httptools"``, without its connection limits, until it
is adapted), then raise the upper bound of ``uvicorn`` in pyproject.toml.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from api.connections import HttpProtocol
from api.main import create_app
from api.streams.native import WebSocketProtocol
from conveyor.ops.redis_server import free_port
from conveyor.settings import Settings
from conveyor.store.apikeys import KeyStore
from conveyor.store.db import create_engine

NATIVE = "api.streams.native:WebSocketProtocol"
HTTP = "api.connections:HttpProtocol"


def test_the_sans_io_protocol_takes_what_we_hand_over() -> None:
    parameters = inspect.signature(WebSocketsSansIOProtocol.__init__).parameters
    for name in ("config", "server_state", "app_state"):
        assert name in parameters, f"WebSocketsSansIOProtocol() lost {name}="
        assert parameters[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for method in ("connection_made", "data_received", "pause_writing", "resume_writing", "connection_lost"):
        assert callable(getattr(WebSocketsSansIOProtocol, method, None)), f"WebSocketsSansIOProtocol.{method} is gone"


def test_server_state_keeps_a_set_of_connections() -> None:
    """``WebSocketProtocol`` adds itself on handshake and discards itself when the connection is lost; the test
    of shutdown below shows uvicorn calls ``shutdown()`` on what it holds."""
    assert isinstance(ServerState().connections, set)


async def _asgi(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise NotImplementedError


def test_a_ws_protocol_named_by_string_is_the_class_uvicorn_builds() -> None:
    config = uvicorn.Config(_asgi, ws=NATIVE, http="httptools", loop="uvloop", log_config=None)
    config.load()
    assert config.ws_protocol_class is WebSocketProtocol


def test_an_http_protocol_named_by_string_is_the_class_uvicorn_builds() -> None:
    config = uvicorn.Config(_asgi, ws=NATIVE, http=HTTP, loop="uvloop", log_config=None)
    config.load()
    assert config.http_protocol_class is HttpProtocol


def test_the_httptools_protocol_has_what_ours_builds_on() -> None:
    parameters = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert parameters[:4] == ["self", "config", "server_state", "app_state"], parameters
    for method in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "handle_websocket_upgrade",
        "timeout_keep_alive_handler",
        "on_response_complete",
    ):
        assert callable(getattr(HttpToolsProtocol, method, None)), f"HttpToolsProtocol.{method} is gone"
    source = inspect.getsource(HttpToolsProtocol)
    for attribute in ("self.timeout_keep_alive_task", "self.timeout_keep_alive ", "self.client", "self.cycle"):
        assert attribute in source, f"HttpToolsProtocol no longer has {attribute.strip()}"
    assert "self.scope = {" in inspect.getsource(HttpToolsProtocol.on_message_begin)
    assert STATUS_LINE[408] == b"HTTP/1.1 408 Request Timeout\r\n"


class LiveServer:
    """``api.main.create_app(settings)`` served by uvicorn (as ``conveyor api`` does) in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http=HTTP,
            ws=NATIVE,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=3,
            ws_per_message_deflate=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")
        self.url = f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def connections(self) -> list[Any]:
        return list(self.server.server_state.connections)


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def key(settings: Settings, live: LiveServer) -> str:
    """An API key, made in the job store the running api uses (the api migrated it as it started)."""
    engine = create_engine(settings.effective_database_url)
    try:
        return KeyStore(engine).create("contracts")[1]
    finally:
        engine.dispose()


def test_another_websocket_path_is_handed_to_uvicorns_protocol(live: LiveServer) -> None:
    """No WebSocket route there: the ASGI app refuses, and uvicorn's own protocol answers 403."""
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{live.url}/not-a-websocket-route", open_timeout=10).close()
    assert refused.value.response.status_code == 403


def test_ws_without_credentials_is_refused_by_the_native_protocol(live: LiveServer) -> None:
    with connect(f"{live.url}/ws", open_timeout=10) as ws:
        message = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert message["type"] == "error" and message["detail"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_ws_is_native_registered_and_shut_down_with_the_server(live: LiveServer, key: str) -> None:
    with connect(f"{live.url}/ws", open_timeout=10, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        deadline = time.monotonic() + 10
        while not any(isinstance(c, WebSocketProtocol) for c in live.connections()):
            assert time.monotonic() < deadline, f"no native connection in server_state: {live.connections()}"
            time.sleep(0.02)
        (native,) = (c for c in live.connections() if isinstance(c, WebSocketProtocol))
        assert native.delegate is None and native.conn is not None, "/ws went to uvicorn's protocol"
        stopping = threading.Thread(target=live.stop)
        stopping.start()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        stopping.join(15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value


@pytest.fixture
def short(settings: Settings) -> Iterator[LiveServer]:
    """The live server with short connection deadlines."""
    tight = settings.model_copy(update={"keepalive_timeout_seconds": 0.5, "header_timeout_seconds": 0.5})
    with LiveServer(tight) as server:
        yield server


def test_our_protocol_closes_a_silent_connection_and_answers_slow_headers_408(short: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", short.port), timeout=10) as silent:
        assert silent.recv(1024) == b"", "a new connection that sends nothing is closed"
    with socket.create_connection(("127.0.0.1", short.port), timeout=10) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        reply = slow.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and b'"detail"' in reply
    with socket.create_connection(("127.0.0.1", short.port), timeout=10) as fine:
        fine.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert fine.recv(4096).startswith(b"HTTP/1.1 200")
