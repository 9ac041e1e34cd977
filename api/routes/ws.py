"""``GET /ws``: job events over WebSocket, resumable with ``last_event_id``.

Order of operations makes resumption exact: the subscription to live events is in place before the
backlog is read, and every event is sent at most once by comparing stream ids. So a client sees every
matching event after its resume point, in order, with no gap and no repeat.
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api.deps import StateDep
from api.hub import Filter, Subscription, event_json
from conveyor.events import AsyncEventLog, id_key

log = logging.getLogger("conveyor.ws")
router = APIRouter()

CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
BACKLOG_PAGE = 500


def make_filter(job_id: str | None, topic: str | None) -> Filter:
    """The events a connection asked for: one job, one topic, or every job event."""
    if job_id is not None:
        return lambda event: event.job_id == job_id
    if topic is not None:
        return lambda event: event.topic == topic
    return lambda event: event.job_id is not None


def predecessor(event_id: str) -> str:
    """The greatest stream id below ``event_id``, so that reading "after" it includes ``event_id``."""
    ms, seq = id_key(event_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-18446744073709551615"


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        await websocket.send_json({"type": "error", "detail": reason})
        await websocket.close(code, reason[:120])


@router.websocket("/ws")
async def events_socket(
    websocket: WebSocket,
    state: StateDep,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    topic: Annotated[str | None, Query(max_length=200)] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> None:
    """Push matching events: first those after ``last_event_id`` (or the job's whole history when a job is
    named and no resume point is given), then live ones."""
    await websocket.accept()
    if last_event_id is not None:
        try:
            id_key(last_event_id)
        except ValueError:
            await _close(websocket, CLOSE_POLICY, "last_event_id is not an event id")
            return
    with state.hub.subscribe(make_filter(job_id, topic)) as subscription:
        start = last_event_id
        if start is None and job_id is not None:
            job = await anyio.to_thread.run_sync(state.store.get, job_id)
            if job is None:
                await _close(websocket, CLOSE_POLICY, f"no job {job_id}")
                return
            first = await anyio.to_thread.run_sync(state.store.queued_event_id, job_id)
            start = predecessor(first) if first else None
        async with anyio.create_task_group() as group:

            async def send_then_cancel() -> None:
                try:
                    await _send(websocket, state.events, subscription, start)
                except WebSocketDisconnect:
                    pass
                group.cancel_scope.cancel()

            async def receive_then_cancel() -> None:
                await _receive(websocket)
                group.cancel_scope.cancel()

            group.start_soon(send_then_cancel)
            group.start_soon(receive_then_cancel)


async def _receive(websocket: WebSocket) -> None:
    """Drain what the client sends until it disconnects (commands come in a later version)."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return


async def _send(websocket: WebSocket, events: AsyncEventLog, subscription: Subscription, start: str | None) -> None:
    sent: tuple[int, int] = (0, 0)
    if start is not None:
        sent = id_key(start)
        cursor = start
        while True:
            page = await events.after(cursor, BACKLOG_PAGE)
            for event in page:
                if subscription.matches(event):
                    await websocket.send_text(event_json(event))
                sent = id_key(event.event_id)
            if len(page) < BACKLOG_PAGE:
                break
            cursor = page[-1].event_id
    while True:
        item = await subscription.queue.get()
        if item is None:
            await _close(websocket, CLOSE_TRY_AGAIN, "too far behind; reconnect with last_event_id")
            return
        event, encoded = item
        key = id_key(event.event_id)
        if key <= sent:
            continue
        await websocket.send_text(encoded)
        sent = key
