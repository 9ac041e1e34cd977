"""``GET /events``: the same events as ``/ws`` as Server-Sent Events, for clients that cannot speak WebSocket.

Same filters (``job_id``, ``topic``, repeatable) and the same resume rule: the standard ``Last-Event-ID``
header (what ``EventSource`` sends when it reconnects) or the ``last_event_id`` parameter. Each event is one
``id: <event id>`` plus ``data: <json>`` block; messages that are not events (``resync``, ``error``) have no
``id:`` line, so they never move the client's resume point. A comment line is sent after
``CONVEYOR_SSE_HEARTBEAT_SECONDS`` without traffic so that proxies keep the connection open. Refusals before
the stream starts are JSON: 400 (bad id or filter), 404 (unknown job), 503 (connection cap reached).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import PrincipalDep, StateDep
from api.errors import error, unavailable
from api.streams.hub import Full, Outgoing
from api.streams.session import TOO_FAR_BEHIND, EventStream, Refused, StreamRequest, full, notice, parse_request
from conveyor.schemas import StreamError
from conveyor.store.apikeys import Principal

if TYPE_CHECKING:
    from api.state import AppState

router = APIRouter(tags=["events"])

#: Milliseconds an ``EventSource`` waits before it reconnects.
RETRY_MS = 1000
CLOSE_TIMEOUT = 10.0


class _SseSender:
    __slots__ = ("send_body",)

    def __init__(self, send: Send) -> None:
        self.send_body = send

    async def send(self, item: Outgoing) -> None:
        head = f"id: {item.event.event_id}\ndata: " if item.event is not None else "data: "
        body = f"{head}{item.text}\n\n".encode()
        await self.send_body({"type": "http.response.body", "body": body, "more_body": True})

    async def heartbeat(self) -> None:
        await self.send_body({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})


class EventSourceResponse(Response):
    """A ``text/event-stream`` of one :class:`EventStream`; refusals before it starts are JSON errors."""

    def __init__(self, state: AppState, request: StreamRequest, principal: Principal) -> None:
        super().__init__(media_type="text/event-stream")
        self.state = state
        self.request = request
        self.principal = principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            selection = self.request.selection(self.principal.owner, self.state.topics)
            with self.state.hub.subscribe(selection, self.principal.key_id) as subscription:
                stream = EventStream(self.state, subscription)
                start = await stream.start_point(self.request)
                await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                await send({"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True})
                outcome = await _serve(stream, start, receive, send, self.state.settings.sse_heartbeat_seconds)
                if outcome is not None:
                    with anyio.move_on_after(CLOSE_TIMEOUT):
                        await _SseSender(send).send(notice(StreamError(detail=outcome.detail).model_dump_json()))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Full as exc:
            await _refuse(full(exc), scope, receive, send)
        except Refused as exc:
            await _refuse(exc, scope, receive, send)


_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def _refuse(refused: Refused, scope: Scope, receive: Receive, send: Send) -> None:
    answer = unavailable(refused.detail) if refused.http_status == 503 else error(refused.http_status, refused.detail)
    await answer(scope, receive, send)


async def _serve(
    stream: EventStream, start: str | None, receive: Receive, send: Send, heartbeat: float
) -> Refused | None:
    """Send until the client disconnects or the stream must end; returns why it must end, if it must."""
    outcome: Refused | None = None
    async with anyio.create_task_group() as group:
        stream.subscription.on_overflow = group.cancel_scope.cancel

        async def run() -> None:
            nonlocal outcome
            try:
                await stream.run(_SseSender(send), start, heartbeat)
            except Refused as exc:
                outcome = exc
            except OSError:
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        while (await receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()
    if stream.subscription.overflowed:
        return TOO_FAR_BEHIND
    return outcome


@router.get(
    "/events",
    response_class=EventSourceResponse,
    status_code=200,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream"},
        400: {"description": "Malformed last_event_id or filters"},
        403: {"description": "A foreign Origin, or a shared topic the key may not read"},
        404: {"description": "A named job does not exist"},
        503: {"description": "The api process holds its limit of event streams (or the topic does)"},
    },
)
async def events_stream(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    ticket: Annotated[str | None, Query(max_length=100, description="A ticket from POST /ws-tickets")] = None,
) -> Response:
    """The caller's job and topic events as Server-Sent Events: the backlog after ``Last-Event-ID`` (or the
    named jobs' whole history), then live events, each once and in order. Browsers, whose ``EventSource``
    cannot send a key, pass a ticket instead (:class:`api.guard.Guard` takes it, after refusing a page from
    a foreign ``Origin`` with 403)."""
    try:
        stream_request = parse_request(request.query_params, request.headers.get("last-event-id"))
    except Refused as exc:
        return error(exc.http_status, exc.detail)
    return EventSourceResponse(state, stream_request, principal)
