"""Side effects, recorded once per job: the notification log, stored uploads, and the effect ledger.

Each record is keyed by job id, so a task that runs twice finds its first run's record instead of
repeating the effect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.jobstore import find, keyset_page
from conveyor.store.prepared import Prepared
from conveyor.store.rows import aware as _aware
from conveyor.store.rows import utcnow
from conveyor.store.writer import GroupWriter

#: More writes to make in a ledger write's transaction (the delivery attempt that had the effect).
Also = Callable[[sa.Connection], None]
_insert_ignore_cache: dict[tuple[str, str], sa.Insert] = {}


def insert_ignore(connection: sa.Connection, table: sa.Table) -> sa.Insert:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING <key>`` into ``table`` for ``connection``'s database, built once:
    a row whose key exists already is skipped without an error (so the statement can share a transaction with
    others), and returns no row."""
    key = (connection.dialect.name, table.name)
    statement = _insert_ignore_cache.get(key)
    if statement is None:
        if key[0] == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            statement = pg_insert(table).on_conflict_do_nothing()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = sqlite_insert(table).on_conflict_do_nothing()
        # RETURNING tells whether the row went in (PostgreSQL's driver reports no row count for it).
        statement = statement.returning(*table.primary_key.columns)
        _insert_ignore_cache[key] = statement
    return statement


_EFFECT = sa.select(db.effects.c.detail).where(
    db.effects.c.job_id == sa.bindparam("p_job"), db.effects.c.effect == sa.bindparam("p_effect")
)
_LOG = db.notification_log.select().where(db.notification_log.c.job_id == sa.bindparam("p_job"))
_UPLOAD = db.uploads.select().where(db.uploads.c.id == sa.bindparam("p_job"))


def _first_time(connection: sa.Connection, job_id: str, effect: str, detail: Mapping[str, Any]) -> bool:
    """Record the effect if it was not; ``True`` when this call recorded it."""
    row = {"job_id": job_id, "effect": effect, "detail": dict(detail), "created_at": utcnow()}
    return connection.execute(insert_ignore(connection, db.effects), row).first() is not None


def record_effect(connection: sa.Connection, job_id: str, effect: str, detail: Mapping[str, Any]) -> dict[str, Any]:
    """Record, in ``connection``'s transaction, that the job's ``effect`` happened, once; returns the detail that
    stands (the first record's)."""
    if _first_time(connection, job_id, effect, detail):
        return dict(detail)
    first = connection.execute(_EFFECT, {"p_job": job_id, "p_effect": effect}).scalar_one()
    return dict(first or {})


def log_notification(
    connection: sa.Connection,
    job_id: str,
    *,
    level: str,
    message: str,
    data: Mapping[str, Any] | None,
    owner: str | None,
) -> dict[str, Any]:
    """Write the message to the notification log once, in ``connection``'s transaction. Returns what was logged
    (the first run's record)."""
    now = utcnow()
    if _first_time(connection, job_id, "notification.log", {"logged": True}):
        row = {"job_id": job_id, "level": level, "message": message, "owner": owner, "created_at": now}
        connection.execute(_LOG_INSERT, {**row, "data": None if data is None else dict(data)})
    else:
        first = connection.execute(_LOG, {"p_job": job_id}).one()
        level, now = first.level, _aware(first.created_at)
    return {"channel": "log", "level": level, "logged_at": now.isoformat()}


@dataclass(frozen=True)
class LogEntry:
    """One job's ``log`` notification, for :func:`log_notifications`."""

    job_id: str
    level: str
    message: str
    data: Mapping[str, Any] | None
    owner: str | None


_LOGGED = sa.select(db.effects.c.job_id).where(
    db.effects.c.job_id.in_(sa.bindparam("p_jobs", expanding=True)), db.effects.c.effect == "notification.log"
)
_LOGGED_ONE = Prepared(
    sa.select(db.effects.c.job_id).where(
        db.effects.c.job_id == sa.bindparam("p_job", type_=sa.String), db.effects.c.effect == "notification.log"
    )
)
_LOGS = db.notification_log.select().where(db.notification_log.c.job_id.in_(sa.bindparam("p_jobs", expanding=True)))
_EFFECT_INSERT = db.effects.insert()


def log_notifications(connection: sa.Connection, entries: Sequence[LogEntry]) -> list[dict[str, Any]]:
    """:func:`log_notification` for several jobs in one statement per table, in ``connection``'s transaction:
    each message written once (a job logged before keeps its first record). Returns what was logged, in order."""
    if not entries:
        return []
    now = utcnow()
    ids = [entry.job_id for entry in entries]
    if len(ids) == 1:  # compiled once, without an IN list to render
        logged = {row["job_id"] for row in _LOGGED_ONE.fetch(connection, {"p_job": ids[0]})}
    else:
        logged = set(connection.execute(_LOGGED, {"p_jobs": ids}).scalars())
    fresh = [entry for entry in entries if entry.job_id not in logged]
    if fresh:
        effect = {"effect": "notification.log", "detail": {"logged": True}, "created_at": now}
        _EFFECTS_MANY.execute(connection, [{"job_id": entry.job_id, **effect} for entry in fresh])
        _LOGS_MANY.execute(connection, [
            {"job_id": entry.job_id, "level": entry.level, "message": entry.message, "owner": entry.owner,
             "created_at": now, "data": None if entry.data is None else dict(entry.data)}
            for entry in fresh
        ])  # fmt: skip
    first = {row.job_id: row for row in connection.execute(_LOGS, {"p_jobs": sorted(logged)})} if logged else {}
    results = []
    for entry in entries:
        row = first.get(entry.job_id)
        level, at = (entry.level, now) if row is None else (row.level, _aware(row.created_at))
        results.append({"channel": "log", "level": level, "logged_at": at.isoformat()})
    return results


_LOG_INSERT = db.notification_log.insert()
_UPLOAD_INSERT = db.uploads.insert()
_EFFECTS_MANY = Prepared(_EFFECT_INSERT, ("job_id", "effect", "detail", "created_at"))
_LOGS_MANY = Prepared(_LOG_INSERT, ("job_id", "level", "message", "owner", "created_at", "data"))


def record_upload(
    connection: sa.Connection,
    job_id: str,
    *,
    owner: str | None,
    filename: str | None,
    size: int,
    sha256: str,
    content_type: str | None,
    storage_key: str,
) -> dict[str, Any]:
    """Record a stored upload once (its id is the job's), in ``connection``'s transaction. Returns its metadata."""
    if _first_time(connection, job_id, "upload.stored", {"storage_key": storage_key}):
        row: dict[str, Any] = {"id": job_id, "owner": owner, "filename": filename, "size": size, "sha256": sha256}
        row |= {"content_type": content_type, "storage_key": storage_key, "created_at": utcnow()}
        connection.execute(_UPLOAD_INSERT, row)
        return upload_json(row)
    return upload_json(connection.execute(_UPLOAD, {"p_job": job_id}).one()._mapping)


def upload_json(m: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored upload's metadata, as the api shows it."""
    created: datetime | None = _aware(m["created_at"])
    return {
        "upload_id": m["id"],
        "filename": m["filename"],
        "size": m["size"],
        "sha256": m["sha256"],
        "content_type": m["content_type"],
        "storage_key": m["storage_key"],
        "created_at": created.isoformat() if created else None,
    }


class Ledger:
    """What workers did, in the job store's database. Writes go through the process's group writer."""

    def __init__(self, engine: Engine, writer: GroupWriter | None = None) -> None:
        self.engine = engine
        self.writer = writer or GroupWriter(engine)

    def effect(self, job_id: str, effect: str) -> dict[str, Any] | None:
        """The detail recorded for an effect of this job, or ``None`` if it has not happened."""
        with self.engine.connect() as connection:
            row = connection.execute(_EFFECT, {"p_job": job_id, "p_effect": effect}).first()
        return None if row is None else dict(row.detail or {})

    def record_effect(
        self, job_id: str, effect: str, detail: Mapping[str, Any], *, also: Also | None = None
    ) -> dict[str, Any]:
        """Record that the effect happened, once, with ``also``'s writes in the same transaction. Returns the detail
        that stands: the first record's."""

        def unit(connection: sa.Connection) -> dict[str, Any]:
            if also is not None:
                also(connection)
            return record_effect(connection, job_id, effect, detail)

        return self.writer.run(unit)

    def log_notification(
        self,
        job_id: str,
        *,
        level: str,
        message: str,
        data: Mapping[str, Any] | None,
        owner: str | None,
        also: Also | None = None,
    ) -> dict[str, Any]:
        """Write the message to the notification log once, with ``also``'s writes in the same transaction.
        Returns what was logged (the first run's record)."""

        def unit(connection: sa.Connection) -> dict[str, Any]:
            if also is not None:
                also(connection)
            return log_notification(connection, job_id, level=level, message=message, data=data, owner=owner)

        return self.writer.run(unit)

    def record_upload(self, job_id: str, **upload: Any) -> dict[str, Any]:
        """Record a stored upload once (see :func:`record_upload`). Returns the upload's metadata."""
        return self.writer.run(lambda connection: record_upload(connection, job_id, **upload))

    def uploads(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of stored uploads, newest first, and the cursor of the next page (``None`` on the last)."""
        filters = [] if owner is None else [db.uploads.c.owner == owner]
        rows, next_cursor = keyset_page(self.engine, db.uploads, filters, limit, cursor)
        return [upload_json(row._mapping) for row in rows], next_cursor

    def upload(self, upload_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """A stored upload, or ``None`` when unknown (or, with ``owner``, someone else's)."""
        row = find(self.engine, db.uploads, upload_id, owner)
        return None if row is None else upload_json(row._mapping)

    def notification(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(db.notification_log.select().where(db.notification_log.c.job_id == job_id)).first()
        return None if row is None else {k: v for k, v in row._mapping.items() if k != "created_at"}
