"""``GET /ws``: job and topic events over WebSocket, resumable with ``last_event_id``; commands on the open socket.

What is sent, and in which order, is :class:`api.streams.session.EventStream`'s business (shared with SSE). This
module adds the WebSocket side: the client's ``subscribe``/``unsubscribe`` messages, and closing with a code
— 1003 for a binary message, 1008 for a malformed one or a bad request, 1009 above 4 KiB, 1013 when a cap
is reached or the client fell too far behind — after a ``{"type": "error", "detail": …}`` message.
Keep-alive pings are uvicorn's (``CONVEYOR_WS_PING_INTERVAL``). ``conveyor api`` serves ``/ws`` with
:mod:`api.streams.native` instead, unless ``CONVEYOR_WS_NATIVE`` is false.
"""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.websockets import WebSocketState

from api.auth import origin_allowed
from api.deps import StateDep
from api.streams.hub import Full, Outgoing
from api.streams.session import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    TOO_FAR_BEHIND,
    EventStream,
    Refused,
    admit,
    full,
    parse_request,
)
from conveyor.schemas import StreamCommand, StreamError

log = logging.getLogger("conveyor.ws")
router = APIRouter()

#: Largest client message, in bytes (as on the native protocol); larger ones are closed with 1009.
MAX_COMMAND = 4096
CLOSE_TOO_BIG = 1009
#: Seconds spent trying to deliver the closing message to a client that does not read.
CLOSE_TIMEOUT = 10.0


class _WebSocketSender:
    __slots__ = ("websocket",)

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, item: Outgoing) -> None:
        await self.websocket.send_text(item.text)

    async def heartbeat(self) -> None:  # pragma: no cover - WebSocket keep-alive is uvicorn's ping
        return None


@router.websocket("/ws")
async def events_socket(websocket: WebSocket, state: StateDep) -> None:
    """Push the caller's matching events: first those after ``last_event_id`` (or the named jobs' whole history
    when no resume point is given), then live ones; accept ``subscribe``/``unsubscribe`` messages meanwhile.

    A page from a foreign ``Origin`` is refused at the handshake (403); a client without a valid key or ticket
    is closed with 1008 before any event."""
    if not origin_allowed(websocket.headers, state.settings.origins):
        await websocket.close(CLOSE_POLICY, "origin not allowed")  # before accepting: the handshake gets 403
        return
    await websocket.accept()
    outcome: Refused | None
    try:
        principal = await admit(state, websocket.headers, websocket.query_params.get("ticket"))
        request = parse_request(websocket.query_params)
        selection = request.selection(principal.owner, state.topics)
        with state.hub.subscribe(selection, principal.key_id) as subscription:
            stream = EventStream(state, subscription)
            start = await stream.start_point(request)
            outcome = await _serve(websocket, stream, start)
    except Refused as exc:
        outcome = exc
    except Full as exc:
        outcome = full(exc)
    if outcome is not None:
        await _close(websocket, outcome)


async def _serve(websocket: WebSocket, stream: EventStream, start: str | None) -> Refused | None:
    """Send and receive side by side until either ends; returns why the stream must close, if it must."""
    outcome: Refused | None = None
    async with anyio.create_task_group() as group:
        stream.subscription.on_overflow = group.cancel_scope.cancel

        async def send() -> None:
            nonlocal outcome
            try:
                await stream.run(_WebSocketSender(websocket), start)
            except Refused as exc:
                outcome = exc
            except WebSocketDisconnect:
                pass
            group.cancel_scope.cancel()

        async def receive() -> None:
            nonlocal outcome
            outcome = await _receive(websocket, stream)
            group.cancel_scope.cancel()

        group.start_soon(send)
        group.start_soon(receive)
    if stream.subscription.overflowed:
        return TOO_FAR_BEHIND
    return outcome


async def _receive(websocket: WebSocket, stream: EventStream) -> Refused | None:
    """Apply the client's commands until it disconnects (``None``) or sends something unacceptable."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            return Refused("binary messages are not supported; send JSON text", CLOSE_UNSUPPORTED)
        if len(text.encode()) > MAX_COMMAND:
            return Refused(f"a message is at most {MAX_COMMAND} bytes", CLOSE_TOO_BIG)
        try:
            command = StreamCommand.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
            return Refused(f'bad command ({problems}); send {{"op": "subscribe", "job_id": …}}')
        try:
            await stream.command(command)
        except Refused as exc:
            return exc


async def _close(websocket: WebSocket, outcome: Refused) -> None:
    """Send the error message and the close code, unless the client is gone or does not read in time."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with anyio.move_on_after(CLOSE_TIMEOUT):
        try:
            await websocket.send_text(StreamError(detail=outcome.detail).model_dump_json())
            await websocket.close(outcome.ws_code, outcome.detail.encode()[:120].decode(errors="ignore"))
        except (WebSocketDisconnect, RuntimeError):
            return
    if outcome.ws_code != CLOSE_POLICY:
        log.info("event stream closed code=%d detail=%r", outcome.ws_code, outcome.detail)
