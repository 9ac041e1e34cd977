"""Rooms in Redis: a small shared list of items that participants change together, with a version per change.

A room is three keys, all expiring together after ``ttl`` without activity (a join or a change extends them):
``conveyor:room:<id>`` (a hash: owner, the join token's digest, caps, the version), ``…:items`` (the list) and
``…:log`` (the last :data:`LOG_LENGTH` changes, scored by version, for participants resuming from a version).
Its participants are leases (:mod:`api.leases`, kind ``room``), so the cap holds across api processes and those of
a process that died expire.

Every change is one Lua script: the room must exist, the change is applied, the version incremented, the change
logged, and its ``room.changed`` event appended to the event stream (``conveyor:events``) — atomically. Redis runs
one script at a time, so versions and stream ids grow together: every api process's hub reads the stream in order
and hands each change to the room's participants in that order, with no gap and no repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from conveyor.events import FIELD
from conveyor.ids import new_id
from conveyor.names import EVENTS_STREAM, LEASE_ROOM, LEASES_PREFIX, REDIS_PREFIX
from conveyor.redis_client import text
from conveyor.schemas import EVENT_VERSION, EventType, RoomCommand

#: Changes a room keeps for participants resuming from a version; one further behind gets the whole room.
LOG_LENGTH = 100

# KEYS: room, items, log, events stream. ARGV: op, room id, most items, log length, the stream's length, the event
# version, then the item (add, remove) or the items (set).
_CHANGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local op = ARGV[1]
local same = {'same', redis.call('HGET', KEYS[1], 'version')}
if op == 'add' then
  if redis.call('LPOS', KEYS[2], ARGV[7]) then return same end
  if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return {'full', ARGV[3]} end
  redis.call('RPUSH', KEYS[2], ARGV[7])
elseif op == 'remove' then
  if redis.call('LREM', KEYS[2], 1, ARGV[7]) == 0 then return same end
elseif op == 'clear' then
  if redis.call('DEL', KEYS[2]) == 0 then return same end
else
  redis.call('DEL', KEYS[2])
  if #ARGV >= 7 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 7)) end
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local t = redis.call('TIME')
local body = '{"v":' .. ARGV[6] .. ',"type":"room.changed","ts":' .. t[1] .. '.' .. string.format('%06d', t[2])
  .. ',"room_id":' .. cjson.encode(ARGV[2]) .. ',"version":' .. version .. ',"op":"' .. op .. '"'
if op == 'add' or op == 'remove' then body = body .. ',"item":' .. cjson.encode(ARGV[7]) end
if #items == 0 then body = body .. ',"items":[]}' else body = body .. ',"items":' .. cjson.encode(items) .. '}' end
redis.call('ZADD', KEYS[3], version, body)
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[4]) + 1))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'e', body)
local ttl = redis.call('HGET', KEYS[1], 'ttl_ms')
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {'ok', version}
"""

# KEYS: room, items, log, participants. ARGV: the version to resume from (-1: none). Extends the room's life.
_JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local ttl = redis.call('HGET', KEYS[1], 'ttl_ms')
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changes = {}
if tonumber(ARGV[1]) >= 0 then changes = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf') end
return {
  redis.call('HGET', KEYS[1], 'version'), redis.call('LRANGE', KEYS[2], 0, -1), changes,
  redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf'), redis.call('HGET', KEYS[1], 'max_participants'), ttl
}
"""

# KEYS: room, items, participants. What GET /rooms/{id} shows.
_INFO = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {
  redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf'), redis.call('PTTL', KEYS[1]), now
}
"""


def room_key(room_id: str) -> str:
    return f"{REDIS_PREFIX}room:{room_id}"


def participants_key(room_id: str) -> str:
    """The sorted set of the room's participants' leases (:mod:`api.leases`)."""
    return f"{LEASES_PREFIX}{LEASE_ROOM}:{room_id}"


def _keys(room_id: str) -> list[str]:
    key = room_key(room_id)
    return [key, f"{key}:items", f"{key}:log"]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewRoom:
    room_id: str
    token: str
    expires_at: float


@dataclass(frozen=True)
class RoomInfo:
    """A room as Redis holds it now (``expires_at`` and ``created_at`` in epoch seconds)."""

    room_id: str
    owner: str
    token_digest: str
    items: list[str]
    version: int
    participants: int
    max_participants: int
    ttl_seconds: int
    expires_at: float
    created_at: float

    def admits(self, token: str) -> bool:
        """Whether ``token`` is this room's join token (compared in constant time)."""
        return hmac.compare_digest(self.token_digest, _digest(token))


@dataclass(frozen=True)
class Joined:
    """What a participant gets on joining: the room now, and (resuming) the logged changes after its version."""

    version: int
    items: list[str]
    changes: list[str]
    participants: int
    max_participants: int
    expires_at: float


@dataclass(frozen=True)
class Changed:
    """A change's outcome: ``ok`` (applied as ``version``), ``same`` (nothing to change), ``full`` (the room holds
    its most items), ``gone`` (the room expired or was deleted)."""

    outcome: str
    version: int | None = None


class RoomStore:
    """The rooms of one Redis (every api process shares them)."""

    def __init__(self, client: aioredis.Redis, events_max_len: int) -> None:
        self.client = client
        self.events_max_len = events_max_len
        self._change = client.register_script(_CHANGE)
        self._join = client.register_script(_JOIN)
        self._info = client.register_script(_INFO)

    async def create(self, owner: str, ttl_seconds: int, max_participants: int, items: Iterable[str]) -> NewRoom:
        """Make a room with a fresh id and join token (only its digest is kept)."""
        room_id, token = new_id(), secrets.token_urlsafe(24)
        key, items_key, _log = _keys(room_id)
        ttl_ms = ttl_seconds * 1000
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "owner": owner,
                "token": _digest(token),
                "max_participants": max_participants,
                "ttl_ms": ttl_ms,
                "created_ms": int(now * 1000),
                "version": 0,
            },
        )
        pipe.pexpire(key, ttl_ms)
        listed = list(items)
        if listed:
            pipe.rpush(items_key, *listed)
            pipe.pexpire(items_key, ttl_ms)
        await pipe.execute()
        return NewRoom(room_id, token, now + ttl_seconds)

    async def info(self, room_id: str) -> RoomInfo | None:
        """The room, or ``None`` when it expired, was deleted or never was."""
        reply = await self._info(keys=[*_keys(room_id)[:2], participants_key(room_id)])
        if not reply:
            return None
        pairs, items, participants, pttl, now_ms = reply
        fields = {text(pairs[i]): text(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        return RoomInfo(
            room_id=room_id,
            owner=fields["owner"],
            token_digest=fields["token"],
            items=[text(item) for item in items],
            version=int(fields["version"]),
            participants=int(participants),
            max_participants=int(fields["max_participants"]),
            ttl_seconds=int(fields["ttl_ms"]) // 1000,
            expires_at=(int(now_ms) + max(int(pttl), 0)) / 1000,
            created_at=int(fields["created_ms"]) / 1000,
        )

    async def join(self, room_id: str, since: int | None) -> Joined | None:
        """Extend the room's life and read it (with the logged changes after ``since``); ``None`` when it is gone."""
        reply = await self._join(
            keys=[*_keys(room_id), participants_key(room_id)], args=[-1 if since is None else since]
        )
        if not reply:
            return None
        version, items, changes, participants, max_participants, ttl_ms = reply
        return Joined(
            version=int(version),
            items=[text(item) for item in items],
            changes=[text(change) for change in changes],
            participants=int(participants),
            max_participants=int(max_participants),
            expires_at=time.time() + int(ttl_ms) / 1000,
        )

    async def change(self, room_id: str, command: RoomCommand, max_items: int) -> Changed:
        """Apply ``command`` atomically (see the module docstring)."""
        operands = [command.item] if command.item is not None else list(command.items or ())
        args: list[Any] = [command.op, room_id, max_items, LOG_LENGTH, self.events_max_len, EVENT_VERSION, *operands]
        reply = await self._change(keys=[*_keys(room_id), EVENTS_STREAM], args=args)
        outcome = text(reply[0])
        return Changed(outcome, int(reply[1]) if outcome in ("ok", "same") else None)

    async def delete(self, room_id: str) -> bool:
        """Remove the room and tell its participants, on every api process (a ``room.closed`` event); ``False`` when
        it was gone already."""
        event = {"v": EVENT_VERSION, "type": EventType.ROOM_CLOSED.value, "ts": time.time(), "room_id": room_id}
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*_keys(room_id), participants_key(room_id))
        pipe.xadd(
            EVENTS_STREAM,
            {FIELD: orjson.dumps({**event, "reason": "deleted"})},
            maxlen=self.events_max_len,
            approximate=True,
        )
        deleted, _event_id = await pipe.execute()
        return bool(deleted)

    async def existing(self, room_ids: Iterable[str]) -> set[str]:
        """Which of ``room_ids`` still exist (one round trip)."""
        ids = list(room_ids)
        if not ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for room_id in ids:
            pipe.exists(room_key(room_id))
        found = await pipe.execute()
        return {room_id for room_id, exists in zip(ids, found, strict=True) if exists}
