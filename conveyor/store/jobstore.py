"""The job store: the one place that knows a job's status. Every change is a conditional update, committed by the
process's group writer (:mod:`conveyor.store.writer`), so that concurrent callers share transactions."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.ids import new_id
from conveyor.schemas import FINISHED, Job, JobStatus
from conveyor.store import db, writes
from conveyor.store.db import UNAVAILABLE as UNAVAILABLE  # re-exported: what callers catch
from conveyor.store.outbox import Dispatch as Dispatch  # re-exported: callers import it from the job store
from conveyor.store.outbox import Outbox
from conveyor.store.rows import aware as _aware  # noqa: F401 - re-exported for older callers
from conveyor.store.rows import job_from_row
from conveyor.store.rows import utcnow as utcnow
from conveyor.store.writer import GroupWriter, T, Unit


class IdempotencyConflict(ValueError):
    """A submission of several jobs whose idempotency keys were partly used before (nothing is recorded)."""


class InvalidCursor(ValueError):
    """A ``cursor`` that this store did not hand out."""


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as exc:  # not base64 (binascii.Error), not ASCII, not UTF-8 inside
        raise InvalidCursor(cursor) from exc
    if len(value) != 36:
        raise InvalidCursor(cursor)
    return value


def keyset_page(
    engine: Engine, table: sa.Table, filters: Iterable[sa.ColumnElement[bool]], limit: int, cursor: str | None
) -> tuple[list[sa.Row[Any]], str | None]:
    """Rows of ``table`` newest first (by UUIDv7 ``id``) after ``cursor``, and the next page's cursor.

    Keyset pagination: no offsets, so rows added between pages are neither skipped nor repeated.
    Raises :class:`InvalidCursor` for a cursor this module did not make.
    """
    query = table.select().where(*filters).order_by(table.c.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(table.c.id < decode_cursor(cursor))
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    next_cursor = encode_cursor(rows[limit - 1]._mapping["id"]) if len(rows) > limit else None
    return list(rows[:limit]), next_cursor


def find(engine: Engine, table: sa.Table, row_id: str, owner: str | None = None) -> sa.Row[Any] | None:
    """``table``'s row with this ``id``, or ``None`` when there is none (or, with ``owner``, when it is someone
    else's: the same answer, so that other owners' ids are not revealed)."""
    query = table.select().where(table.c.id == row_id)
    if owner is not None:
        query = query.where(table.c.owner == owner)
    with engine.connect() as connection:
        return connection.execute(query).first()


@dataclass(frozen=True)
class NewJob:
    """What a submission records before its task is sent."""

    kind: str
    request: Mapping[str, Any]
    task_name: str
    queue: str
    owner: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    job_id: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None


def new_row(new: NewJob, now: datetime) -> dict[str, Any]:
    """Every column of a new queued job's row."""
    return {
        "id": new.job_id or new_id(),
        "kind": new.kind,
        "status": JobStatus.QUEUED.value,
        "progress": 0.0,
        "request": dict(new.request),
        "result": None,
        "error": None,
        "attempts": 0,
        "crashes": 0,
        "owner": new.owner,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
        "task_name": new.task_name,
        "queue": new.queue,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
        "schedule_id": new.schedule_id,
        "scheduled_for": new.scheduled_for,
    }


class JobStore(Outbox):
    """Jobs in a SQL database (SQLite or PostgreSQL). Thread-safe; every method is one short transaction."""

    def __init__(self, engine: Engine, writer: GroupWriter | None = None) -> None:
        self.engine = engine
        #: Every write of this store goes through it (one per process and database).
        self.writer = writer or GroupWriter(engine)

    _job = staticmethod(job_from_row)

    def write(self, unit: Unit[T]) -> T:
        """Run ``unit`` in the writer's next transaction; its value once committed."""
        return self.writer.run(unit)

    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def create(self, new: NewJob) -> tuple[Job, bool]:
        """Record a queued job. Returns ``(job, created)``.

        With an idempotency key already used by the same owner, returns the original job and ``False``
        (the caller compares ``request_hash`` to refuse a different body under the same key).
        """
        return self.create_many([new])[0]

    def create_many(self, news: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        """Record queued jobs, all in one transaction when none reuses an idempotency key; returns
        ``(job, created)`` for each, in order (see :meth:`create`)."""
        now = utcnow()
        rows = [new_row(new, now) for new in news]
        try:
            self.write(lambda connection: connection.execute(_INSERT, rows))
        except sa.exc.IntegrityError:
            # Nothing was written. If every key was used before, this is a replay: the original jobs.
            existing = [None if new.idempotency_key is None else self.find_by_idempotency_key(new.idempotency_key)
                        for new in news]  # fmt: skip
            if all(job is not None for job in existing):
                return [(job, False) for job in existing if job is not None]
            if any(job is not None for job in existing):
                raise IdempotencyConflict("some of these idempotency keys were used before, others not") from None
            raise
        return [(self._job(row), True) for row in rows]

    def find_by_idempotency_key(self, key: str) -> Job | None:
        with self.engine.connect() as connection:
            row = connection.execute(db.jobs.select().where(db.jobs.c.idempotency_key == key)).first()
        return None if row is None else self._job(row)

    def request_hash(self, job_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(db.jobs.c.request_hash).where(db.jobs.c.id == job_id)
            ).scalar_one_or_none()

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or ``None`` when unknown (or, with ``owner``, someone else's)."""
        row = find(self.engine, db.jobs, job_id, owner)
        return None if row is None else self._job(row)

    def page(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        owner: str | None = None,
        schedule_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (``None`` on the last)."""
        filters = []
        if schedule_id is not None:
            filters.append(db.jobs.c.schedule_id == schedule_id)
        if status is not None:
            filters.append(db.jobs.c.status == status.value)
        if kind is not None:
            filters.append(db.jobs.c.kind == kind)
        if owner is not None:
            filters.append(db.jobs.c.owner == owner)
        rows, next_cursor = keyset_page(self.engine, db.jobs, filters, limit, cursor)
        return [self._job(row) for row in rows], next_cursor

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        allowed_from: Iterable[JobStatus],
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        attempt: int | None = None,
    ) -> Job | None:
        """Move the job to ``to`` if its status is one of ``allowed_from`` (and, with ``attempt``, only if no later
        run has claimed it since: a run that was taken for dead cannot overwrite its successor's outcome).

        Returns the updated job, or ``None`` when the job is unknown or in another state. The check and the
        write are one statement, so two processes racing on the same job cannot both win. (A run's own outcomes
        have prebuilt statements in :mod:`conveyor.store.writes`.) The row waits to be announced until
        :meth:`mark_announced` says its event was published.
        """
        now = utcnow()
        values: dict[str, Any] = {"status": to.value, "updated_at": now, "unannounced_since": now}
        if to in FINISHED:
            values["finished_at"] = now
        if to is JobStatus.SUCCEEDED:
            values["progress"] = 100.0
        if result is not None:
            values["result"] = dict(result)
        if error is not None:
            values["error"] = error
        condition: sa.ColumnElement[bool] = db.jobs.c.status.in_([s.value for s in allowed_from])
        if attempt is not None:
            condition = sa.and_(condition, db.jobs.c.attempts == attempt)
        return self._update(job_id, condition, values)

    def claim(self, job_id: str, *, stale_before: datetime, due_before: datetime | None = None) -> Job | None:
        """:func:`conveyor.store.writes.claim` in a transaction of the writer."""
        return self.write(lambda c: writes.claim(c, job_id, stale_before=stale_before, due_before=due_before))

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Note that the run holding attempt ``attempt`` of the job is alive. ``False`` when the job is no longer
        that run's (finished, cancelled, or taken over)."""
        return self.write(lambda c: writes.heartbeat(c, [(job_id, attempt)]))[0]

    def schedule_retry(self, job_id: str, *, attempt: int, error: str, delay: float, held: bool) -> Job | None:
        """:func:`conveyor.store.writes.retry` in a transaction of the writer."""
        return self.write(lambda c: writes.retry(c, job_id, attempt=attempt, error=error, delay=delay, held=held))

    def requeue(self, job_id: str) -> Job | None:
        """Put a failed job back in the queue for a fresh run, if it is failed: error, result, progress and the
        attempt count start again, and its task counts as not yet sent. ``None`` when unknown or not failed."""
        values: dict[str, Any] = {
            "status": JobStatus.QUEUED.value,
            "error": None,
            "result": None,
            "progress": 0.0,
            "attempts": 0,
            "crashes": 0,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "next_attempt_at": None,
            "dispatched_at": None,
            "updated_at": utcnow(),
        }
        return self._update(job_id, db.jobs.c.status == JobStatus.FAILED.value, values)

    def _update(self, job_id: str, condition: sa.ColumnElement[bool], values: dict[str, Any]) -> Job | None:
        """Update the job if ``condition`` holds; the job as written, or ``None``."""
        statement = db.jobs.update().where(db.jobs.c.id == job_id, condition).values(**values).returning(*db.jobs.c)

        def unit(connection: sa.Connection) -> Job | None:
            row = connection.execute(statement).first()
            return None if row is None else job_from_row(row)

        return self.write(unit)

    def mark_announced(self, notes: Sequence[tuple[str, datetime]]) -> None:
        """:func:`conveyor.store.writes.announced` in a transaction of the writer."""
        self.write(lambda c: writes.announced(c, notes))

    def set_progress(self, job_id: str, progress: float) -> bool:
        """Record progress of a started job; ``False`` if the job is no longer running."""
        return self.write(lambda c: writes.progress(c, job_id, progress))


_INSERT = db.jobs.insert()
