"""Group submission: the api records submissions many at a time, then announces and enqueues them in one round trip.

One thread per api process takes every submission waiting (no added wait when idle) and, for the whole group:

1. one job-store transaction inserts every new row (``queued``, its task not yet marked sent) — and notes as sent
   the jobs of earlier groups (below);
2. once it committed, one Redis pipeline appends each new job's ``job.queued`` event and pushes its task message
   (the group's ``log`` notifications bundled, :mod:`conveyor.queue.messages`);
3. each caller gets its jobs back: a 202 always follows the commit of its rows. Callers are coroutines of the api's
   event loop; a group's outcomes are handed to the loop in one call (one wake-up per group, not per caller).

Noting that a task was sent (``dispatched_at`` and the ``job.queued`` event id) is written behind, with the next
group's inserts, or on its own after ``MARK_DELAY`` when no group follows. Nothing is lost when the process dies
in between: a row whose task is not noted as sent is sent again by beat's dispatcher (:mod:`conveyor.queue.dispatch`)
after its grace period, and the worker's claim drops the duplicate delivery; clients following the job see its
``job.queued`` event twice at worst. If Redis refuses the pipeline the rows stay unnoted and the dispatcher sends
them when it can.

Idempotency keys: a submission whose every key was used before is a replay (its original jobs come back, with
their request hash for the caller to compare); one whose keys were partly used is refused
(:class:`conveyor.store.jobstore.IdempotencyConflict`) and records nothing; submissions without keys are inserted
together with one statement.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery

from conveyor import logs, metrics
from conveyor.events import EventLog, job_event
from conveyor.queue.messages import BUNDLE_MAX, messages_for
from conveyor.redis_client import text
from conveyor.schemas import Job
from conveyor.store import db
from conveyor.store.jobstore import IdempotencyConflict, JobStore, NewJob, new_row
from conveyor.store.ledger import insert_ignore
from conveyor.store.prepared import Prepared
from conveyor.store.rows import job_from_row, utcnow

log = logs.get("conveyor.queue.submitter")

#: Seconds a "sent" note waits for the next group's transaction before it is written on its own.
MARK_DELAY = 0.02
#: Most submissions one group takes.
MAX_GROUP = 200

_MARK = Prepared(
    db.jobs.update()
    .where(db.jobs.c.id == sa.bindparam("p_job"))
    .values(
        dispatched_at=sa.bindparam("p_at", type_=sa.DateTime(timezone=True)), queued_event_id=sa.bindparam("p_event")
    )
)
_INSERT = Prepared(db.jobs.insert(), list(new_row(NewJob(kind="", request={}, task_name="", queue=""), utcnow())))
_BY_KEY = sa.select(db.jobs).where(db.jobs.c.idempotency_key == sa.bindparam("p_key"))


@dataclass(frozen=True)
class Submitted:
    """One job of a submission: the job, whether this submission created it, and, for a replayed job, the hash of
    the request that created it."""

    job: Job
    created: bool
    request_hash: str | None = None


@dataclass
class _Pending:
    news: Sequence[NewJob]
    future: asyncio.Future[list[Submitted]]


class Submitter:
    """The api process's group submitter (see the module docstring). Thread-safe; its thread starts on first use."""

    def __init__(
        self,
        store: JobStore,
        events: EventLog,
        celery: Celery,
        broker: redis.Redis | None = None,
        bundle_max: int = BUNDLE_MAX,
    ) -> None:
        self.store = store
        self.events = events
        self.celery = celery
        #: The broker's Redis when it is not the events' (``CONVEYOR_BROKER_URL``): task messages go there, in a
        #: second round trip after the events.
        self.broker = broker
        #: Most ``log`` notifications one task message carries (``CONVEYOR_BUNDLE_MAX``; 1: one message each).
        self.bundle_max = bundle_max
        self._pending: list[_Pending] = []
        self._marks: list[dict[str, Any]] = []
        self._marks_since = 0.0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, news: Sequence[NewJob]) -> list[Submitted]:
        """Record a submission (its jobs all together, or none): one :class:`Submitted` per job, in order, once its
        rows are committed and its tasks handed to Redis (or left to the dispatcher); else raises
        :class:`IdempotencyConflict`, or the job store's error. A caller cancelled meanwhile leaves the others of its
        group unaffected; its rows may still be recorded and sent (as with a client that left after sending)."""
        pending = _Pending(news, asyncio.get_running_loop().create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the submitter is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="group-submitter", daemon=True)
                self._thread.start()
            self._pending.append(pending)
            self._cond.notify()
        return await pending.future

    def close(self) -> None:
        """Finish what is pending (its notes included), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    if self._marks and time.monotonic() - self._marks_since >= MARK_DELAY:
                        break
                    self._cond.wait(MARK_DELAY if self._marks else None)
                if self._closed and not self._pending and not self._marks:
                    return
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                marks, self._marks = self._marks, []
            try:
                self._run(group, marks)
            except BaseException as exc:  # never leave a caller waiting
                log.error("group submission failed", error=repr(exc), exc_info=exc)
                _settle(group, [exc] * len(group))

    def _run(self, group: list[_Pending], marks: list[dict[str, Any]]) -> None:
        now = utcnow()
        # Rows are built before the transaction and read back as jobs after it: the write lock covers SQL only.
        rows = [None if _keyed(pending) else [new_row(new, now) for new in pending.news] for pending in group]
        dialect = self.store.engine.dialect  # the statements' parameters in the driver's form, before the lock too
        plain = _INSERT.driver_rows(dialect, [row for built in rows if built is not None for row in built])
        marked = _MARK.driver_rows(dialect, marks)
        try:
            recorded = self.store.write(lambda connection: _record(connection, group, rows, plain, marked, now))
        except Exception as exc:  # noqa: BLE001 - the error goes to every caller of the group
            self._remark(marks)
            _settle(group, [exc] * len(group))
            return
        outcomes = [
            outcome if outcome is not None else [Submitted(job_from_row(row), True) for row in plain or ()]
            for outcome, plain in zip(recorded, rows, strict=True)
        ]
        fresh = [s.job for outcome in outcomes if isinstance(outcome, list) for s in outcome if s.created]
        if fresh:
            self._send(fresh)
        _settle(group, outcomes)

    def _send(self, jobs: list[Job]) -> None:
        """Announce the jobs and push their tasks in one round trip (:meth:`conveyor.events.EventLog.pipeline`: a
        reader blocked on the stream reads the group's events at once); note them sent with the next group."""
        pipe = self.events.pipeline(len(jobs))
        tasks = pipe if self.broker is None else self.broker.pipeline(transaction=False)
        for job in jobs:
            self.events.add_to(pipe, job_event(job))
        for queue, message in messages_for(self.celery, jobs, self.bundle_max):
            tasks.lpush(queue, message)
        metrics.count_jobs(pipe, jobs)  # after the events: the first replies are their ids
        try:
            replies = pipe.execute()
            if tasks is not pipe:  # after the events: a worker's job.started never comes before job.queued
                tasks.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure leaves the rows to the dispatcher
            log.warning("dispatch deferred", jobs=len(jobs), error=repr(exc))
            return
        at = utcnow()
        self._remark(
            [
                {"p_job": job.job_id, "p_at": at, "p_event": text(reply)}
                for job, reply in zip(jobs, replies, strict=False)
            ]
        )

    def _remark(self, marks: list[dict[str, Any]]) -> None:
        if not marks:
            return
        with self._cond:
            if not self._marks:
                self._marks_since = time.monotonic()
            self._marks.extend(marks)
            self._cond.notify()


def _settle(group: list[_Pending], outcomes: Sequence[list[Submitted] | BaseException]) -> None:
    """Hand each caller of ``group`` its outcome, one call into each event loop for all of them (from the
    submitter's thread). A loop already closed (the api stopping) has no one left to tell."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[Submitted]], Any]]] = {}
    for pending, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(pending.future.get_loop(), []).append((pending.future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, settled)
        except RuntimeError:  # the loop is closed
            log.info("submissions settled after their event loop closed", submissions=len(settled))


def _resolve(settled: list[tuple[asyncio.Future[list[Submitted]], list[Submitted] | BaseException]]) -> None:
    """On the callers' loop: each outcome to its future, unless the caller stopped waiting (its request timed out
    and cancelled it): one caller gone must not fail the others of its group."""
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _record(
    connection: sa.Connection,
    group: list[_Pending],
    rows: list[list[dict[str, Any]] | None],
    plain: list[Any],
    marks: list[Any],
    now: datetime,
) -> list[list[Submitted] | BaseException | None]:
    """The group's transaction: earlier groups' notes (``marks``, in the driver's form), then every submission's
    rows (``rows``: each submission's without idempotency keys, ``None`` for one with keys; the former all inserted
    with one statement, from ``plain``, the same rows in the driver's form). For each submission, in order: ``None``
    when its rows were inserted as built, else what :func:`_record_keyed` made of it."""
    _MARK.execute_driver_rows(connection, marks)
    _INSERT.execute_driver_rows(connection, plain)
    return [
        None if built is not None else _record_keyed(connection, pending.news, now)
        for pending, built in zip(group, rows, strict=True)
    ]


def _keyed(pending: _Pending) -> bool:
    return any(new.idempotency_key is not None for new in pending.news)


def _record_keyed(connection: sa.Connection, news: Sequence[NewJob], now: datetime) -> list[Submitted] | BaseException:
    """Insert a submission whose jobs carry idempotency keys, inside a savepoint: all new, all replays (the original
    jobs), or refused with nothing written."""
    rows = [new_row(new, now) for new in news]
    savepoint = connection.begin_nested()
    inserted = [connection.execute(insert_ignore(connection, db.jobs), row).first() is not None for row in rows]
    if all(inserted):
        savepoint.commit()
        return [Submitted(job_from_row(row), True) for row in rows]
    savepoint.rollback()
    if any(inserted):
        return IdempotencyConflict("some of these idempotency keys were used before, others not")
    replayed = []
    for new in news:
        found = connection.execute(_BY_KEY, {"p_key": new.idempotency_key}).first()
        if found is None:  # a key without its row: someone else's insert failed; refuse rather than guess
            return IdempotencyConflict("an idempotency key of this submission is in use")
        replayed.append(Submitted(job_from_row(found), False, found._mapping["request_hash"]))
    return replayed
