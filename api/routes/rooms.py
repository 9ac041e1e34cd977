"""``/rooms``: shared lists that everyone holding the join link changes together, live on every api process.

The owner (an API key) makes a room and shares its ``join_url``; friends join over WebSocket with the token alone
(no key), or read it as Server-Sent Events. What a participant sends and receives is
:mod:`api.rooms.participant`'s business; how a room lives in Redis, :mod:`api.rooms.store`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, WebSocket
from starlette.types import Receive, Scope, Send

from api.connections import authenticated
from api.deps import PrincipalDep, StateDep
from api.errors import error, unavailable
from api.rooms.participant import Participant
from api.rooms.store import RoomInfo
from api.state import AppState
from api.streams.senders import SseSender, WebSocketSender, close_websocket, disconnected, take_messages
from api.streams.session import ClientGone
from api.streams.wire import CLOSE_TIMEOUT, INTERNAL_ERROR, Outgoing, Refused
from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS
from conveyor.schemas import Room, RoomCreated, RoomRequest

log = logs.get("conveyor.rooms")
router = APIRouter(tags=["rooms"])
RoomId = Annotated[str, Path(min_length=1, max_length=64)]
Token = Annotated[str | None, Query(max_length=100, description="The room's join token (from its join_url)")]
Version = Annotated[
    int | None, Query(ge=0, description="Resume: the version of the last change you received (default: whole room)")
]


def _room(info: RoomInfo) -> Room:
    return Room(
        room_id=info.room_id,
        items=info.items,
        version=info.version,
        participants=info.participants,
        max_participants=info.max_participants,
        ttl_seconds=info.ttl_seconds,
        expires_at=datetime.fromtimestamp(info.expires_at, UTC),
        created_at=datetime.fromtimestamp(info.created_at, UTC),
    )


async def _owned(state: AppState, room_id: str, owner: str) -> RoomInfo:
    """The room if it exists and is ``owner``'s; else 404 (the same for both, so other owners' rooms stay hidden)."""
    info = await state.rooms.info(room_id)
    if info is None or info.owner != owner:
        raise HTTPException(404, f"no room {room_id} (it may have expired)")
    return info


@router.post(
    "/rooms",
    status_code=201,
    responses={422: {"description": "A bad body: ttl_seconds or state over the limits, duplicate items"}},
)
async def create_room(
    request: Request, state: StateDep, principal: PrincipalDep, body: RoomRequest, response: Response
) -> RoomCreated:
    """Make a room and get its ``join_url`` to share: whoever holds it joins without an API key. The room expires
    after ``ttl_seconds`` without activity (a join or a change)."""
    settings = state.settings
    if body.ttl_seconds > settings.room_max_ttl_seconds:
        raise HTTPException(422, f"ttl_seconds is at most {settings.room_max_ttl_seconds}")
    if body.state is not None and len(body.state) > settings.room_max_items:
        raise HTTPException(422, f"a room holds at most {settings.room_max_items} items")
    made = await state.rooms.create(principal.owner, body.ttl_seconds, body.max_participants, body.state or ())
    scheme = "wss" if request.url.scheme == "https" else "ws"
    base = f"{request.url.netloc}/rooms/{made.room_id}"
    response.headers["Location"] = f"/rooms/{made.room_id}"
    log.info("room made", room_id=made.room_id, owner=principal.owner, ttl_seconds=body.ttl_seconds)
    return RoomCreated(
        room_id=made.room_id,
        join_token=made.token,
        join_url=f"{scheme}://{base}/ws?token={made.token}",
        events_url=f"{request.url.scheme}://{base}/events?token={made.token}",
        expires_at=datetime.fromtimestamp(made.expires_at, UTC),
        ttl_seconds=body.ttl_seconds,
        max_participants=body.max_participants,
    )


@router.get("/rooms/{room_id}", responses={404: {"description": "No such room (or it expired)"}})
async def get_room(state: StateDep, principal: PrincipalDep, room_id: RoomId) -> Room:
    """The room now: its items, version, participants (on every api process) and when it expires. The owner's
    only."""
    return _room(await _owned(state, room_id, principal.owner))


@router.delete("/rooms/{room_id}", status_code=204, responses={404: {"description": "No such room"}})
async def delete_room(state: StateDep, principal: PrincipalDep, room_id: RoomId) -> Response:
    """Close the room: every participant, on every api process, gets ``room.closed`` and is disconnected."""
    await _owned(state, room_id, principal.owner)
    await state.rooms.delete(room_id)
    log.info("room deleted", room_id=room_id, owner=principal.owner)
    return Response(status_code=204)


@router.websocket("/rooms/{room_id}/ws")
async def room_socket(websocket: WebSocket, state: StateDep, room_id: RoomId, token: Token = None) -> None:
    """Join the room: its state first (``room.state``; with ``?version=`` the changes after it, when the room still
    has them), then every change (``room.changed``, with its version) as it happens; send commands meanwhile."""
    participant = Participant(state, room_id)
    outcome: Refused | None
    try:
        since = _version(websocket.query_params.get("version"))
        first = await participant.join(token, since)
        authenticated(websocket.scope)
        await websocket.accept()
        sender = WebSocketSender(websocket, state.settings.stream_send_timeout_seconds)
        outcome = await participant.serve(
            sender,
            first,
            lambda: take_messages(
                websocket, lambda message: participant.command(message.get("text", message.get("bytes")))
            ),
        )
    except Refused as exc:
        outcome = exc
    except Exception:  # Redis failing: this connection closes, never the api
        log.exception("room connection failed; closed with 1011", room_id=room_id)
        outcome = INTERNAL_ERROR
    finally:
        participant.close()
    await close_websocket(websocket, outcome)


def _version(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise Refused("version must be a whole number")
    return int(value)


class _RoomSseSender(SseSender):
    """A room's changes as Server-Sent Events: a change's ``id:`` is its version, so an ``EventSource`` that reconnects
    resumes from it (``Last-Event-ID``)."""

    def event_id(self, item: Outgoing) -> str | None:
        event = item.event
        return None if event is None or event.version is None else str(event.version)


class RoomEventsResponse(Response):
    """A ``text/event-stream`` of one read-only participant; refusals before it starts are JSON errors."""

    def __init__(self, state: AppState, room_id: str, token: str | None, since: int | None) -> None:
        super().__init__(media_type="text/event-stream")
        self.state = state
        self.room_id = room_id
        self.token = token
        self.since = since

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        participant = Participant(self.state, self.room_id)
        try:
            try:
                first = await participant.join(self.token, self.since)
            except Refused as exc:
                answer = unavailable(exc.detail) if exc.http_status == 503 else error(exc.http_status, exc.detail)
                await answer(scope, receive, send)
                return
            except REDIS_ERRORS as exc:
                log.warning("room stream not started", error=repr(exc))
                await unavailable("Redis is unavailable; try again shortly")(scope, receive, send)
                return
            authenticated(scope)
            sender = _RoomSseSender(send, self.state.settings.stream_send_timeout_seconds)
            await sender.start()
            heartbeat = self.state.settings.sse_heartbeat_seconds
            outcome = await participant.serve(sender, first, lambda: disconnected(receive), heartbeat)
            with anyio.move_on_after(CLOSE_TIMEOUT):
                try:
                    if outcome is not None:
                        await sender.send(Outgoing.notice(outcome.message))
                    await sender.end()
                except (ClientGone, Refused, OSError):
                    pass
        finally:
            participant.close()


@router.get(
    "/rooms/{room_id}/events",
    response_class=RoomEventsResponse,
    status_code=200,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The room, then its changes"},
        401: {"description": "No join token given"},
        404: {"description": "No such room, or not its token"},
        409: {"description": "The room is full"},
        503: {"description": "A connection cap is reached, or Redis does not answer"},
    },
)
async def room_events(
    request: Request, state: StateDep, room_id: RoomId, token: Token = None, version: Version = None
) -> Response:
    """The room read-only, as Server-Sent Events: ``room.state``, then each ``room.changed`` (its ``id:`` is its
    version: an ``EventSource`` resumes by itself), then ``room.closed``. Needs the join token, not a key."""
    if token is None:
        return error(401, "this stream needs the room's join token: ?token= from its join_url")
    last = request.headers.get("last-event-id")
    since = version
    if last is not None:
        if not last.isdigit() or len(last) > 18:
            return error(400, "Last-Event-ID must be a room version (a whole number)")
        since = int(last)
    return RoomEventsResponse(state, room_id, token, since)
