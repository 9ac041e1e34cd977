"""Closing the participants of rooms that expired: each api process looks, every second, whether the rooms its
participants are in still exist (one round trip), and ends the connections of those that are gone with a last
``room.closed`` message. (A deleted room's participants are told at once, by its ``room.closed`` event.)"""

from __future__ import annotations

import asyncio
import time

from api.rooms.participant import RoomClosed
from api.rooms.store import RoomStore
from api.streams.hub import Hub
from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS

log = logs.get("conveyor.rooms")

#: Seconds between two looks.
EVERY_SECONDS = 1.0


class RoomWatch:
    """The loop described in the module docstring; ``looked_at`` and ``failures`` say how it goes."""

    def __init__(self, hub: Hub, rooms: RoomStore) -> None:
        self.hub = hub
        self.rooms = rooms
        self.looked_at = 0.0
        self.failures = 0

    async def look(self) -> int:
        """End the participants of every room of this process that is gone; returns how many rooms were gone."""
        held = self.hub.rooms()
        if not held:
            return 0
        gone = held - await self.rooms.existing(held)
        for room_id in gone:
            ended = self.hub.end_room(room_id, RoomClosed(room_id, "expired"))
            log.info("room expired; participants closed", room_id=room_id, participants=ended)
        return len(gone)

    async def run(self, every: float = EVERY_SECONDS) -> None:
        """Look every ``every`` seconds until cancelled. A failure is logged (with its traceback when it is not
        Redis's) and the next look goes on."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.look()
                self.looked_at = time.monotonic()
            except REDIS_ERRORS as exc:
                self.failures += 1
                log.warning("rooms not checked; trying again", error=repr(exc))
            except Exception as exc:
                self.failures += 1
                log.error("room check failed; going on", error=repr(exc), exc_info=exc)
