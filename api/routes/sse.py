"""``GET /events``: the same events as ``/ws`` as Server-Sent Events, for clients that cannot speak WebSocket.

Same filters (``job_id``, ``topic``, repeatable) and the same resume rule: the standard ``Last-Event-ID``
header (what ``EventSource`` sends when it reconnects) or the ``last_event_id`` parameter. Each event is one
``id: <event id>`` plus ``data: <json>`` block; messages that are not events (``resync``, ``error``) have no
``id:`` line, so they never move the client's resume point. A comment line is sent after
``CONVEYOR_SSE_HEARTBEAT_SECONDS`` without traffic so that proxies keep the connection open. Refusals before
the stream starts are JSON: 400 (bad id or filter), 404 (unknown job), 503 (a connection cap reached, or Redis or
the job store not answering).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import PrincipalDep, StateDep
from api.errors import REDIS_DOWN, STORE_DOWN, error, unavailable
from api.streams.request import StreamRequest, parse_request
from api.streams.senders import SseSender, disconnected
from api.streams.session import ClientGone, EventStream
from api.streams.wire import CLOSE_TIMEOUT, Outgoing, Refused
from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS
from conveyor.store.apikeys import Principal
from conveyor.store.jobstore import UNAVAILABLE

if TYPE_CHECKING:
    from api.state import AppState

log = logs.get("conveyor.sse")
router = APIRouter(tags=["events"])


class EventSourceResponse(Response):
    """A ``text/event-stream`` of one :class:`EventStream`; refusals before it starts are JSON errors."""

    def __init__(self, state: AppState, request: StreamRequest, principal: Principal) -> None:
        super().__init__(media_type="text/event-stream")
        self.state = state
        self.request = request
        self.principal = principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = EventStream(self.state)
        try:
            await stream.open(self.request.selection(self.principal.owner, self.state.topics), self.principal.key_id)
            start = await stream.start_point(self.request)
        except Refused as exc:
            stream.close()
            answer = unavailable(exc.detail) if exc.http_status == 503 else error(exc.http_status, exc.detail)
            await answer(scope, receive, send)
            return
        except (*REDIS_ERRORS, *UNAVAILABLE) as exc:  # reading the backlog's start, before the stream begins
            stream.close()
            redis_failed = isinstance(exc, REDIS_ERRORS)
            log.warning("event stream not started", error=repr(exc))
            await unavailable(REDIS_DOWN if redis_failed else STORE_DOWN)(scope, receive, send)
            return
        try:
            sender = SseSender(send, self.state.settings.stream_send_timeout_seconds)
            await sender.start()
            heartbeat = self.state.settings.sse_heartbeat_seconds
            outcome = await stream.serve(sender, start, lambda: disconnected(receive), heartbeat)
            # A client too slow or gone gets what it takes in time; uvicorn then drops the connection.
            with anyio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(ClientGone, Refused, OSError):
                if outcome is not None:
                    await sender.send(Outgoing.notice(outcome.message))
                await sender.end()
        finally:
            stream.close()


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
