"""How a message reaches a client over the ASGI transports: a WebSocket, or a Server-Sent Events response. Both end a
stream whose client does not take what is sent within ``timeout`` seconds as too slow
(:data:`~api.streams.wire.TOO_SLOW`), and raise :class:`~api.streams.session.ClientGone` once the client is gone.

(Conveyor's native ``/ws`` protocol writes frames itself: :mod:`api.streams.native`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
from fastapi import WebSocket, WebSocketDisconnect
from starlette.types import Message, Receive, Send
from starlette.websockets import WebSocketState

from api.streams.session import ClientGone
from api.streams.wire import CLOSE_POLICY, CLOSE_TIMEOUT, TOO_SLOW, Outgoing, Refused
from conveyor import logs

log = logs.get("conveyor.streams")

#: Milliseconds an ``EventSource`` waits before it reconnects.
RETRY_MS = 1000
#: The headers of every Server-Sent Events response.
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class WebSocketSender:
    """Sends to one WebSocket client."""

    __slots__ = ("timeout", "websocket")

    def __init__(self, websocket: WebSocket, timeout: float) -> None:
        self.websocket = websocket
        self.timeout = timeout

    async def send(self, item: Outgoing) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.websocket.send_text(item.text)
        except TimeoutError:
            log.info("event stream too slow; closed with 1013", code=TOO_SLOW.ws_code)
            raise TOO_SLOW.fresh() from None
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ClientGone from exc

    async def heartbeat(self) -> None:  # pragma: no cover - WebSocket keep-alive is uvicorn's ping
        return None


async def take_messages(websocket: WebSocket, handle: Callable[[Message], Awaitable[object]]) -> Refused | None:
    """Hand each message the client sends to ``handle`` until the client disconnects (``None``) or ``handle``
    refuses one (the :class:`Refused` is returned: the connection must close with it)."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            await handle(message)
        except Refused as exc:
            return exc


async def close_websocket(websocket: WebSocket, outcome: Refused | None) -> None:
    """Send ``outcome``'s last message and its close code (completing the handshake first if it was refused
    before it), unless there is no outcome, or the client is gone or does not read in time."""
    if outcome is None:
        return
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            await websocket.send_text(outcome.message)
            await websocket.close(outcome.ws_code, outcome.close_reason)
        except (WebSocketDisconnect, RuntimeError):
            return
    if outcome.ws_code != CLOSE_POLICY:
        log.info("event stream closed", code=outcome.ws_code, detail=outcome.detail)


class SseSender:
    """Writes to one Server-Sent Events client: an event is an ``id:`` line (:meth:`event_id`) and a ``data:`` line;
    a notice has no ``id:``, so it never moves the client's resume point."""

    __slots__ = ("send_body", "timeout")

    def __init__(self, send: Send, timeout: float) -> None:
        self.send_body = send
        self.timeout = timeout

    def event_id(self, item: Outgoing) -> str | None:
        """The ``id:`` of ``item``: the stream id of an event."""
        return item.event.event_id if item.event is not None else None

    async def start(self) -> None:
        """The response's head and the client's reconnection delay."""
        await self.send_body({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await self._write(f"retry: {RETRY_MS}\n\n".encode())

    async def send(self, item: Outgoing) -> None:
        event_id = self.event_id(item)
        head = f"id: {event_id}\ndata: " if event_id is not None else "data: "
        await self._write(f"{head}{item.text}\n\n".encode())

    async def heartbeat(self) -> None:
        await self._write(b": keep-alive\n\n")

    async def end(self) -> None:
        await self.send_body({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, body: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.send_body({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            log.info("event stream too slow; ended with an error message")
            raise TOO_SLOW.fresh() from None
        except OSError as exc:
            raise ClientGone from exc


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone (an SSE client sends nothing else)."""
    while (await receive())["type"] != "http.disconnect":
        pass
