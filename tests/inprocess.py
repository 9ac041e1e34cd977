"""The api in-process: the real app, its lifespan run the way uvicorn runs it, requests served without a socket.

:func:`serve` builds ``api.main.create_app(settings)``, runs its lifespan (job store, Redis pools, event hub) and
gives every request's scope a copy of the lifespan state, as uvicorn does. Three ways in, all on the test's event
loop:

- :attr:`Api.client`: an ``httpx.AsyncClient`` over ``httpx.ASGITransport`` (each response arrives whole);
- :meth:`Api.events`: an event stream (``/events`` never ends by itself, so its response streams); leaving the block
  tells the app that the client went away;
- :meth:`Api.websocket`: a WebSocket session with the ASGI ``/ws`` route. Conveyor's native ``/ws`` protocol lives in
  uvicorn, so its tests are system tests.

What needs a real socket (timeouts, back-pressure of the kernel, uvicorn itself) stays in ``tests/system``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.main import create_app
from api.state import AppState
from conveyor.settings import Settings
from conveyor.store.apikeys import KeyStore
from tests.events_support import SseMessage, SseParser
from tests.support import bearer

#: The owner of the key every in-process api hands its tests (the same as the session stack's).
OWNER = "tests"
#: Seconds a client waits for the app (a message, the end of a response) before the test fails.
WAIT = 10.0


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s lifespan over the ASGI lifespan protocol, as a server does; yields the state it made.

    The lifespan runs in an asyncio task of its own, as under uvicorn: what it starts (the event hub's reader) is
    not hosted by the caller's task, so nothing the app does can cancel the test (pytest's anyio plugin runs tests
    and fixtures in one task)."""
    state: dict[str, Any] = {}
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)
    with to_app, app_inbox, app_outbox, from_app:

        async def run() -> None:
            await app(scope, app_inbox.receive, app_outbox.send)

        task = _start(run(), "lifespan")
        try:
            await to_app.send({"type": "lifespan.startup"})
            with anyio.fail_after(WAIT):
                started = await from_app.receive()
            if started["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"the app did not start: {started.get('message')}")
            yield state
            await to_app.send({"type": "lifespan.shutdown"})
            with anyio.fail_after(WAIT):
                stopped = await from_app.receive()
            if stopped["type"] != "lifespan.shutdown.complete":
                raise RuntimeError(f"the app did not stop cleanly: {stopped.get('message')}")
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def with_state(app: ASGIApp, state: Mapping[str, Any]) -> ASGIApp:
    """``app`` with a shallow copy of the lifespan state in each request's scope (uvicorn's behaviour)."""

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return served


def _start(coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``coroutine`` in a task of its own, as a server runs each connection (see :func:`lifespan`)."""
    return asyncio.get_running_loop().create_task(coroutine, name=name)


async def _finish(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` to end by itself, then cancel it."""
    with anyio.move_on_after(WAIT):
        await asyncio.shield(task)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _scope(kind: str, url: httpx.URL, headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": (url.host, url.port or 80),
    }


class _Body(httpx.AsyncByteStream):
    """A response body as the app sends it; closing it is the client going away."""

    def __init__(self, chunks: MemoryObjectReceiveStream[bytes], gone: anyio.Event, task: asyncio.Task[None]) -> None:
        self.chunks = chunks
        self.gone = gone
        self.task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async with self.chunks:
            async for chunk in self.chunks:
                yield chunk

    async def aclose(self) -> None:
        self.gone.set()
        self.chunks.close()
        await _finish(self.task)


class StreamingTransport(httpx.AsyncBaseTransport):
    """An ASGI transport whose responses stream. httpx's own ``ASGITransport`` returns a response only once the app
    has sent all of it, which an event stream never does. Each request runs in a task of its own; a failure of the
    app is raised to the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        scope = _scope("http", request.url, [(k.lower(), v) for k, v in request.headers.raw])
        scope["method"] = request.method
        body = request.stream.__aiter__()
        body_done = False
        head: dict[str, Any] = {}
        started, gone = anyio.Event(), anyio.Event()
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](math.inf)
        failure: list[BaseException] = []

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await body.__anext__()
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.request", "body": chunk, "more_body": True}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                head.update(message)
                started.set()
            elif message["type"] == "http.response.body" and not gone.is_set():  # uvicorn drops what comes after
                if message.get("body"):
                    chunks_in.send_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks_in.close()

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # noqa: BLE001 - handed to the client below
                failure.append(exc)
            finally:
                chunks_in.close()
                started.set()

        task = _start(run(), "request")
        with anyio.fail_after(WAIT):
            await started.wait()
        if failure:
            raise failure[0]
        if "status" not in head:
            raise RuntimeError("the app ended without a response")
        stream = _Body(chunks_out, gone, task)
        return httpx.Response(head["status"], headers=head.get("headers", []), stream=stream, request=request)


class WebSocketClosed(Exception):
    """The app closed the WebSocket (before accepting it: the handshake was refused)."""

    def __init__(self, code: int, reason: str, *, accepted: bool) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason
        self.accepted = accepted


class WebSocketSession:
    """The client side of one ASGI WebSocket connection."""

    def __init__(self, to_app: MemoryObjectSendStream[Message], from_app: MemoryObjectReceiveStream[Message]) -> None:
        self.to_app = to_app
        self.from_app = from_app
        self.close_code: int | None = None

    async def send_text(self, text: str) -> None:
        await self.to_app.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self.to_app.send({"type": "websocket.receive", "bytes": data})

    async def receive(self, timeout: float = WAIT) -> str | bytes:
        """The app's next message; raises :class:`WebSocketClosed` when it closes instead."""
        with anyio.fail_after(timeout):
            message = await self.from_app.receive()
        if message["type"] == "websocket.close":
            self.close_code = message.get("code", 1000)
            raise WebSocketClosed(self.close_code, message.get("reason") or "", accepted=True)
        assert message["type"] == "websocket.send", message
        data: str | bytes = message["text"] if message.get("text") is not None else message["bytes"]
        return data

    async def receive_json(self, timeout: float = WAIT) -> dict[str, Any]:
        data = await self.receive(timeout)
        assert isinstance(data, str), data
        decoded: dict[str, Any] = json.loads(data)
        return decoded


@contextlib.asynccontextmanager
async def websocket_session(
    app: ASGIApp, url: httpx.URL, headers: Mapping[str, str], max_queue: float = math.inf
) -> AsyncIterator[WebSocketSession]:
    """Open a WebSocket to ``app`` at ``url``; raises :class:`WebSocketClosed` if the handshake is refused. Up to
    ``max_queue`` messages from the app wait for the client to read them; beyond that the app's sends wait, as they
    would on a socket whose buffers are full."""
    raw = [(b"host", (url.host or "api").encode())] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = _scope("websocket", url, raw)
    scope["scheme"] = "ws"
    scope["subprotocols"] = []
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](max_queue)
    ended = anyio.Event()
    failure: list[BaseException] = []

    async def send(message: Message) -> None:
        try:
            try:
                app_outbox.send_nowait(message)  # room in the buffers: a write returns at once, as on a socket
            except anyio.WouldBlock:
                await app_outbox.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise OSError("the client went away") from None  # what a server raises; Starlette makes it a disconnect

    async def run() -> None:
        try:
            await app(scope, app_inbox.receive, send)
        except Exception as exc:  # noqa: BLE001 - handed to the client below
            failure.append(exc)
        finally:
            app_outbox.close()
            ended.set()

    session = WebSocketSession(to_app, from_app)
    task = _start(run(), "websocket")
    await to_app.send({"type": "websocket.connect"})
    try:
        with anyio.fail_after(WAIT):
            try:
                first = await from_app.receive()
            except anyio.EndOfStream:
                raise (failure[0] if failure else RuntimeError("the app ended without answering")) from None
        if first["type"] == "websocket.close":
            raise WebSocketClosed(first.get("code", 1000), first.get("reason") or "", accepted=False)
        assert first["type"] == "websocket.accept", first
        yield session
    finally:
        if not ended.is_set():
            to_app.send_nowait({"type": "websocket.disconnect", "code": session.close_code or 1000})
        from_app.close()
        await _finish(task)
        to_app.close()
        app_inbox.close()
    if failure:
        raise failure[0]


class EventSource:
    """The in-process twin of ``tests.events_support.SseReader``: Server-Sent Events from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.parser = SseParser()

    async def next(self, timeout: float = WAIT) -> SseMessage:
        with anyio.fail_after(timeout):
            async for line in self.lines:
                if (message := self.parser.feed(line)) is not None:
                    return message
        raise EOFError("stream ended")

    async def next_data(self, timeout: float = WAIT) -> tuple[str | None, dict[str, Any]]:
        while True:
            event_id, data, _comment = await self.next(timeout)
            if data is not None:
                return event_id, data


@dataclass
class Api:
    """A running in-process api (see the module docstring) and an API key for it."""

    app: ASGIApp
    state: AppState
    key: str
    client: httpx.AsyncClient

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def new_key(self, owner: str) -> str:
        """Another API key, for ``owner``."""
        return KeyStore(self.state.store.engine).create(owner)[1]

    def anonymous(self) -> httpx.AsyncClient:
        """A client that sends no key; close it after use."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.client.base_url)

    @contextlib.asynccontextmanager
    async def events(self, path: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[EventSource]:
        """``GET path`` as an event stream (200, ``text/event-stream``) with the key and ``headers``; the client
        goes away on exit."""
        transport = StreamingTransport(self.app)
        async with httpx.AsyncClient(transport=transport, base_url=self.client.base_url, headers=self.headers) as c:
            response = await c.send(c.build_request("GET", path, headers=headers), stream=True)
            try:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                yield EventSource(response)
            finally:
                await response.aclose()

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        subscribed: bool = True,
        max_queue: float = math.inf,
    ) -> AsyncIterator[WebSocketSession]:
        """A WebSocket session with the ASGI route at ``path`` (query included), sending the key unless ``headers``
        are given. The route accepts before it subscribes to the hub; unless ``subscribed`` is off (a connection the
        test expects to be refused), this waits for the subscription, so that events published next reach it."""
        url = self.client.base_url.copy_with(scheme="ws").join(path)
        hub = self.state.hub
        before = len(hub.subscribers)
        async with websocket_session(self.app, url, self.headers if headers is None else headers, max_queue) as session:
            if subscribed:
                with anyio.fail_after(WAIT):
                    while len(hub.subscribers) <= before:
                        await anyio.sleep(0.001)
            yield session


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Api]:
    """The api for ``settings``, started and ready (the event hub reads the stream); stopped on exit."""
    app = create_app(settings)
    async with lifespan(app) as state:
        conveyor: AppState = state["conveyor"]
        with anyio.fail_after(WAIT):
            await conveyor.hub.ready.wait()
        key = KeyStore(conveyor.store.engine).create(OWNER)[1]
        served = with_state(app, state)
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=bearer(key)) as client:
            yield Api(served, conveyor, key, client)
