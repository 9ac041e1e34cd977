"""Speaking ASGI to an app without a server: its lifespan, requests whose responses stream, WebSocket sessions.

What a server does for the app, done on the caller's event loop: the lifespan runs over the ASGI lifespan protocol
and each request's scope gets a copy of its state (as uvicorn does); each connection runs in a task of its own, so a
failure of the app reaches its client, never the caller's task. Used by :mod:`tests.inprocess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds a client waits for the app (a message, the end of a response, a connection's end) before it fails.
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
