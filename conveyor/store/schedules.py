"""Users' schedules in the job store, and firing them: each due time of a schedule makes exactly one job.

A firing is one transaction: it moves the schedule's ``next_due_at`` on only if it still holds the due time the
firing read, and records the job in the same transaction. Two beats (or two housekeeping workers) that both find
a schedule due therefore make one job between them: the second's update matches no row and it records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.cadence import Cadence
from conveyor.ids import new_id
from conveyor.names import KIND_NOTIFICATION, TASK_FOR_KIND
from conveyor.schemas import Schedule
from conveyor.store import db
from conveyor.store.jobstore import NewJob, find, keyset_page, new_row
from conveyor.store.outbox import Dispatch
from conveyor.store.rows import aware, job_from_row, utcnow
from conveyor.store.writer import GroupWriter, T, Unit

#: Most due schedules one firing round takes (the next round, a second later, takes the rest).
FIRE_BATCH = 200


class ScheduleLimit(Exception):
    """The owner has as many schedules as one owner may have."""


class NameTaken(Exception):
    """The owner has a schedule of this name already: ``existing``."""

    def __init__(self, existing: Schedule) -> None:
        super().__init__(f"a schedule named {existing.name!r} exists: {existing.schedule_id}")
        self.existing = existing


@dataclass(frozen=True)
class NewSchedule:
    owner: str
    name: str
    cadence: Cadence
    request: Mapping[str, Any]
    paused: bool = False


@dataclass(frozen=True)
class Changes:
    """What a ``PATCH`` changes (``None``: unchanged). A new cadence, or resuming, starts the due times afresh."""

    name: str | None = None
    cadence: Cadence | None = None
    request: Mapping[str, Any] | None = None
    paused: bool | None = None


@dataclass(frozen=True)
class Due:
    """A schedule found due: enough to fire it."""

    schedule_id: str
    owner: str
    cadence: Cadence
    request: Mapping[str, Any]
    due: datetime


def cadence_of(row: Mapping[str, Any] | sa.RowMapping) -> Cadence:
    return Cadence(cron=row["cron"], every_seconds=row["every_seconds"], timezone=row["timezone"])


def schedule_from_row(row: sa.Row[Any] | Mapping[str, Any]) -> Schedule:
    m = row if isinstance(row, Mapping) else row._mapping
    return Schedule(
        schedule_id=m["id"],
        name=m["name"],
        cron=m["cron"],
        every_seconds=m["every_seconds"],
        timezone=m["timezone"],
        notification=m["request"],
        paused=m["paused"],
        next_due_at=None if m["paused"] else aware(m["next_due_at"]),
        last_fired_at=aware(m["last_fired_at"]),
        last_job_id=m["last_job_id"],
        fired=m["fired"],
        created_at=aware(m["created_at"]),
        updated_at=aware(m["updated_at"]),
        links={"self": f"/schedules/{m['id']}", "jobs": f"/jobs?schedule_id={m['id']}"},
    )


_T = db.schedules
_BY_NAME = _T.select().where(_T.c.owner == sa.bindparam("p_owner"), _T.c.name == sa.bindparam("p_name"))
_COUNT = sa.select(sa.func.count()).select_from(_T).where(_T.c.owner == sa.bindparam("p_owner"))
_BY_ID = _T.select().where(_T.c.id == sa.bindparam("p_id"), _T.c.owner == sa.bindparam("p_owner"))
_ADVANCE = (
    _T.update()
    .where(_T.c.id == sa.bindparam("p_id"), _T.c.next_due_at == sa.bindparam("p_due"), _T.c.paused.is_(False))
    .values(
        next_due_at=sa.bindparam("p_next"),
        last_fired_at=sa.bindparam("p_now"),
        last_job_id=sa.bindparam("p_job"),
        fired=_T.c.fired + 1,
    )
)


class ScheduleStore:
    """Schedules in a SQL database (the job store's). Thread-safe; writes go through the process's group writer."""

    def __init__(self, engine: Engine, writer: GroupWriter) -> None:
        self.engine = engine
        self.writer = writer

    def create(self, new: NewSchedule, *, limit: int) -> Schedule:
        """Record a schedule. Raises :class:`ScheduleLimit` when the owner has ``limit`` schedules already, and
        :class:`NameTaken` when one of them has this name."""
        now = utcnow()
        row = {
            "id": new_id(),
            "owner": new.owner,
            "name": new.name,
            "cron": new.cadence.cron,
            "timezone": new.cadence.timezone,
            "every_seconds": new.cadence.every_seconds,
            "request": dict(new.request),
            "paused": new.paused,
            "next_due_at": new.cadence.first_due(now),
            "last_fired_at": None,
            "last_job_id": None,
            "fired": 0,
            "created_at": now,
            "updated_at": now,
        }

        def unit(connection: sa.Connection) -> Schedule:
            self._check_name(connection, new.owner, new.name)
            if connection.execute(_COUNT, {"p_owner": new.owner}).scalar_one() >= limit:
                raise ScheduleLimit(f"at most {limit} schedules per owner")
            connection.execute(_T.insert(), row)
            return schedule_from_row(row)

        return self._write(unit, new.owner, new.name)

    def get(self, schedule_id: str, owner: str) -> Schedule | None:
        """The schedule, or ``None`` when unknown or someone else's."""
        row = find(self.engine, _T, schedule_id, owner)
        return None if row is None else schedule_from_row(row)

    def page(self, owner: str, *, limit: int = 50, cursor: str | None = None) -> tuple[list[Schedule], str | None]:
        """A page of the owner's schedules, newest first, and the next page's cursor."""
        rows, next_cursor = keyset_page(self.engine, _T, [_T.c.owner == owner], limit, cursor)
        return [schedule_from_row(row) for row in rows], next_cursor

    def update(self, schedule_id: str, owner: str, changes: Changes) -> Schedule | None:
        """Apply ``changes``; the schedule as changed, or ``None`` when unknown. Raises :class:`NameTaken`."""

        def unit(connection: sa.Connection) -> Schedule | None:
            row = connection.execute(_BY_ID.with_for_update(), {"p_id": schedule_id, "p_owner": owner}).first()
            if row is None:
                return None
            current = row._mapping
            values: dict[str, Any] = {"updated_at": utcnow()}
            if changes.name is not None and changes.name != current["name"]:
                self._check_name(connection, owner, changes.name)
                values["name"] = changes.name
            if changes.request is not None:
                values["request"] = dict(changes.request)
            cadence = cadence_of(current)
            restart = False
            if changes.cadence is not None and changes.cadence != cadence:
                cadence = changes.cadence
                values.update(cron=cadence.cron, every_seconds=cadence.every_seconds, timezone=cadence.timezone)
                restart = True
            if changes.paused is not None and changes.paused != current["paused"]:
                values["paused"] = changes.paused
                restart = restart or not changes.paused
            if restart:
                values["next_due_at"] = cadence.first_due(values["updated_at"])
            updated = connection.execute(
                _T.update().where(_T.c.id == schedule_id).values(**values).returning(*_T.c)
            ).first()
            return None if updated is None else schedule_from_row(updated)

        return self._write(unit, owner, changes.name)

    def delete(self, schedule_id: str, owner: str) -> bool:
        """Remove the schedule (its jobs stay); ``False`` when unknown."""
        statement = _T.delete().where(_T.c.id == schedule_id, _T.c.owner == owner).returning(_T.c.id)
        return self.writer.run(lambda connection: connection.execute(statement).first() is not None)

    def due(self, now: datetime, limit: int = FIRE_BATCH) -> list[Due]:
        """Schedules not paused whose due time has come, the longest due first."""
        query = (
            _T.select().where(_T.c.paused.is_(False), _T.c.next_due_at <= now).order_by(_T.c.next_due_at).limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            Due(m["id"], m["owner"], cadence_of(m), m["request"], aware(m["next_due_at"]))
            for m in (row._mapping for row in rows)
        ]

    def fire(self, dues: Sequence[Due], now: datetime) -> list[Dispatch]:
        """Fire each due schedule that no one else fired for this due time, in one transaction: its job recorded
        (queued, not yet sent) and its next due time set. Returns the jobs to send."""
        task_name, queue = TASK_FOR_KIND[KIND_NOTIFICATION]

        def unit(connection: sa.Connection) -> list[Dispatch]:
            fired = []
            for due in dues:
                job_id = new_id()
                values = {
                    "p_id": due.schedule_id,
                    "p_due": due.due,
                    "p_next": due.cadence.next_due(due.due, now),
                    "p_now": now,
                    "p_job": job_id,
                }
                if connection.execute(_ADVANCE, values).rowcount != 1:
                    continue  # fired by someone else, paused, changed or deleted since it was read
                new = NewJob(
                    kind=KIND_NOTIFICATION,
                    request=due.request,
                    task_name=task_name,
                    queue=queue,
                    owner=due.owner,
                    job_id=job_id,
                    schedule_id=due.schedule_id,
                    scheduled_for=due.due,
                )
                row = new_row(new, now)
                connection.execute(db.jobs.insert(), row)
                fired.append(Dispatch(job_from_row(row), task_name, queue))
            return fired

        return self.writer.run(unit)

    @staticmethod
    def _check_name(connection: sa.Connection, owner: str, name: str) -> None:
        row = connection.execute(_BY_NAME, {"p_owner": owner, "p_name": name}).first()
        if row is not None:
            raise NameTaken(schedule_from_row(row))

    def _write(self, unit: Unit[T], owner: str, name: str | None) -> T:
        """Run ``unit``; a unique-name race lost to another process is :class:`NameTaken` too."""
        try:
            return self.writer.run(unit)
        except sa.exc.IntegrityError:
            if name is None:
                raise
            with self.engine.connect() as connection:
                self._check_name(connection, owner, name)
            raise
