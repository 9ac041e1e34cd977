"""Backlog, then live: how every event stream (WebSocket ``/ws``, SSE ``/events``) sends events.

One :class:`EventStream` per connection, whatever the transport:

1. the connection subscribes to the hub first, so live events start collecting in its mailbox;
2. it reads the backlog after the resume point from the stream (``XRANGE``, pages of 500), checking after
   each page that the stream still covers the cursor — if not, a ``resync`` message goes first — and sends
   the matching events, remembering the highest id read;
3. then it sends live events from the mailbox, skipping any id not above the highest already read.

An event published while the backlog is read is in both; the id comparison sends it once. None can fall in
between, because the subscription existed before the first read. Subscribing to a job on an open stream
(a command) takes effect in the same loop: the job joins the subscription (the listener is in place), then
the job is read from the store and sent as a ``snapshot``, then its live events follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from api.auth import Unauthenticated
from api.streams.hub import Full, Outgoing, Selection, Subscription
from conveyor.events import id_key, predecessor
from conveyor.schemas import Job, Resync, Snapshot, StreamCommand, SubscriptionNotice
from conveyor.store.apikeys import Principal
from conveyor.topics import TopicPolicy

if TYPE_CHECKING:
    from api.state import AppState

BACKLOG_PAGE = 500
#: Most jobs plus topics one stream may follow.
MAX_FOLLOWED = 100

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class Refused(Exception):
    """Why a stream is refused or ends: a WebSocket close code and, before an SSE response starts, an HTTP status."""

    def __init__(self, detail: str, ws_code: int = CLOSE_POLICY, http_status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.ws_code = ws_code
        self.http_status = http_status


TOO_FAR_BEHIND = Refused("too far behind; reconnect with last_event_id", CLOSE_TRY_AGAIN, 503)


def full(exc: Full) -> Refused:
    """The refusal for a connection cap: WebSocket close 1013, HTTP 503."""
    return Refused(str(exc), CLOSE_TRY_AGAIN, 503)


@dataclass(frozen=True)
class StreamRequest:
    """What a client asked for when it connected: jobs and topics (none: every job event), and a resume point."""

    jobs: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    resume: str | None = None

    def selection(self, owner: str | None, topics: TopicPolicy) -> Selection:
        """What the stream listens to as ``owner``. Raises :class:`Refused` (1008 / 403) for a shared topic
        the owner may not read."""
        for topic in self.topics:
            _check_subscribe(topics, owner, topic)
        return Selection(owner, self.jobs, (topics.key(owner, topic) for topic in self.topics), topics.key)


def _check_subscribe(topics: TopicPolicy, owner: str | None, topic: str) -> None:
    if not topics.may_subscribe(owner, topic):
        raise Refused(f"topic {topic!r} is not readable with this key", CLOSE_POLICY, 403)


def _values(query: Mapping[str, str], name: str, max_length: int) -> tuple[str, ...]:
    getlist = getattr(query, "getlist", None)
    values: Sequence[str] = getlist(name) if getlist is not None else ([query[name]] if name in query else [])
    for value in values:
        if not 0 < len(value) <= max_length:
            raise Refused(f"{name} must be 1 to {max_length} characters")
    return tuple(dict.fromkeys(values))


def parse_request(query: Mapping[str, str], last_event_id_header: str | None = None) -> StreamRequest:
    """The filters and resume point of a stream request (``job_id`` and ``topic`` may repeat).

    The ``Last-Event-ID`` header, when given, wins over the ``last_event_id`` parameter. Raises
    :class:`Refused` (1008 / 400) for a malformed id or too many filters.
    """
    jobs = _values(query, "job_id", 64)
    topics = _values(query, "topic", 200)
    if len(jobs) + len(topics) > MAX_FOLLOWED:
        raise Refused(f"at most {MAX_FOLLOWED} job_id and topic filters")
    resume = last_event_id_header if last_event_id_header is not None else query.get("last_event_id")
    if resume is not None:
        try:
            if len(resume) > 64:
                raise ValueError(resume)
            id_key(resume)
        except ValueError:
            raise Refused("last_event_id is not an event id") from None
    return StreamRequest(jobs, topics, resume)


async def admit(state: AppState, headers: Mapping[str, str], ticket: str | None) -> Principal:
    """Authenticate a WebSocket stream (bearer header or ``?ticket=``) and take a token from its key's rate
    limit. Raises :class:`Refused`: 1008 (401) without valid credentials, 1013 (429) over the rate limit."""
    try:
        principal = await state.auth.stream(headers, ticket)
    except Unauthenticated as exc:
        raise Refused(exc.detail, CLOSE_POLICY, 401) from None
    if await state.limiter.take(principal.key_id) > 0:
        raise Refused("rate limit reached for this key; try again later", CLOSE_TRY_AGAIN, 429)
    return principal


class Sender(Protocol):
    """How a transport delivers one message (an event, or a notice without an id)."""

    async def send(self, item: Outgoing) -> None: ...

    async def heartbeat(self) -> None: ...


def notice(message: str) -> Outgoing:
    """A message that is not an event (``resync``, ``snapshot``, …)."""
    return Outgoing(None, message)


@dataclass
class _Command:
    command: StreamCommand
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EventStream:
    """One connection's events: the backlog after its resume point, then live ones; each at most once, in order."""

    def __init__(self, state: AppState, subscription: Subscription) -> None:
        self.state = state
        self.subscription = subscription
        self._commands: list[_Command] = []

    async def start_point(self, request: StreamRequest) -> str | None:
        """The id to read the backlog after: the resume point; else, for named jobs, just before the earliest
        job's ``job.queued`` event (their whole history); else ``None`` (live events only).

        Raises :class:`Refused` (1008 / 404) when a named job does not exist.
        """
        if request.resume is not None:
            return request.resume
        firsts = []
        for job_id in request.jobs:
            await self._own_job(job_id)
            first = await anyio.to_thread.run_sync(self.state.store.queued_event_id, job_id)
            if first:
                firsts.append(first)
        return predecessor(min(firsts, key=id_key)) if firsts else None

    async def _own_job(self, job_id: str) -> Job:
        """The job, if it exists and is the stream owner's; else :class:`Refused` (1008 / 404), the same for
        both cases so that other owners' job ids are not revealed."""
        job = await anyio.to_thread.run_sync(self.state.store.get, job_id)
        if job is None or job.owner != self.subscription.selection.owner:
            raise Refused(f"no job {job_id}", CLOSE_POLICY, 404)
        return job

    def submit(self, command: StreamCommand) -> asyncio.Future[None]:
        """Queue a client's subscribe/unsubscribe for the sending loop, which applies it before anything else
        still waiting; the future is done once it is applied. Raises :class:`Refused` for a malformed command."""
        if (command.job_id is None) == (command.topic is None):
            raise Refused("a command names exactly one of job_id and topic")
        if len(self._commands) >= 8:
            raise Refused("too many commands waiting; wait for the answers")
        pending = _Command(command)
        self._commands.append(pending)
        self.subscription.wake()
        return pending.done

    @property
    def busy(self) -> bool:
        """True while commands wait to be applied."""
        return bool(self._commands)

    async def command(self, command: StreamCommand) -> None:
        """Apply a client's subscribe/unsubscribe in the sending loop, in order; returns once it is done."""
        await self.submit(command)

    async def run(
        self,
        sender: Sender,
        start: str | None,
        heartbeat: float | None = None,
        *,
        sent: tuple[int, int] = (0, 0),
        until_idle: bool = False,
    ) -> tuple[int, int]:
        """Send until the connection ends — or, with ``until_idle``, until nothing waits to be sent; returns the
        key of the newest id sent or read past (pass it back as ``sent`` to continue without repeats).

        Raises :class:`Refused` when the stream must close: the client fell too far behind, or a command could
        not be honoured.
        """
        if start is not None:
            sent = max(sent, await self._backlog(sender, start))
        subscription = self.subscription
        matches = subscription.selection.matches
        while True:
            if subscription.overflowed:
                raise TOO_FAR_BEHIND
            if self._commands:
                await self._apply(sender, self._commands.pop(0))
                continue
            item = subscription.pop()
            if item is None:
                if until_idle:
                    return sent
                if heartbeat is None:
                    await subscription.wait()
                    continue
                try:
                    async with asyncio.timeout(heartbeat):
                        await subscription.wait()
                except TimeoutError:
                    await sender.heartbeat()
                continue
            event, key = item.event, item.key
            if event is None or key is None:
                await sender.send(item)
                continue
            if key <= sent or not matches(event):
                continue
            await sender.send(item)
            sent = key

    async def _backlog(self, sender: Sender, start: str) -> tuple[int, int]:
        events = self.state.events
        matches = self.subscription.selection.matches
        cursor = start
        resynced = False
        while True:
            page = await events.after(cursor, BACKLOG_PAGE)
            if not resynced:
                retention = await events.retention()
                if not retention.covers(cursor):
                    resynced = True
                    resync = Resync(
                        after=cursor,
                        first_event_id=retention.first_id,
                        detail="events after this point may have been trimmed; read the state of your jobs over HTTP",
                    )
                    await sender.send(notice(resync.model_dump_json()))
            for event in page:
                if matches(event):
                    await sender.send(Outgoing.of(event))
            if page:
                cursor = page[-1].event_id
            if len(page) < BACKLOG_PAGE:
                return id_key(cursor)

    async def _apply(self, sender: Sender, pending: _Command) -> None:
        command = pending.command
        hub = self.state.hub
        selection = self.subscription.selection
        topics = self.state.topics
        key = None if command.topic is None else topics.key(selection.owner, command.topic)
        if command.op == "unsubscribe":
            hub.unwatch(self.subscription, job_id=command.job_id, topic=key)
            unsubscribed = SubscriptionNotice(type="unsubscribed", job_id=command.job_id, topic=command.topic)
            await sender.send(notice(unsubscribed.model_dump_json(exclude_none=True)))
        else:
            if len(selection.jobs) + len(selection.topics) >= MAX_FOLLOWED:
                raise Refused(f"a stream follows at most {MAX_FOLLOWED} jobs and topics")
            if command.topic is not None:
                _check_subscribe(topics, selection.owner, command.topic)
            try:
                hub.watch(self.subscription, job_id=command.job_id, topic=key)
            except Full as exc:
                raise full(exc) from None
            if command.job_id is not None:
                try:
                    job = await self._own_job(command.job_id)
                except Refused:
                    hub.unwatch(self.subscription, job_id=command.job_id)
                    raise
                await sender.send(notice(Snapshot(job_id=job.job_id, job=job).model_dump_json()))
            else:
                subscribed = SubscriptionNotice(type="subscribed", topic=command.topic)
                await sender.send(notice(subscribed.model_dump_json(exclude_none=True)))
        if not pending.done.done():
            pending.done.set_result(None)
