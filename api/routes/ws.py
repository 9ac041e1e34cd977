"""``GET /ws``: job and topic events over WebSocket, resumable with ``last_event_id``; commands on the open socket.

What is sent, in which order, and what a client may send is :class:`api.streams.session.EventStream`'s business
(shared with SSE and the native protocol); closing codes are :mod:`api.streams.wire`'s. Keep-alive pings are
uvicorn's (``CONVEYOR_WS_PING_INTERVAL``). ``conveyor api`` serves ``/ws`` with :mod:`api.streams.native` instead,
unless ``CONVEYOR_WS_NATIVE`` is false; this route serves it under any other server.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from api.auth import origin_allowed
from api.deps import StateDep
from api.streams.request import admit, parse_request
from api.streams.senders import WebSocketSender, close_websocket, take_messages
from api.streams.session import EventStream
from api.streams.wire import CLOSE_POLICY, INTERNAL_ERROR, Refused
from conveyor import logs

log = logs.get("conveyor.ws")
router = APIRouter()


@router.websocket("/ws")
async def events_socket(websocket: WebSocket, state: StateDep) -> None:
    """Push the caller's matching events: first those after ``last_event_id`` (or the named jobs' whole history
    when no resume point is given), then live ones; accept ``subscribe``/``unsubscribe`` messages meanwhile.

    A page from a foreign ``Origin`` is refused at the handshake (403); a client without a valid key or ticket
    is closed with 1008 before any event."""
    if not origin_allowed(websocket.headers, state.settings.origins):
        await websocket.close(CLOSE_POLICY, "origin not allowed")  # before accepting: the handshake gets 403
        return
    stream = EventStream(state)
    outcome: Refused | None
    try:
        # Subscribed before the handshake completes: an event published once the client sees it open is never
        # missed, even without a resume point. A refusal is still sent as a message after the handshake.
        principal = await admit(state, websocket.headers, websocket.query_params.get("ticket"))
        request = parse_request(websocket.query_params)
        await stream.open(request.selection(principal.owner, state.topics), principal.key_id, request.text_topic)
        await websocket.accept()
        start = await stream.start_point(request)
        sender = WebSocketSender(websocket, state.settings.stream_send_timeout_seconds)
        outcome = await stream.serve(
            sender, start, lambda: take_messages(websocket, lambda message: stream.receive(message.get("text")))
        )
    except Refused as exc:
        outcome = exc
    except Exception:  # Redis or the job store failing before the stream began: this stream closes, as natively
        log.exception("event stream failed; closed with 1011")
        outcome = INTERNAL_ERROR
    finally:
        stream.close()
    await close_websocket(websocket, outcome)
