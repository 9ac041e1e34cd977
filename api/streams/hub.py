"""One reader of the event stream per api process, fanning each event out to this process's subscribers.

Subscribers never touch Redis for live events: the hub reads once, encodes each event once, and hands it to
the mailbox of every subscriber that asked for it, found through an index by job and by topic. A mailbox is
bounded: one that fills up is marked overflowed and its connection is told to close; nobody else waits for it.
While a mailbox is backed up, a newer ``job.progress`` for a job replaces the older one still waiting in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis.exceptions

from api.streams.wire import TOO_FAR_BEHIND, TOO_SLOW, Outgoing, Refused
from conveyor import logs
from conveyor.events import AsyncEventLog, StreamEvent, Tail, id_key
from conveyor.redis_client import text
from conveyor.schemas import EventType, Resync
from conveyor.topics import TopicPolicy

log = logs.get("conveyor.hub")
#: The default policy: every topic private to its owner.
PRIVATE_TOPICS = TopicPolicy([])


class Full(Exception):
    """A connection cap is reached (per process, or per topic)."""


class Selection:
    """What one connection listens to, as one owner: every job event of the owner's, or named jobs; plus
    topics, by their routing keys (:meth:`conveyor.topics.TopicPolicy.key`); or rooms (a room's participant, who
    hears that room only)."""

    __slots__ = ("all_jobs", "jobs", "owner", "rooms", "topic_key", "topics")

    def __init__(
        self,
        owner: str | None = None,
        jobs: Iterable[str] = (),
        topics: Iterable[str] = (),
        topic_key: Callable[[str | None, str], str] = PRIVATE_TOPICS.key,
        rooms: Iterable[str] = (),
    ) -> None:
        self.owner = owner
        self.jobs = set(jobs)
        self.topics = set(topics)
        self.rooms = set(rooms)
        self.all_jobs = not self.jobs and not self.topics and not self.rooms
        self.topic_key = topic_key

    def matches(self, event: StreamEvent) -> bool:
        """``topic.message`` events go to their topic's listeners only; room events to the room's participants
        only; job events to listeners of the job or of all jobs — and never to another owner's."""
        if event.room_id is not None:
            return event.room_id in self.rooms
        if event.type is EventType.TOPIC_MESSAGE:
            return event.topic is not None and self.topic_key(event.owner, event.topic) in self.topics
        return event.owner == self.owner and event.job_id is not None and (self.all_jobs or event.job_id in self.jobs)


class Subscription:
    """A subscriber's bounded mailbox of live events, in stream order.

    ``limit`` counts events still to be sent; when it is reached the mailbox ends (:meth:`end`) as too far behind.
    A ``job.progress`` offered while an older one for the same job still waits supersedes it: the older one is
    skipped and does not count. A subscription that has ended takes nothing more; ``ended`` says why, and
    ``on_end`` (the connection's) is called once, to close it with that reason.
    """

    __slots__ = (
        "_head",
        "_items",
        "_live",
        "_progress",
        "_waiter",
        "direct",
        "ended",
        "limit",
        "on_end",
        "selection",
    )  # fmt: skip

    def __init__(self, selection: Selection, limit: int) -> None:
        self.selection = selection
        self.limit = limit
        self.ended: Refused | None = None
        self.on_end: Callable[[Refused], None] | None = None
        #: When set, items bypass the mailbox and go straight to this callable (a caught-up WebSocket).
        self.direct: Callable[[Outgoing], None] | None = None
        self._items: list[Outgoing] = []
        self._head = 0
        self._live = 0
        self._progress: dict[str, str] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: Outgoing) -> None:
        """Queue an event for sending (the hub has checked that the selection wants it)."""
        if self.direct is not None:
            self.direct(item)
            return
        if self.ended is not None:
            return
        event = item.event
        if event is not None and event.type is EventType.PROGRESS and event.job_id is not None:
            latest = self._progress
            if latest is None:
                latest = self._progress = {}
            if event.job_id in latest:
                self._live -= 1
            latest[event.job_id] = event.event_id
        self._push(item)

    def notice(self, item: Outgoing) -> None:
        """Queue a message that is not an event (it has no id and is never skipped)."""
        if self.direct is not None:
            self.direct(item)
        elif self.ended is None:
            self._push(item)

    def _push(self, item: Outgoing) -> None:
        if self._live >= self.limit:
            self.end(TOO_FAR_BEHIND)
            return
        self._items.append(item)
        self._live += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        """Wake the connection waiting on :meth:`wait` (something other than an event needs it)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def overflowed(self) -> bool:
        """True when the mailbox ended because its connection fell too far behind."""
        return self.ended is TOO_FAR_BEHIND

    def end(self, reason: Refused) -> None:
        """Drop everything waiting, take nothing more, and tell the connection to close with ``reason`` (the first
        reason wins)."""
        if self.ended is not None:
            return
        self.ended = reason
        self.direct = None
        self._items, self._head, self._live, self._progress = [], 0, 0, None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_end is not None:
            self.on_end(reason)

    def pop(self) -> Outgoing | None:
        """The next item to send, or ``None`` when nothing waits."""
        items = self._items
        while self._head < len(items):
            item = items[self._head]
            self._head += 1
            event = item.event
            if event is not None and event.type is EventType.PROGRESS and self._progress is not None:
                if self._progress.get(event.job_id or "") != event.event_id:
                    continue
                del self._progress[event.job_id or ""]
            self._live -= 1
            return item
        items.clear()
        self._head = 0
        return None

    async def wait(self) -> None:
        """Return once an item may be waiting (or the subscription ended)."""
        if self._head < len(self._items) or self.ended is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Hub:
    """The per-process fan-out. ``run()`` reads the stream until cancelled, reconnecting after Redis errors."""

    def __init__(
        self,
        events: AsyncEventLog,
        queue_size: int,
        max_connections: int = 10_000,
        max_per_topic: int = 5_000,
        block_ms: int = 5000,
        *,
        max_per_holder: int | None = None,
        topic_key: Callable[[str | None, str], str] | None = None,
    ) -> None:
        self.events = events
        self.queue_size = queue_size
        self.max_connections = max_connections
        self.max_per_topic = max_per_topic
        self.block_ms = block_ms
        self.max_per_holder = max_per_holder
        self.topic_key = topic_key or PRIVATE_TOPICS.key
        self.subscribers: set[Subscription] = set()
        self._holders: dict[Subscription, str] = {}
        self._held: dict[str, int] = {}
        self._all_jobs: dict[str | None, set[Subscription]] = {}
        self._by_job: dict[str, set[Subscription]] = {}
        self._by_topic: dict[str, set[Subscription]] = {}
        self._by_room: dict[str, set[Subscription]] = {}
        self.last_id: str | None = None
        self.ready = asyncio.Event()
        #: When the last read of the stream returned (monotonic), and how many unexpected errors the reader met.
        self.read_at = 0.0
        self.failures = 0
        #: Events handed to subscriptions, and subscriptions removed after falling too far behind (``/metrics``).
        self.delivered = 0
        self.slow_dropped = 0

    @contextlib.contextmanager
    def subscribe(self, selection: Selection, holder: str | None = None) -> Iterator[Subscription]:
        """Live events for ``selection`` from now on; always unsubscribes on exit. Raises :class:`Full` at a cap."""
        subscription = self.add(selection, holder)
        try:
            yield subscription
        finally:
            self.remove(subscription)

    def add(self, selection: Selection, holder: str | None = None) -> Subscription:
        """A new subscription for ``selection`` (see :meth:`subscribe`), counted against ``holder``'s cap
        (an API key's id); the caller must :meth:`remove` it."""
        if len(self.subscribers) >= self.max_connections:
            raise Full(f"this api process holds its limit of {self.max_connections} event streams")
        if holder is not None and self.max_per_holder is not None and self._held.get(holder, 0) >= self.max_per_holder:
            raise Full(f"this key holds its limit of {self.max_per_holder} event streams on this api process")
        for topic in selection.topics:
            self._check_topic(topic)
        subscription = Subscription(Selection(selection.owner, topic_key=self.topic_key), self.queue_size)
        subscription.selection.all_jobs = selection.all_jobs
        subscription.selection.rooms = set(selection.rooms)
        for room_id in selection.rooms:
            self._by_room.setdefault(room_id, set()).add(subscription)
        self.subscribers.add(subscription)
        if holder is not None:
            self._holders[subscription] = holder
            self._held[holder] = self._held.get(holder, 0) + 1
        if selection.all_jobs:
            self._all_jobs.setdefault(selection.owner, set()).add(subscription)
        for job_id in selection.jobs:
            self.watch(subscription, job_id=job_id)
        for topic in selection.topics:
            self.watch(subscription, topic=topic)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``; harmless when already removed."""
        subscription.direct = None
        if subscription in self.subscribers and subscription.ended in (TOO_FAR_BEHIND, TOO_SLOW):
            self.slow_dropped += 1
        self.subscribers.discard(subscription)
        _discard(self._all_jobs, subscription.selection.owner, subscription)
        holder = self._holders.pop(subscription, None)
        if holder is not None:
            left = self._held[holder] - 1
            if left:
                self._held[holder] = left
            else:
                del self._held[holder]
        for job_id in tuple(subscription.selection.jobs):
            self.unwatch(subscription, job_id=job_id)
        for topic in tuple(subscription.selection.topics):
            self.unwatch(subscription, topic=topic)
        for room_id in subscription.selection.rooms:
            _discard(self._by_room, room_id, subscription)

    def holders(self) -> set[str]:
        """The holders (API key ids) with at least one subscription in this process."""
        return set(self._held)

    def end_holder(self, holder: str, reason: Refused) -> int:
        """End every subscription held by ``holder`` with ``reason`` (their connections close); returns how many."""
        ended = [subscription for subscription, held in tuple(self._holders.items()) if held == holder]
        for subscription in ended:
            subscription.end(reason)
        return len(ended)

    def rooms(self) -> set[str]:
        """The rooms with at least one participant in this process."""
        return set(self._by_room)

    def end_room(self, room_id: str, reason: Refused) -> int:
        """End every subscription to ``room_id`` with ``reason`` (their connections close); returns how many."""
        ended = tuple(self._by_room.get(room_id, ()))
        for subscription in ended:
            subscription.end(reason)
        return len(ended)

    def _check_topic(self, topic: str) -> None:
        if len(self._by_topic.get(topic, ())) >= self.max_per_topic:
            name = topic.split("/", 1)[-1]  # the routing key's topic, as the client named it
            raise Full(f"topic {name!r} has its limit of {self.max_per_topic} listeners in this api process")

    def watch(self, subscription: Subscription, *, job_id: str | None = None, topic: str | None = None) -> None:
        """Add a job or a topic to a subscription; from now on its events reach the mailbox."""
        if topic is not None and topic not in subscription.selection.topics:
            self._check_topic(topic)
            subscription.selection.topics.add(topic)
            self._by_topic.setdefault(topic, set()).add(subscription)
        if job_id is not None:
            subscription.selection.jobs.add(job_id)
            self._by_job.setdefault(job_id, set()).add(subscription)

    def unwatch(self, subscription: Subscription, *, job_id: str | None = None, topic: str | None = None) -> None:
        """Remove a job or a topic from a subscription."""
        if job_id is not None:
            subscription.selection.jobs.discard(job_id)
            _discard(self._by_job, job_id, subscription)
        if topic is not None:
            subscription.selection.topics.discard(topic)
            _discard(self._by_topic, topic, subscription)

    def publish_local(self, event: StreamEvent, *, more: bool = False) -> None:
        """Hand ``event`` to every subscription that listens to it, each once; ``more``: more events follow at once
        (the rest of one read of the stream)."""
        item = Outgoing.of(event)
        item.more = more
        if event.room_id is not None:
            for subscription in tuple(self._by_room.get(event.room_id, ())):
                self._offer(subscription, item)
            return
        if event.type is EventType.TOPIC_MESSAGE:
            if event.topic is not None:
                for subscription in tuple(self._by_topic.get(self.topic_key(event.owner, event.topic), ())):
                    self._offer(subscription, item)
            return
        if event.job_id is None:
            return
        for subscription in tuple(self._all_jobs.get(event.owner, ())):
            self._offer(subscription, item)
        for subscription in tuple(self._by_job.get(event.job_id, ())):
            if not subscription.selection.all_jobs and subscription.selection.owner == event.owner:
                self._offer(subscription, item)

    def _offer(self, subscription: Subscription, item: Outgoing) -> None:
        self.delivered += 1
        subscription.offer(item)

    def notice_all(self, message: str) -> None:
        item = Outgoing.notice(message)
        for subscription in tuple(self.subscribers):
            subscription.notice(item)

    async def run(self) -> None:
        """Read the stream and fan its events out until cancelled. Redis errors are waited out (backoff up to 5 s,
        then a check that no event was lost meanwhile: a ``resync`` to everyone if some may have been); an entry
        that is not an event is logged and skipped; any other error is logged with its traceback and reading goes
        on. ``read_at`` is when the last read returned (``/health`` looks at it)."""
        tail = Tail(self.events.client)
        delay = 0.1
        failed = False
        try:
            while True:
                try:
                    if self.last_id is None:
                        self.last_id = await self.events.last_id()
                        self.read_at = time.monotonic()
                        self.ready.set()
                    if failed:
                        await self._check_continuity()
                        failed = False
                    if _cancel_requested():  # a cancel that redis-py swallowed (it can, mid-connect): stop anyway
                        raise asyncio.CancelledError
                    entries = await tail.read(self.last_id, self.block_ms, min(1000, self.queue_size))
                    self.read_at = time.monotonic()
                    last = len(entries) - 1
                    for index, (entry_id, fields) in enumerate(entries):
                        self._deliver(entry_id, fields, more=index < last)
                    delay = 0.1
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                    if _cancel_requested():  # the cancel became this error (redis-py, mid-connect)
                        raise asyncio.CancelledError from exc
                    failed = True
                    log.warning("event stream unreachable; retrying", in_seconds=round(delay, 1), error=repr(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                except Exception as exc:
                    self.failures += 1
                    log.error("event hub failed; reading on", error=repr(exc), exc_info=exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            await tail.close()

    def _deliver(self, entry_id: bytes, fields: dict[bytes, bytes], *, more: bool = False) -> None:
        self.last_id = text(entry_id)
        if not self.subscribers:  # no one here to hand it to: not even read
            return
        try:
            event = StreamEvent.read(entry_id, fields)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("stream entry skipped: not an event", event_id=self.last_id, error=repr(exc))
            return
        self.publish_local(event, more=more)

    async def _check_continuity(self) -> None:
        """After an outage: if events after the last one read may be gone, tell every subscriber (resync)."""
        assert self.last_id is not None
        retention = await self.events.retention()
        if not retention.covers(self.last_id):
            log.warning("event stream lost events during an outage; resync sent", after=self.last_id)
            resync = Resync(
                after=self.last_id,
                first_event_id=retention.first_id,
                detail="the event stream lost events while Redis was unreachable; read the state of your jobs",
            )
            self.notice_all(resync.model_dump_json())
            newest = retention.last_generated_id or "0-0"
            if id_key(newest) < id_key(self.last_id):
                self.last_id = newest


def _cancel_requested() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _discard(index: dict[Any, set[Subscription]], key: Any, subscription: Subscription) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(subscription)
        if not members:
            del index[key]


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each connection needs one). Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft
