"""Backlog, then live: how every event stream (native WebSocket ``/ws``, the ASGI ``/ws`` route, SSE ``/events``)
sends events and takes the client's commands. One :class:`EventStream` per connection, whatever the transport:

1. the connection subscribes to the hub first (:meth:`EventStream.open`), so live events start collecting in its
   mailbox;
2. it reads the backlog after the resume point from the stream (``XRANGE``, pages of 500), checking after
   each page that the stream still covers the cursor — if not, a ``resync`` message goes first — and sends
   the matching events, remembering the highest id read;
3. then it sends live events from the mailbox, skipping any id not above the highest already read.

An event published while the backlog is read is in both; the id comparison sends it once. None can fall in
between, because the subscription existed before the first read. Subscribing to a job on an open stream
(a command) takes effect in the same loop: the job joins the subscription (the listener is in place), then
the job is read from the store and sent as a ``snapshot``, then its live events follow.

The stream's :class:`~api.streams.wire.StreamState` says where it is; :meth:`EventStream.serve` is the loop of the
transports that run a task per connection (the ASGI route and SSE), and the native protocol drives the same
:meth:`EventStream.run` from its own pump.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from api.leases import Lease
from api.streams.hub import Full, Selection, Subscription
from api.streams.request import MAX_FOLLOWED, StreamRequest, check_subscribe
from api.streams.wire import (
    INTERNAL_ERROR,
    MAX_COMMAND_BYTES,
    TOO_BIG,
    Outgoing,
    Refused,
    StreamState,
    full,
    parse_command,
)
from conveyor import logs
from conveyor.events import StreamEvent, id_key, predecessor
from conveyor.names import LEASE_STREAM
from conveyor.redis_client import REDIS_ERRORS, text
from conveyor.schemas import (
    CommandRefused,
    Event,
    EventType,
    Job,
    Published,
    Resync,
    Snapshot,
    StreamCommand,
    SubscriptionNotice,
)

if TYPE_CHECKING:
    from api.state import AppState

log = logs.get("conveyor.streams")

BACKLOG_PAGE = 500
#: How far the api's clock (a job's ``created_at``) may run ahead of Redis's (its events' ids), in milliseconds.
CLOCK_SLACK_MS = 5000
#: Commands a client may have waiting for the sending loop before it is refused.
MAX_PENDING_COMMANDS = 8


class ClientGone(Exception):
    """Raised by a :class:`Sender` whose client has disconnected."""


async def wait_or_beat(subscription: Subscription, sender: Sender, heartbeat: float | None) -> None:
    """Wait until ``subscription`` may have something (or has ended); with a ``heartbeat``, send one to the
    client each time that many seconds pass with nothing, so idle proxies and clients know the stream is alive."""
    if heartbeat is None:
        await subscription.wait()
        return
    try:
        async with asyncio.timeout(heartbeat):
            await subscription.wait()
    except TimeoutError:
        await sender.heartbeat()


async def side_by_side(
    subscription: Subscription,
    send: Callable[[], Awaitable[object]],
    receive: Callable[[], Awaitable[Refused | None]],
    failed: Callable[[], None],
) -> Refused | None:
    """Run ``send`` (the loop that writes to the client) and ``receive`` (the transport's loop over the client's
    messages) side by side until either ends or ``subscription`` ends; the first to end stops the others. Returns
    why the connection must close, if it must: the subscription's end first, then a :class:`Refused` raised by
    ``send`` or returned by ``receive``. An unexpected error in ``send`` is reported with ``failed`` (called inside
    the ``except``, so it can log the traceback) and closes only this connection, as ``INTERNAL_ERROR``; a client
    that went away (:class:`ClientGone`) is no error."""
    outcome: Refused | None = None
    async with anyio.create_task_group() as group:
        subscription.on_end = lambda _reason: group.cancel_scope.cancel()

        async def sending() -> None:
            nonlocal outcome
            try:
                await send()
            except Refused as exc:
                outcome = exc
            except ClientGone:
                pass
            except Exception:  # noqa: BLE001 - ``failed`` logs it with its traceback
                failed()
                outcome = INTERNAL_ERROR
            group.cancel_scope.cancel()

        async def taking() -> None:
            nonlocal outcome
            outcome = await receive()
            group.cancel_scope.cancel()

        group.start_soon(sending)
        group.start_soon(taking)
    return subscription.ended or outcome


class Sender(Protocol):
    """How a transport delivers one message (an event, or a notice without an id). Raises :class:`ClientGone`
    once the client is gone."""

    async def send(self, item: Outgoing) -> None: ...

    async def heartbeat(self) -> None: ...


@dataclass
class _Command:
    command: StreamCommand
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EventStream:
    """One connection's events: the backlog after its resume point, then live ones; each at most once, in order."""

    def __init__(self, app: AppState) -> None:
        self.app = app
        self.state = StreamState.ADMITTING
        self._subscription: Subscription | None = None
        self._lease: Lease | None = None
        self._commands: list[_Command] = []
        self._holder: str | None = None
        #: With ``publish=text``: the topic each plain text message is published to.
        self.text_topic: str | None = None

    @property
    def subscription(self) -> Subscription:
        """The hub subscription (once :meth:`open` has made it)."""
        assert self._subscription is not None, "the stream is not open"
        return self._subscription

    async def open(self, selection: Selection, holder: str | None, text_topic: str | None = None) -> Subscription:
        """Subscribe to the hub for ``selection``, counted against ``holder`` (an API key id: at most
        ``CONVEYOR_MAX_STREAMS_PER_KEY`` across every api process, :mod:`api.leases`); from now on live events
        collect in the mailbox. With ``text_topic`` (``publish=text``), each plain text message the client sends is
        published to that topic. Raises :class:`Refused` (1013 / 503) at a connection cap."""
        self._holder = holder
        self.text_topic = text_topic
        if holder is not None:
            cap = self.app.settings.max_streams_per_key
            self._lease = await self.app.leases.take(LEASE_STREAM, holder, cap)
            if self._lease is None:
                raise full(Full(f"this key holds its limit of {cap} event streams")) from None
        try:
            self._subscription = self.app.hub.add(selection, holder)
        except Full as exc:
            self._release()
            raise full(exc) from None
        self.state = StreamState.CATCHING_UP
        return self._subscription

    def close(self) -> None:
        """Leave the hub and give the key's place back; harmless when already closed or never opened."""
        self.state = StreamState.CLOSED
        if self._subscription is not None:
            self.app.hub.remove(self._subscription)
            self._subscription = None
        self._release()

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self.app.leases.release(lease)

    async def start_point(self, request: StreamRequest) -> str | None:
        """The id to read the backlog after: the resume point; else, for named jobs, just before the earliest
        job's ``job.queued`` event (their whole history; for a job whose event id is not noted yet, a few seconds
        before its creation); else ``None`` (live events only).

        Raises :class:`Refused` (1008 / 404) when a named job does not exist.
        """
        if request.resume is not None:
            return request.resume
        firsts = []
        for job_id in request.jobs:
            job = await self._own_job(job_id)
            first = await self.app.db(self.app.store.queued_event_id, job_id)
            firsts.append(first or await self._unnoted_start(job))
        return predecessor(min(firsts, key=id_key)) if firsts else None

    async def _unnoted_start(self, job: Job) -> str:
        """Where a job's events begin when its ``job.queued`` event id is not noted yet (the api notes it behind, or
        Redis was down and the dispatcher will announce it): they come after its creation by the api's clock, which
        may run a little ahead of Redis's, and not before what the stream holds (anything older is no event of a
        job that young, or not published yet)."""
        created = f"{max(int(job.created_at.timestamp() * 1000) - CLOCK_SLACK_MS, 1)}-0"
        oldest = (await self.app.events.retention()).first_id
        return created if oldest is None or id_key(created) > id_key(oldest) else oldest

    async def _own_job(self, job_id: str) -> Job:
        """The job, if it exists and is the stream owner's; else :class:`Refused` (1008 / 404), the same for
        both cases so that other owners' job ids are not revealed."""
        job = await self.app.db(self.app.store.get, job_id)
        if job is None or job.owner != self.subscription.selection.owner:
            raise Refused(f"no job {job_id}", http_status=404)
        return job

    def receive(self, data: str | bytes | None) -> asyncio.Future[None]:
        """Take a client's message (``None`` or bytes: a binary one): queue its command for the sending loop,
        which applies it before anything else still waiting; the future is done once it is applied. Raises
        :class:`Refused` for a message that is not an acceptable command."""
        if self.text_topic is not None and isinstance(data, str):
            if len(data) > MAX_COMMAND_BYTES or len(data.encode()) > MAX_COMMAND_BYTES:
                raise TOO_BIG.fresh()
            # A command-line client sends the line it read with its line break: the message is the line.
            line = data[:-2] if data.endswith("\r\n") else data[:-1] if data.endswith("\n") else data
            command = StreamCommand(op="publish", topic=self.text_topic, message=line)
        else:
            command = parse_command(data)
        if command.op == "publish":
            if command.job_id is not None or command.topic is None or command.message is None:
                raise Refused("publish names a topic and a message (any JSON value but null), and no job_id")
        elif (command.job_id is None) == (command.topic is None):
            raise Refused("a command names exactly one of job_id and topic")
        if len(self._commands) >= MAX_PENDING_COMMANDS:
            raise Refused("too many commands waiting; wait for the answers")
        pending = _Command(command)
        self._commands.append(pending)
        if self.state is StreamState.LIVE:
            self.state = StreamState.CATCHING_UP
        self.subscription.wake()
        return pending.done

    async def serve(
        self,
        sender: Sender,
        start: str | None,
        receive: Callable[[], Awaitable[Refused | None]],
        heartbeat: float | None = None,
    ) -> Refused | None:
        """Send (:meth:`run`) and receive (``receive``, the transport's loop over client messages) side by side
        until either ends; the first to end stops the other. Returns why the stream must close, if it must (an
        unexpected error is logged and closes only this stream, as :data:`~api.streams.wire.INTERNAL_ERROR`)."""
        outcome = await side_by_side(
            self.subscription,
            lambda: self.run(sender, start, heartbeat),
            receive,
            lambda: log.exception("event stream failed; closed with 1011"),
        )
        self.state = StreamState.CLOSING
        return outcome

    async def run(
        self,
        sender: Sender,
        start: str | None,
        heartbeat: float | None = None,
        *,
        sent: tuple[int, int] = (0, 0),
        until_idle: bool = False,
    ) -> tuple[int, int]:
        """Send until the connection ends — or, with ``until_idle``, until nothing waits to be sent (the stream is
        then ``LIVE``); returns the key of the newest id sent or read past (pass it back as ``sent`` to continue
        without repeats).

        Raises :class:`Refused` when the stream must close: the client fell too far behind, or a command could
        not be honoured.
        """
        if start is not None:
            sent = max(sent, await self._backlog(sender, start))
        subscription = self.subscription
        matches = subscription.selection.matches
        while True:
            if subscription.ended is not None:
                raise subscription.ended
            if self._commands:
                await self._apply(sender, self._commands.pop(0))
                continue
            item = subscription.pop()
            if item is None:
                self.state = StreamState.LIVE
                if until_idle:
                    return sent
                await wait_or_beat(subscription, sender, heartbeat)
                continue
            event, key = item.event, item.key
            if event is None or key is None:
                await sender.send(item)
                continue
            if key <= sent or not matches(event):
                continue
            await sender.send(item)
            sent = key

    async def _publish(self, command: StreamCommand) -> str:
        """Publish a client's message to its topic, when the key may publish there (``CONVEYOR_SHARED_TOPICS``) and
        its rate limit holds a token: a ``topic.message`` event for every listener on every api process, resumable
        like every event. Returns the answer for the client: ``published`` (with the event's id) or ``refused``."""
        assert command.topic is not None
        owner = self.subscription.selection.owner
        if not _TOPIC.match(command.topic):
            return _refused("publish", "a topic is letters, digits and _ . : - only")
        if not self.app.topics.may_publish(owner, command.topic):
            return _refused("publish", f"topic {command.topic!r} is shared and this key may not publish to it")
        if self._holder is not None and await self.app.limiter.take(self._holder) > 0:
            limit = self.app.settings.rate_limit_per_second
            return _refused("publish", f"rate limit of {limit:g} requests/s per key reached; nothing was published")
        event = Event(
            type=EventType.TOPIC_MESSAGE, topic=command.topic, message=command.message, ts=time.time(), owner=owner
        )
        try:
            event_id = await self.app.events.publish(event)
        except REDIS_ERRORS as exc:
            log.warning("publish refused: Redis unavailable", topic=command.topic, error=repr(exc))
            return _refused("publish", "Redis is unavailable; nothing was published, try again shortly")
        return Published(topic=command.topic, event_id=event_id).model_dump_json()

    async def _backlog(self, sender: Sender, start: str) -> tuple[int, int]:
        events = self.app.events
        matches = self.subscription.selection.matches
        cursor = start
        resynced = False
        while True:
            entries = await events.after(cursor, BACKLOG_PAGE)
            if not resynced:
                retention = await events.retention()
                if not retention.covers(cursor):
                    resynced = True
                    resync = Resync(
                        after=cursor,
                        first_event_id=retention.first_id,
                        detail="events after this point may have been trimmed; read the state of your jobs over HTTP",
                    )
                    await sender.send(Outgoing.notice(resync.model_dump_json()))
            for entry_id, fields in entries:
                try:
                    event = StreamEvent.read(entry_id, fields)
                except (ValueError, KeyError, TypeError):
                    continue  # not an event of this version (the hub logs each such entry once)
                if matches(event):
                    await sender.send(Outgoing.of(event))
            if entries:
                cursor = text(entries[-1][0])
            if len(entries) < BACKLOG_PAGE:
                return id_key(cursor)

    async def _apply(self, sender: Sender, pending: _Command) -> None:
        command = pending.command
        if command.op == "publish":
            await sender.send(Outgoing.notice(await self._publish(command)))
            if not pending.done.done():
                pending.done.set_result(None)
            return
        hub = self.app.hub
        subscription = self.subscription
        selection = subscription.selection
        topics = self.app.topics
        key = None if command.topic is None else topics.key(selection.owner, command.topic)
        if command.op == "unsubscribe":
            hub.unwatch(subscription, job_id=command.job_id, topic=key)
            answer = SubscriptionNotice(type="unsubscribed", job_id=command.job_id, topic=command.topic)
            await sender.send(Outgoing.notice(answer.model_dump_json(exclude_none=True)))
        else:
            if len(selection.jobs) + len(selection.topics) >= MAX_FOLLOWED:
                raise Refused(f"a stream follows at most {MAX_FOLLOWED} jobs and topics")
            if command.topic is not None:
                check_subscribe(topics, selection.owner, command.topic)
            try:
                hub.watch(subscription, job_id=command.job_id, topic=key)
            except Full as exc:
                raise full(exc) from None
            if command.job_id is not None:
                try:
                    job = await self._own_job(command.job_id)
                except Refused:
                    hub.unwatch(subscription, job_id=command.job_id)
                    raise
                await sender.send(Outgoing.notice(Snapshot(job_id=job.job_id, job=job).model_dump_json()))
            else:
                answer = SubscriptionNotice(type="subscribed", topic=command.topic)
                await sender.send(Outgoing.notice(answer.model_dump_json(exclude_none=True)))
        if not pending.done.done():
            pending.done.set_result(None)


#: What a topic may be named when a client publishes to it (as for a ``websocket`` notification).
_TOPIC = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _refused(op: str, detail: str) -> str:
    return CommandRefused(op=op, detail=detail).model_dump_json()
