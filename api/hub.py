"""One reader of the event stream per api process, fanning each event out to this process's subscribers.

Subscribers never touch Redis for live events: the hub reads once and offers each event (already encoded)
to every matching subscriber's bounded queue. A subscriber whose queue is full is marked overflowed and
dropped; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import orjson
import redis.exceptions

from conveyor.events import AsyncEventLog
from conveyor.schemas import Event

log = logging.getLogger("conveyor.hub")

Filter = Callable[[Event], bool]


def event_json(event: Event) -> str:
    """The message a client receives for an event."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True)).decode()


class Subscription:
    """A subscriber's view of the live stream: matching events in order, or an overflow."""

    def __init__(self, matches: Filter, maxsize: int) -> None:
        self.matches = matches
        self.queue: asyncio.Queue[tuple[Event, str] | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: Event, encoded: str) -> None:
        if self.overflowed or not self.matches(event):
            return
        try:
            self.queue.put_nowait((event, encoded))
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Hub:
    """The per-process fan-out. ``run()`` reads the stream until cancelled, reconnecting after Redis errors."""

    def __init__(self, events: AsyncEventLog, queue_size: int, block_ms: int = 5000) -> None:
        self.events = events
        self.queue_size = queue_size
        self.block_ms = block_ms
        self.subscribers: set[Subscription] = set()
        self.last_id: str | None = None
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def subscribe(self, matches: Filter) -> Iterator[Subscription]:
        """Live events matching ``matches`` from now on; always unsubscribes on exit."""
        subscription = Subscription(matches, self.queue_size)
        self.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self.subscribers.discard(subscription)

    def publish_local(self, event: Event) -> None:
        encoded = event_json(event)
        for subscription in tuple(self.subscribers):
            subscription.offer(event, encoded)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                if self.last_id is None:
                    self.last_id = await self.events.last_id()
                    self.ready.set()
                for event in await self.events.read(self.last_id, self.block_ms):
                    self.last_id = event.event_id
                    self.publish_local(event)
                delay = 0.1
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                log.warning("event stream unreachable, retrying in %.1fs error=%r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
