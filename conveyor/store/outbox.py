"""The job store's outbox side: which jobs' tasks must be sent (or sent again), and noting that they were; which
jobs' latest change must still be announced.

The job row is its own outbox (``conveyor/dispatch.py``). These queries find what the dispatcher and beat's
``reap_stale`` send: jobs never confirmed sent, retries that are due, messages that vanished, runs that died; and
jobs whose outcome was recorded but whose event was never confirmed published (``unannounced_since``).
:class:`conveyor.store.jobstore.JobStore` has them all; they live here to keep each module to one concern.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.schemas import Job, JobStatus
from conveyor.store import db
from conveyor.store.rows import aware, job_from_row, utcnow

__all__ = ["Dispatch", "Outbox"]


@dataclass(frozen=True)
class Dispatch:
    """A job whose task must be sent: what the dispatcher needs to send it."""

    job: Job
    task_name: str
    queue: str


class Outbox:
    """Outbox queries over the ``jobs`` table (mixed into ``JobStore``)."""

    engine: Engine

    def _dispatches(self, query: sa.Select[Any]) -> list[Dispatch]:
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [Dispatch(job_from_row(row), row._mapping["task_name"], row._mapping["queue"]) for row in rows]

    def mark_dispatched(self, sent: Iterable[tuple[str, str | None]]) -> None:
        """Note that these jobs' tasks were handed to the broker, each ``(job_id, queued_event_id)`` (the event
        that announced it, if one did), in one transaction."""
        now = utcnow()
        with_event = [{"job": job_id, "event": event_id} for job_id, event_id in sent if event_id is not None]
        without = [{"job": job_id} for job_id, event_id in sent if event_id is None]
        update = db.jobs.update().where(db.jobs.c.id == sa.bindparam("job"))
        with db.writing(self.engine) as connection:
            if with_event:
                connection.execute(update.values(dispatched_at=now, queued_event_id=sa.bindparam("event")), with_event)
            if without:
                connection.execute(update.values(dispatched_at=now), without)

    def queued_event_id(self, job_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(db.jobs.c.queued_event_id).where(db.jobs.c.id == job_id)
            ).scalar_one_or_none()

    def undispatched(self, older_than: timedelta, limit: int = 500) -> list[Dispatch]:
        """Queued jobs whose task was never confirmed sent, oldest first."""
        cutoff = utcnow() - older_than
        query = (
            db.jobs.select()
            .where(db.jobs.c.dispatched_at.is_(None), db.jobs.c.created_at < cutoff)
            .where(db.jobs.c.status == JobStatus.QUEUED.value)
            .order_by(db.jobs.c.created_at)
            .limit(limit)
        )
        return self._dispatches(query)

    def retries_due(self, abandoned_after: timedelta, limit: int = 500) -> list[Dispatch]:
        """Retrying jobs whose next attempt is due and whose task nobody will send, oldest first.

        That is: the run that scheduled the retry left it to the dispatcher (``dispatched_at`` unset), or said it
        would make the attempt itself (``dispatched_at`` before ``next_attempt_at``) but has not claimed it
        ``abandoned_after`` past its time, so it died. (The dispatcher marks what it sent after the due time.)
        """
        now = utcnow()
        c = db.jobs.c
        query = (
            db.jobs.select()
            .where(c.status == JobStatus.RETRYING.value, c.next_attempt_at <= now)
            .where(
                sa.or_(
                    c.dispatched_at.is_(None),
                    sa.and_(c.dispatched_at <= c.next_attempt_at, c.next_attempt_at < now - abandoned_after),
                )
            )
            .order_by(c.next_attempt_at)
            .limit(limit)
        )
        return self._dispatches(query)

    def unclaimed(self, older_than: timedelta, limit: int = 500) -> list[Dispatch]:
        """Jobs whose task was sent more than ``older_than`` ago and that no delivery has claimed since: queued
        jobs, and retrying jobs the dispatcher sent. Their message is waiting in a queue, or it was lost (a worker
        or Redis died between taking it and recording it); the caller tells which. Oldest send first."""
        cutoff = utcnow() - older_than
        c = db.jobs.c
        query = (
            db.jobs.select()
            .where(c.dispatched_at < cutoff)
            .where(
                sa.or_(
                    c.status == JobStatus.QUEUED.value,
                    sa.and_(c.status == JobStatus.RETRYING.value, c.dispatched_at > c.next_attempt_at),
                )
            )
            .order_by(c.dispatched_at)
            .limit(limit)
        )
        return self._dispatches(query)

    def stale_started(self, older_than: timedelta, limit: int = 500) -> list[Dispatch]:
        """Started jobs whose run's heartbeat is older than ``older_than`` (the run is dead) and whose task was not
        sent again within that time either, oldest heartbeat first."""
        cutoff = utcnow() - older_than
        c = db.jobs.c
        beat = sa.func.coalesce(c.heartbeat_at, c.updated_at)
        query = (
            db.jobs.select()
            .where(c.status == JobStatus.STARTED.value, beat < cutoff)
            .where(sa.or_(c.dispatched_at.is_(None), c.dispatched_at < cutoff))
            .order_by(beat)
            .limit(limit)
        )
        return self._dispatches(query)

    def unannounced(self, older_than: timedelta, limit: int = 500) -> list[tuple[Job, datetime]]:
        """Jobs whose latest recorded change (an outcome, a cancellation) has waited more than ``older_than`` to be
        noted as announced, each with the time it was marked (to pass back to ``mark_announced``), oldest first."""
        c = db.jobs.c
        query = (
            db.jobs.select()
            .where(c.unannounced_since < utcnow() - older_than)
            .order_by(c.unannounced_since)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [(job_from_row(row), aware(row._mapping["unannounced_since"])) for row in rows]
