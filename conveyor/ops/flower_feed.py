"""Flower fed from the job event stream: each job event becomes the Celery task event Flower's state understands.

Workers send no Celery task events (``conveyor/queue/app.py``). Inside ``conveyor flower``, :class:`FlowerFeed`
reads the job event stream from its first retained entry and folds every job event into Flower's own state, on
Flower's event loop, through Flower's own event handling (``EventsState.event``: its task table, search index,
per-worker counters and Prometheus metrics). So every page and API of Flower shows what the job store says:

=================  ===============================================================================================
job event          Celery task event (``uuid`` = job id, ``timestamp`` = the event's ``ts``)
=================  ===============================================================================================
``job.queued``     ``task-received`` with the task's name and ``args`` ``[job_id]``: RECEIVED
``job.started``    ``task-started`` (after a ``task-received`` when the job was not just received, as Celery
                   does for a retried or redelivered task): STARTED, ``retries`` = attempt - 1
``job.progress``   ``task-progress``: still STARTED, ``progress`` and ``result`` = ``{"progress": 42.0}``
``job.retrying``   ``task-retried`` with ``exception`` = the error and ``retries`` = the attempt: RETRY
``job.succeeded``  ``task-succeeded`` with ``result`` = the job's result as JSON and ``runtime``: SUCCESS
``job.failed``     ``task-failed`` with ``exception`` = the job's error: FAILURE
``job.cancelled``  ``task-revoked``: REVOKED
=================  ===============================================================================================

Only jobs of a kind in :data:`conveyor.names.TASK_FOR_KIND` appear; housekeeping publishes no job events. A task
event that did not come from this feed (a worker with task events turned on) is ignored: the stream is the one
source of task state. The stream is totally ordered, so the newest event always sets the state (Celery's own
merge rules, made for events arriving out of order from many workers, would keep a job that failed and was
retried as FAILURE while it runs again).

After a restart the feed replays the stream from its start: the stream holds at most ``CONVEYOR_EVENTS_MAX_LEN``
entries (and 7 days), Flower keeps at most ``max_tasks`` tasks, so the work is bounded and nothing is stored
anywhere else.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from celery import states
from celery.events.state import TASK_EVENT_TO_STATE, Task
from flower.events import EventsState
from flower.utils.search import TaskSearchEngine

from conveyor import logs
from conveyor.events import AsyncEventLog, decode, id_key
from conveyor.names import EVENTS_STREAM, TASK_FOR_KIND
from conveyor.redis_client import redis_client, text
from conveyor.schemas import Event, EventType
from conveyor.settings import Settings

log = logs.get("conveyor.ops.flower_feed")

#: The key marking a Celery event made by the feed (its value is the job event's stream id).
FEED_MARK: Final = "conveyor_event_id"
#: The longest ``result`` shown, in characters (Celery clips a task's result repr at 1024 too).
RESULT_MAX_CHARS: Final = 1024
#: Seconds the feed waits before its first read, so that Flower has heard every live worker's heartbeat (every
#: 2 s) and the replay can credit jobs to the worker that serves their queue.
SETTLE_SECONDS: Final = 3.0
#: Seconds between two reads of a live stream: Flower is at most this late, and reads at most 4 times a second
#: (at 50 jobs/s, Flower's CPU per job was 0.43 to 0.53 ms reading every 50 ms, 0.18 to 0.21 ms every 250 ms).
GATHER_SECONDS: Final = 0.25
#: Task states in which a started job may still report progress.
_BEFORE_START: Final = frozenset({states.PENDING, states.RECEIVED, states.RETRY})
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class JobTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """A Flower task that follows one job: the newest event sets its state, ``task-progress`` keeps it (STARTED),
    and ``progress`` (the job's percentage) is one of the fields every page and API of Flower shows."""

    progress = None
    _fields = (*Task._fields, "progress")

    def event(
        self,
        type_: str,
        timestamp: float | None = None,
        local_received: float | None = None,
        fields: dict[str, Any] | None = None,
        **_ignored: Any,
    ) -> None:
        """Apply one task event. Progress for a finished task changes nothing."""
        update = dict(fields or {})
        if type_ == "progress":
            if self.state in states.READY_STATES:
                return
        else:
            state = TASK_EVENT_TO_STATE.get(type_)
            if state is not None:
                setattr(self, type_, timestamp)
            update["state"] = state or type_.upper()
        update["timestamp"] = timestamp
        self.__dict__.update(update)


class LazySearchEngine(TaskSearchEngine):  # type: ignore[misc]  # flower ships no type hints
    """Flower's task search index, brought up to date when it is searched instead of at every event.

    Flower re-indexes a task at each of its events (its name, state, worker, args, kwargs parsed with
    ``ast.literal_eval``, and result): about 40 % of folding a job. Here an event only marks its task stale; the
    tasks page and API (every search) first index each stale task once, in its newest state. So a search sees
    exactly what indexing at every event would have shown, and a job costs one indexing, or none while nobody
    searches."""

    def __init__(self) -> None:
        super().__init__()
        self._stale: dict[str, Any] = {}

    def upsert(self, task: Any) -> None:
        task_id = getattr(task, "uuid", None)
        if task_id:
            self._stale[str(task_id)] = task

    def remove(self, task_id: str) -> None:
        self._stale.pop(task_id, None)
        super().remove(task_id)

    def rebuild(self, tasks: Any) -> None:
        self._stale.clear()
        super().rebuild(tasks)

    def refresh(self) -> None:
        """Index every task marked stale since the last search."""
        stale, self._stale = self._stale, {}
        for task in stale.values():
            super().upsert(task)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.refresh()
        return super().search(*args, **kwargs)

    def matching_ids(self, query: str, candidates: Any = None) -> Any:
        self.refresh()
        return super().matching_ids(query, candidates)


class JobState(EventsState):  # type: ignore[misc]  # flower ships no type hints
    """Flower's state, whose tasks are :class:`JobTask` and come from the feed only, indexed for search when
    searched (:class:`LazySearchEngine`).

    A task event without :data:`FEED_MARK` (a worker's own) is dropped. A hostname without ``@`` names a queue
    standing in for a worker the feed cannot tell (see :meth:`FlowerFeed.hostname`): it is kept on the task but
    not listed as a worker, so Flower neither shows it on the workers page nor purges its metrics as offline.
    """

    Task = JobTask

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.search_engine = LazySearchEngine()
        self.search_engine.rebuild(self.tasks.items())

    def event(self, event: dict[str, Any]) -> Any:
        if event["type"].startswith("task-") and FEED_MARK not in event:
            return None
        folded = super().event(event)
        hostname = event["hostname"]
        if "@" not in hostname:
            self.workers.pop(hostname, None)
            self.counter.pop(hostname, None)
        return folded


#: The ``-<pid>`` that ``conveyor worker`` adds to its node name (``notifications-4242@host``).
_NUMBERED = re.compile(r"-\d+$")


def serves(hostname: str, queue: str) -> bool:
    """True when a worker named ``hostname`` consumes ``queue``: Conveyor names workers
    ``<queue>[+<queue>…]-<pid>@<host>`` (``conveyor worker``)."""
    node, at, _host = hostname.partition("@")
    return bool(at) and queue in _NUMBERED.sub("", node).split("+")


def _json(value: Any) -> str:
    dumped = orjson.dumps(value).decode()
    return dumped if len(dumped) <= RESULT_MAX_CHARS else dumped[: RESULT_MAX_CHARS - 1] + "…"


def _progress(event: Event) -> str | None:
    return None if event.progress is None else _json({"progress": round(event.progress, 2)})


def task_events(event: Event, task: Any | None, hostname: str, clock: int) -> list[dict[str, Any]]:
    """The Celery task events (oldest first) that bring ``task`` (Flower's task for the job, or ``None``) to the
    state ``event`` announces. Empty for events that are not about a user job, and for a ``job.queued`` repeated
    while the job is still RECEIVED (the dispatcher may announce a job twice)."""
    if event.job_id is None or event.kind not in TASK_FOR_KIND:
        return []
    name, queue = TASK_FOR_KIND[event.kind]
    state = None if task is None else task.state

    def make(type_: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": type_,
            "uuid": event.job_id,
            "hostname": hostname,
            "timestamp": event.ts,
            "local_received": None,  # never a worker heartbeat: a replayed event says nothing about a live worker
            "clock": clock,
            FEED_MARK: event.event_id,
            "name": name,
            "args": repr([event.job_id]),
            "kwargs": "{}",
            "routing_key": queue,
            "progress": event.progress,
            "exception": event.error,
            **fields,
        }

    retries = {} if event.attempt is None else {"retries": max(event.attempt - 1, 0)}
    # Every start follows a receipt, as in Celery (a retried or redelivered task is received again).
    receipt = [] if state == states.RECEIVED else [make("task-received", result=None, retries=0)]
    start = [*receipt, make("task-started", result=_progress(event), **retries)]
    if event.type is EventType.QUEUED:
        return receipt
    if event.type is EventType.STARTED:
        return start
    if event.type is EventType.PROGRESS:
        # Progress for a job whose start Flower missed (trimmed from the stream) starts it first.
        missed = task is None or state in _BEFORE_START
        return [*(start if missed else []), make("task-progress", result=_progress(event))]
    started_at = None if task is None or state != states.STARTED else task.started
    runtime = {} if started_at is None else {"runtime": event.ts - started_at}
    if event.type is EventType.RETRYING:
        return [make("task-retried", result=None, retries=event.attempt or 0)]
    if event.type is EventType.SUCCEEDED:
        result = None if event.result is None else _json(event.result)
        return [make("task-succeeded", result=result, **runtime, **retries)]
    if event.type is EventType.FAILED:
        return [make("task-failed", result=None, **runtime, **retries)]
    if event.type is EventType.CANCELLED:
        return [make("task-revoked", terminated=False, expired=False)]
    return []


class FlowerFeed:
    """Reads the job event stream from its start and folds each job event into ``state`` (Flower's).

    Runs on Flower's event loop (the state is only touched there). :meth:`run` is supervised: an unreachable
    Redis is retried with backoff from the last id read, any other error is logged with its traceback and the
    loop starts again from there; one entry that cannot be decoded or folded is logged and skipped.
    """

    def __init__(
        self,
        state: JobState,
        client: aioredis.Redis,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        block_ms: int = 5000,
        count: int = 500,
        gather_seconds: float = GATHER_SECONDS,
    ) -> None:
        self.state = state
        self.client = client
        self.settle_seconds = settle_seconds
        self.block_ms = block_ms
        self.count = count
        self.gather_seconds = gather_seconds
        #: The id of the last stream entry folded (or skipped); ``0-0`` reads the stream from its start.
        self.last_id = "0-0"
        self.folded = 0
        self._clock = 0

    def hostname(self, queue: str, task: Any | None, fresh: bool) -> str:
        """Who ran (or will run) a job when its event does not name the worker (``job.started`` does): the task's
        worker so far, unless ``fresh`` (received, started); else the one live worker serving ``queue``. With none
        or several, the queue's name."""
        if not fresh and task is not None and task.worker is not None:
            return str(task.worker.hostname)
        alive = [name for name, worker in self.state.workers.items() if worker.alive and serves(name, queue)]
        return alive[0] if len(alive) == 1 else queue

    def fold(self, event: Event) -> int:
        """Fold one job event into Flower's state; returns how many Celery events that took."""
        if event.job_id is None or event.kind not in TASK_FOR_KIND:
            return 0
        task = self.state.tasks.get(event.job_id)
        fresh = event.type in (EventType.QUEUED, EventType.STARTED)
        hostname = event.worker or self.hostname(TASK_FOR_KIND[event.kind][1], task, fresh)
        self._clock += 1
        celery_events = task_events(event, task, hostname, self._clock)
        for celery_event in celery_events:
            self.state.event(celery_event)
        return len(celery_events)

    def fold_entry(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        """Decode and fold one stream entry; a bad one is logged and skipped."""
        try:
            event = decode(entry_id, fields)
        except (KeyError, TypeError, ValueError) as exc:  # orjson's and pydantic's errors are ValueErrors
            log.warning("bad stream entry skipped", event_id=entry_id, error=repr(exc)[:300])
            return
        try:
            self.folded += self.fold(event)
        except Exception:  # one event Flower cannot take must not stop the others
            log.exception("event not folded; skipped", event_id=entry_id, job_id=event.job_id)

    async def run(self) -> None:
        """Follow the stream until cancelled; never returns otherwise."""
        await asyncio.sleep(self.settle_seconds)
        log.info("flower feed started", after=self.last_id)
        delay, check = 0.1, False
        while True:
            try:
                if check:
                    await self._check_continuity()
                    check = False
                await self._read()
                delay = 0.1
                continue
            except _REDIS_DOWN as exc:
                check = True
                log.warning("event stream unreachable; retrying", in_seconds=delay, error=repr(exc))
            except Exception:  # supervised: log, back off, go on from the last id
                log.exception("flower feed failed; restarting", after=self.last_id, in_seconds=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read(self) -> None:
        reply: Any = await self.client.xread({EVENTS_STREAM: self.last_id}, count=self.count, block=self.block_ms)
        entries = [entry for _stream, stream_entries in reply or () for entry in stream_entries]
        for entry_id, fields in entries:
            self.last_id = text(entry_id)
            self.fold_entry(self.last_id, fields)
        # Live, let events gather for a moment before the next read: a read per event would cost Flower more than
        # folding it. In a replay, just let Flower answer requests between pages.
        await asyncio.sleep(0 if len(entries) >= self.count else self.gather_seconds)

    async def _check_continuity(self) -> None:
        """After an outage: say so if events after the last one read were trimmed meanwhile, and start again from
        the stream's start if the stream was reset (its ids went backwards)."""
        retention = await AsyncEventLog(self.client, max_len=0).retention()
        if retention.covers(self.last_id):
            return
        log.warning("events trimmed during an outage were not folded", after=self.last_id)
        newest = retention.last_generated_id or "0-0"
        if id_key(newest) < id_key(self.last_id):
            self.last_id = "0-0"


def install(flower: Any, settings: Settings) -> FlowerFeed:
    """Give ``flower`` (a Flower application, not started) a :class:`JobState` and return the feed that fills it;
    run :meth:`FlowerFeed.run` on Flower's event loop and close the feed's client when Flower stops."""
    options = flower.options
    state = JobState(max_workers_in_memory=options.max_workers, max_tasks_in_memory=options.max_tasks)
    flower.events.state = state
    client = redis_client(settings.effective_redis_url, asynchronous=True, patience="background")
    return FlowerFeed(state, client)
