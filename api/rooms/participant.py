"""One participant's connection to a room, whatever the transport (WebSocket: reads and changes; SSE: reads).

Joining, in order: the join token is checked; a place is leased (the room's cap counts participants on every api
process, :mod:`api.leases`); the connection subscribes to the room's events in this process's hub, so changes
start collecting in its mailbox; then the room is read (:meth:`api.rooms.store.RoomStore.join`, which also extends
its life). The participant gets the room as it was read (``room.state``) — or, resuming from a version the room's
log still covers, the changes after it — then every change with a higher version, each once, in version order.
None can fall in between: the subscription existed before the read.

A client's message is a command: JSON (``{"op": "add", "item": "pizza"}``; ``remove``, ``set`` with ``items``,
``clear``) or, for command-line clients, plain text (``add:pizza``, ``remove:pizza``, ``clear``). A command that
is not carried out (malformed, over the participant's rate, the room full, nothing to change) gets a ``refused``
message to this participant only; the connection stays open. A binary message closes it with 1003, one over
4 KiB with 1009. When the room expires or is deleted, its participants get ``{"type": "room.closed", …}`` and the
connection closes (WebSocket 1000).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError

from api.leases import Lease
from api.streams.hub import Full, Selection, Subscription
from api.streams.session import Sender, side_by_side, wait_or_beat
from api.streams.wire import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED,
    MAX_COMMAND_BYTES,
    TOO_BIG,
    Outgoing,
    Refused,
    full,
)
from conveyor import logs
from conveyor.names import LEASE_ROOM
from conveyor.schemas import CommandRefused, EventType, RoomCommand, RoomState

if TYPE_CHECKING:
    from api.state import AppState

log = logs.get("conveyor.rooms")

#: WebSocket close code of a room that expired or was deleted: a normal closure.
CLOSE_NORMAL = 1000
_HINT = 'send add:<item>, remove:<item>, clear, or JSON like {"op": "add", "item": "pizza"}'


class RoomClosed(Refused):
    """The room expired or was deleted: its participants' last message, then a normal close."""

    def __init__(self, room_id: str, reason: str) -> None:
        super().__init__(f"room {room_id} {reason}", CLOSE_NORMAL, 404)
        self.room_id = room_id
        self.reason = reason

    @property
    def message(self) -> str:
        return orjson.dumps(
            {"type": EventType.ROOM_CLOSED.value, "room_id": self.room_id, "reason": self.reason}
        ).decode()


def no_room(room_id: str) -> Refused:
    """The refusal for a room that does not exist (expired, deleted) or a token that is not its own: the same answer,
    so that a stranger learns nothing."""
    return Refused(f"no room {room_id} with this token (it may have expired)", CLOSE_POLICY, 404)


def parse_command(data: str) -> RoomCommand:
    """A client's text message as a command (JSON, or ``add:<item>``, ``remove:<item>``, ``clear``); ``ValueError``
    naming the problem otherwise."""
    if data.lstrip().startswith("{"):
        try:
            return RoomCommand.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"bad command ({problems}); {_HINT}") from None
    op, colon, item = data.partition(":")
    op = op.strip().lower()
    try:
        if op == "clear" and not item.strip():
            return RoomCommand(op="clear")
        if colon and op in ("add", "remove"):
            return RoomCommand(op=op, item=item.strip())  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ValueError(f"bad item ({exc.errors()[0]['msg']})") from None
    raise ValueError(f"unknown command {data[:40]!r}; {_HINT}")


class Bucket:
    """A token bucket: ``rate`` commands per second, ``2 * rate`` at once after a pause."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Participant:
    """One connection to a room (see the module docstring). :meth:`close` it in every case."""

    def __init__(self, state: AppState, room_id: str) -> None:
        self.state = state
        self.room_id = room_id
        #: The version of the last change this participant was given.
        self.version = 0
        self._lease: Lease | None = None
        self._subscription: Subscription | None = None
        self._bucket = Bucket(state.settings.room_commands_per_second)

    @property
    def subscription(self) -> Subscription:
        assert self._subscription is not None, "the participant has not joined"
        return self._subscription

    async def join(self, token: str | None, since: int | None) -> list[Outgoing]:
        """Join (see the module docstring); returns the first messages to send. Raises :class:`Refused`: 1008 (404)
        for an unknown room or a wrong token, 1008 (409) for a full room, 1013 (503) at a connection cap."""
        rooms = self.state.rooms
        room = await rooms.info(self.room_id)
        if room is None or token is None or not room.admits(token):
            raise no_room(self.room_id)
        self._lease = await self.state.leases.take(LEASE_ROOM, self.room_id, room.max_participants)
        if self._lease is None:
            raise Refused(
                f"room {self.room_id} is full: at most {room.max_participants} participants; try again later",
                CLOSE_POLICY,
                409,
            )
        try:
            self._subscription = self.state.hub.add(Selection(rooms=[self.room_id]))
        except Full as exc:
            raise full(exc) from None
        joined = await rooms.join(self.room_id, since)
        if joined is None:
            raise no_room(self.room_id)
        self.version = joined.version
        if since is not None and since <= joined.version:
            versions = [orjson.loads(change)["version"] for change in joined.changes]
            if versions == list(range(since + 1, joined.version + 1)):  # the log covers every change missed
                return [Outgoing.notice(change) for change in joined.changes]
        state = RoomState(
            room_id=self.room_id,
            version=joined.version,
            items=joined.items,
            participants=joined.participants,
            max_participants=joined.max_participants,
            expires_at=datetime.fromtimestamp(joined.expires_at, UTC),
        )
        return [Outgoing.notice(state.model_dump_json())]

    def close(self) -> None:
        """Leave the hub and give the place back; harmless when already closed or never joined."""
        if self._subscription is not None:
            self.state.hub.remove(self._subscription)
            self._subscription = None
        lease, self._lease = self._lease, None
        if lease is not None:
            self.state.leases.release(lease)

    async def serve(
        self,
        sender: Sender,
        first: list[Outgoing],
        receive: Callable[[], Awaitable[Refused | None]],
        heartbeat: float | None = None,
    ) -> Refused | None:
        """Send (:meth:`run`) and take the client's messages (``receive``, the transport's loop) side by side until
        either ends; returns why the connection must close, if it must (an unexpected error closes only this
        connection, as :data:`~api.streams.wire.INTERNAL_ERROR`)."""
        return await side_by_side(
            self.subscription,
            lambda: self.run(sender, first, heartbeat),
            receive,
            lambda: log.exception("room connection failed; closed with 1011", room_id=self.room_id),
        )

    async def run(self, sender: Sender, first: list[Outgoing], heartbeat: float | None = None) -> None:
        """Send ``first``, then each change with a higher version than the last one sent, and this participant's
        notices, until the room closes (:class:`RoomClosed`) or the connection ends."""
        for notice in first:
            await sender.send(notice)
        subscription = self.subscription
        while True:
            if subscription.ended is not None:
                raise subscription.ended
            item = subscription.pop()
            if item is None:
                await wait_or_beat(subscription, sender, heartbeat)
                continue
            event = item.event
            if event is None:
                await sender.send(item)
            elif event.type is EventType.ROOM_CLOSED:
                raise RoomClosed(self.room_id, "deleted")
            elif event.version is not None and event.version > self.version:
                await sender.send(item)
                self.version = event.version

    async def command(self, data: str | bytes | None) -> None:
        """Carry out one client message (see the module docstring). Raises :class:`Refused` for one that closes the
        connection (binary, too big) and :class:`RoomClosed` when the room is gone."""
        if not isinstance(data, str):
            raise Refused("binary messages are not supported; send text", CLOSE_UNSUPPORTED)
        if len(data) > MAX_COMMAND_BYTES or len(data.encode()) > MAX_COMMAND_BYTES:
            raise TOO_BIG.fresh()
        try:
            command = parse_command(data)
        except ValueError as exc:
            self._refuse(None, str(exc))
            return
        if not self._bucket.take():
            rate = self.state.settings.room_commands_per_second
            self._refuse(command.op, f"too many changes: at most {rate:g} per second; slow down")
            return
        most = self.state.settings.room_max_items
        if command.items is not None and len(command.items) > most:
            self._refuse(command.op, f"a room holds at most {most} items")
            return
        changed = await self.state.rooms.change(self.room_id, command, most)
        if changed.outcome == "gone":
            raise RoomClosed(self.room_id, "expired")
        if changed.outcome == "full":
            self._refuse(command.op, f"the room holds its most items ({most}); remove one first")
        elif changed.outcome == "same":
            what = f"{command.item!r} is already there" if command.op == "add" else "there was nothing to change"
            if command.op == "remove":
                what = f"{command.item!r} is not there"
            self._refuse(command.op, f"nothing changed: {what}")

    def _refuse(self, op: str | None, detail: str) -> None:
        """Tell this participant (only) that its command was not carried out."""
        self.subscription.notice(Outgoing.notice(CommandRefused(op=op, detail=detail).model_dump_json()))
