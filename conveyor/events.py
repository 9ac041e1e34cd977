"""The event stream: one Redis Stream whose entry ids are the event ids clients resume from.

Writers append with :meth:`EventLog.publish` (workers, sync) or :meth:`AsyncEventLog.publish` (api). Readers
page through with ``after(last_id)``; ids only grow, so "after" is exact: no gap, no repeat.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from conveyor.names import EVENTS_STREAM
from conveyor.redis_client import text
from conveyor.schemas import EVENT_FOR_STATUS, EVENT_VERSION, Event, EventType, Job

FIELD = b"e"
#: The largest sequence part of a stream id.
MAX_SEQ = 18446744073709551615


#: The fields of a stored event, in the order they are written (``event_id`` is the entry's id, not a field).
_STORED = tuple(name for name in Event.model_fields if name != "event_id")


def encode(event: Event) -> dict[bytes, bytes]:
    """The stream entry for an event (the id is assigned by Redis): its JSON without ``event_id`` and without null
    fields, starting ``{"v":``. The same JSON as ``event.model_dump(mode="json", exclude_none=True)`` minus the id,
    written without pydantic's serializer (this runs for every event)."""
    data = {name: value for name in _STORED if (value := getattr(event, name)) is not None}
    return {FIELD: orjson.dumps(data)}


def decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    """An event from a stream entry, with its id."""
    data: dict[str, Any] = orjson.loads(fields[FIELD])
    data["event_id"] = text(entry_id)
    return Event.model_validate(data)


_PREFIX = b'{"v":' + str(EVENT_VERSION).encode() + b","


class StreamEvent:
    """An event as the stream holds it, not validated again: the fields that route it (``type``, ``job_id``,
    ``owner``, ``topic``, ``room_id``, and ``event_id``, the entry's id), a room change's ``version``, and the JSON
    a client receives (``text``, the stored JSON with ``event_id`` added, built without decoding and encoding it
    again)."""

    __slots__ = ("event_id", "job_id", "owner", "room_id", "text", "topic", "type", "version")

    def __init__(
        self,
        event_id: str,
        type_: EventType,
        job_id: str | None,
        owner: str | None,
        topic: str | None,
        text: str,
        room_id: str | None = None,
        version: int | None = None,
    ) -> None:
        self.event_id = event_id
        self.type = type_
        self.job_id = job_id
        self.owner = owner
        self.topic = topic
        self.text = text
        self.room_id = room_id
        self.version = version

    @classmethod
    def read(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEvent:
        """The event of a stream entry. Raises ``ValueError`` (or ``KeyError``) for an entry that is not an event
        this version understands (another type, not JSON, no JSON object)."""
        raw = fields[FIELD]
        data = orjson.loads(raw)
        event_id = text(entry_id)
        if raw.startswith(_PREFIX):
            message = _PREFIX + b'"event_id":"' + event_id.encode() + b'",' + raw[len(_PREFIX) :]
        else:  # written by another encoder: add the id the slow way
            message = orjson.dumps({"v": data.get("v"), "event_id": event_id, **data})
        return cls(
            event_id,
            EventType(data["type"]),
            data.get("job_id"),
            data.get("owner"),
            data.get("topic"),
            message.decode(),
            data.get("room_id"),
            data.get("version"),
        )

    @classmethod
    def of(cls, event: Event) -> StreamEvent:
        """The stream's view of an event object (which has its ``event_id``)."""
        return cls.read(event.event_id, encode(event))


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
    """The event announcing a job's current state (by default, the event of its status); ``extra`` fields are set
    on it (and win over the job's). Built without validation: every value comes from a valid job."""
    fields: dict[str, Any] = {
        "type": type_ or EVENT_FOR_STATUS[job.status],
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "ts": time.time(),
        "owner": job.owner,
        "result": job.result if job.status.finished else None,
        "error": job.error,
    }
    fields.update(extra)
    return Event.model_construct(**fields)


class EventLog:
    """Synchronous access to the stream, for workers and the dispatcher."""

    def __init__(self, client: redis.Redis, max_len: int) -> None:
        self.client = client
        self.max_len = max_len

    def publish(self, event: Event) -> str:
        """Append the event; returns its id. Old entries beyond ``max_len`` are trimmed (approximately)."""
        entry_id = self.client.xadd(EVENTS_STREAM, encode(event), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
        return text(entry_id)

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """Append the events, in order, in one round trip; returns their ids."""
        events = list(events)
        pipe = self.pipeline(len(events))
        for event in events:
            self.add_to(pipe, event)
        return [text(entry_id) for entry_id in pipe.execute()]

    def pipeline(self, events: int) -> redis.client.Pipeline:
        """A pipeline for ``events`` appends (with :meth:`add_to`) and whatever shares their round trip: one
        ``MULTI``/``EXEC`` when there is more than one, so that a reader blocked on the stream (an api's hub,
        Flower's feed) wakes once and reads them all (Redis wakes a blocked ``XREAD`` after each command outside a
        transaction: a run's ``job.succeeded`` would wait for a second read behind its ``job.started``)."""
        return self.client.pipeline(transaction=events > 1)

    def add_to(self, pipe: redis.client.Pipeline, event: Event) -> None:
        """Queue the append of ``event`` on ``pipe`` (its reply is the event's id), to share a round trip."""
        pipe.xadd(EVENTS_STREAM, encode(event), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]

    def trim_older_than(self, seconds: float) -> int:
        """Drop events older than ``seconds``; returns how many went."""
        min_id = f"{int((time.time() - seconds) * 1000)}-0"
        return int(self.client.xtrim(EVENTS_STREAM, minid=min_id, approximate=False))


class Tail:
    """Reads the stream as it grows, on a Redis connection of its own: the hub's one reader. Sends ``XREAD`` on the
    connection directly (no per-command client machinery: pool, retries, response callbacks) and reopens the
    connection after any error (which it raises: the caller decides when to try again)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.pool = client.connection_pool
        self.connection: Any = None

    async def read(self, last_id: str, block_ms: int, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries after ``last_id``, waiting up to ``block_ms`` for the first one."""
        if self.connection is None:
            self.connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await self.connection.send_command(
                "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", EVENTS_STREAM, last_id
            )
            reply: Any = await self.connection.read_response()
        except BaseException:
            await self.close()
            raise
        if not reply:
            return []
        streams = reply.values() if isinstance(reply, dict) else (entries for _name, entries in reply)
        return [(entry_id, _fields(fields)) for entries in streams for entry_id, fields in entries]

    async def close(self) -> None:
        """Drop the connection (a new one is opened by the next read)."""
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.disconnect()
            await self.pool.release(connection)


def _fields(fields: Any) -> dict[bytes, bytes]:
    """An entry's fields as a dict (a raw reply lists them flat: name, value, name, value…)."""
    return fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))


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

    async def after(self, last_id: str, count: int = 500) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` entries with ids greater than ``last_id``, oldest first (read them with
        :meth:`StreamEvent.read`)."""
        entries: Any = await self.client.xrange(EVENTS_STREAM, min=f"({last_id}", count=count)
        return list(entries)

    async def read(self, last_id: str, block_ms: int, count: int = 1000) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries after ``last_id``, waiting up to ``block_ms`` for the first one."""
        reply: Any = await self.client.xread({EVENTS_STREAM: last_id}, block=block_ms, count=count)
        return [entry for _stream, entries in reply for entry in entries]
