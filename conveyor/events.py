"""The event stream: one Redis Stream whose entry ids are the event ids clients resume from.

Writers append with :meth:`EventLog.publish` (workers, sync) or :meth:`AsyncEventLog.publish` (api). Readers
page through with ``after(last_id)``; ids only grow, so "after" is exact: no gap, no repeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from conveyor import logs
from conveyor.names import EVENTS_STREAM
from conveyor.redis_client import text
from conveyor.schemas import EVENT_FOR_STATUS, Event, EventType, Job

FIELD = b"e"
#: The largest sequence part of a stream id.
MAX_SEQ = 18446744073709551615
log = logs.get("conveyor.events")


def encode(event: Event) -> dict[bytes, bytes]:
    """The stream entry for an event (the id is assigned by Redis)."""
    return {FIELD: orjson.dumps(event.model_dump(mode="json", exclude={"event_id"}, exclude_none=True))}


def decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    """An event from a stream entry, with its id."""
    data: dict[str, Any] = orjson.loads(fields[FIELD])
    data["event_id"] = text(entry_id)
    return Event.model_validate(data)


def id_key(event_id: str) -> tuple[int, int]:
    """A sortable key for a stream id (``ms-seq``); raises ``ValueError`` on anything else."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def predecessor(event_id: str) -> str:
    """The greatest stream id below ``event_id``, so that reading "after" it includes ``event_id``."""
    ms, seq = id_key(event_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{MAX_SEQ}"


@dataclass(frozen=True)
class Retention:
    """What the stream still holds: its oldest entry's id and the newest id it ever gave out.

    Both are ``None`` when there is no stream at all; ``first_id`` alone is ``None`` when everything was trimmed.
    """

    first_id: str | None
    last_generated_id: str | None
    #: True when the stream is known never to have lost an entry (Redis 7 reports how many were ever added).
    complete: bool = False

    def covers(self, after: str) -> bool:
        """True when every event ever published after ``after`` is still in the stream.

        False (a resync is due) when an event after ``after`` may have been trimmed: ``after`` lies below the
        oldest retained id with room for another id in between, or the stream was emptied after ``after``, or
        the stream never gave out ``after`` (it was reset or lost data). It may be a false alarm when nothing
        was trimmed in between; it is never true when something was.
        """
        key = id_key(after)
        if self.last_generated_id is None:
            return key == (0, 0)
        if key > id_key(self.last_generated_id):
            return False
        if self.complete:
            return True
        if self.first_id is None:
            return key == id_key(self.last_generated_id)
        return key >= id_key(predecessor(self.first_id))


def job_event(job: Job, type_: EventType | None = None, **extra: Any) -> Event:
    """The event announcing a job's current state (by default, the event of its status)."""
    return Event(
        type=type_ or EVENT_FOR_STATUS[job.status],
        job_id=job.job_id,
        kind=job.kind,
        status=job.status,
        progress=job.progress,
        ts=time.time(),
        owner=job.owner,
        result=job.result if job.status.finished else None,
        error=job.error,
        **extra,
    )


class EventLog:
    """Synchronous access to the stream, for workers and the dispatcher."""

    def __init__(self, client: redis.Redis, max_len: int) -> None:
        self.client = client
        self.max_len = max_len

    def publish(self, event: Event) -> str:
        """Append the event; returns its id. Old entries beyond ``max_len`` are trimmed (approximately)."""
        entry_id = self.client.xadd(EVENTS_STREAM, encode(event), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
        return text(entry_id)

    def add_to(self, pipe: redis.client.Pipeline, event: Event) -> None:
        """Queue the append of ``event`` on ``pipe`` (its reply is the event's id), to share a round trip."""
        pipe.xadd(EVENTS_STREAM, encode(event), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]

    def trim_older_than(self, seconds: float) -> int:
        """Drop events older than ``seconds``; returns how many went."""
        min_id = f"{int((time.time() - seconds) * 1000)}-0"
        return int(self.client.xtrim(EVENTS_STREAM, minid=min_id, approximate=False))


class AsyncEventLog:
    """Asynchronous access to the stream, for the api."""

    def __init__(self, client: aioredis.Redis, max_len: int) -> None:
        self.client = client
        self.max_len = max_len

    async def publish(self, event: Event) -> str:
        entry_id = await self.client.xadd(EVENTS_STREAM, encode(event), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
        return text(entry_id)

    async def last_id(self) -> str:
        """The id of the newest event, or ``0-0`` for an empty stream."""
        entries: Any = await self.client.xrevrange(EVENTS_STREAM, count=1)
        return text(entries[0][0]) if entries else "0-0"

    async def retention(self) -> Retention:
        """The stream's oldest retained id and newest generated id (see :class:`Retention`)."""
        try:
            info: Any = await self.client.xinfo_stream(EVENTS_STREAM)
        except redis.exceptions.ResponseError:
            return Retention(None, None)
        first = info.get("first-entry")
        added = info.get("entries-added")
        complete = added is not None and int(added) == int(info["length"])
        return Retention(text(first[0]) if first else None, text(info["last-generated-id"]), complete)

    async def after(self, last_id: str, count: int = 500) -> list[Event]:
        """Up to ``count`` events with ids greater than ``last_id``, oldest first."""
        entries: Any = await self.client.xrange(EVENTS_STREAM, min=f"({last_id}", count=count)
        return [decode(entry_id, fields) for entry_id, fields in entries]

    async def read(self, last_id: str, block_ms: int, count: int = 1000) -> list[Event]:
        """Events after ``last_id``, waiting up to ``block_ms`` for the first one."""
        reply: Any = await self.client.xread({EVENTS_STREAM: last_id}, block=block_ms, count=count)
        return [decode(entry_id, fields) for _stream, entries in reply for entry_id, fields in entries]
