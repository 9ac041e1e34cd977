"""Side effects, recorded once per job: the notification log, stored uploads, and the effect ledger.

Each record is keyed by job id, so a task that runs twice finds its first run's record instead of
repeating the effect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.jobstore import _aware, find, keyset_page, utcnow

#: More writes to make in a ledger write's transaction (the delivery attempt that had the effect).
Also = Callable[[sa.Connection], None]


class Ledger:
    """What workers did, in the job store's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def effect(self, job_id: str, effect: str) -> dict[str, Any] | None:
        """The detail recorded for an effect of this job, or ``None`` if it has not happened."""
        query = sa.select(db.effects.c.detail).where(db.effects.c.job_id == job_id, db.effects.c.effect == effect)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else dict(row.detail or {})

    def _record_effect(self, connection: sa.Connection, job_id: str, effect: str, detail: Mapping[str, Any]) -> bool:
        try:
            with connection.begin_nested():
                connection.execute(
                    db.effects.insert().values(job_id=job_id, effect=effect, detail=dict(detail), created_at=utcnow())
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def record_effect(
        self, job_id: str, effect: str, detail: Mapping[str, Any], *, also: Also | None = None
    ) -> dict[str, Any]:
        """Record that the effect happened, once, with ``also``'s writes in the same transaction. Returns the detail
        that stands: the first record's."""
        with db.writing(self.engine) as connection:
            recorded = self._record_effect(connection, job_id, effect, detail)
            if also is not None:
                also(connection)
            if recorded:
                return dict(detail)
        first = self.effect(job_id, effect)
        assert first is not None
        return first

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
        detail = {"logged": True}
        with db.writing(self.engine) as connection:
            if also is not None:
                also(connection)
            if self._record_effect(connection, job_id, "notification.log", detail):
                connection.execute(
                    db.notification_log.insert().values(
                        job_id=job_id,
                        level=level,
                        message=message,
                        data=None if data is None else dict(data),
                        owner=owner,
                        created_at=utcnow(),
                    )
                )
            row = connection.execute(db.notification_log.select().where(db.notification_log.c.job_id == job_id)).one()
        return {"channel": "log", "level": row.level, "logged_at": _aware(row.created_at).isoformat()}

    def record_upload(
        self,
        job_id: str,
        *,
        owner: str | None,
        filename: str | None,
        size: int,
        sha256: str,
        content_type: str | None,
        storage_key: str,
    ) -> dict[str, Any]:
        """Record a stored upload once (its id is the job's). Returns the upload's metadata."""
        with db.writing(self.engine) as connection:
            if self._record_effect(connection, job_id, "upload.stored", {"storage_key": storage_key}):
                connection.execute(
                    db.uploads.insert().values(
                        id=job_id,
                        owner=owner,
                        filename=filename,
                        size=size,
                        sha256=sha256,
                        content_type=content_type,
                        storage_key=storage_key,
                        created_at=utcnow(),
                    )
                )
            row = connection.execute(db.uploads.select().where(db.uploads.c.id == job_id)).one()
        return self._upload(row)

    def uploads(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of stored uploads, newest first, and the cursor of the next page (``None`` on the last)."""
        filters = [] if owner is None else [db.uploads.c.owner == owner]
        rows, next_cursor = keyset_page(self.engine, db.uploads, filters, limit, cursor)
        return [self._upload(row) for row in rows], next_cursor

    def upload(self, upload_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """A stored upload, or ``None`` when unknown (or, with ``owner``, someone else's)."""
        row = find(self.engine, db.uploads, upload_id, owner)
        return None if row is None else self._upload(row)

    @staticmethod
    def _upload(row: sa.Row[Any]) -> dict[str, Any]:
        m = row._mapping
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

    def notification(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(db.notification_log.select().where(db.notification_log.c.job_id == job_id)).first()
        return None if row is None else {k: v for k, v in row._mapping.items() if k != "created_at"}
