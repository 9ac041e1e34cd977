"""Reading rows back: UTC-aware datetimes, and a ``jobs`` row as the wire model without validating it again."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa

from conveyor.schemas import Job, JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from the database, as UTC-aware (SQLite returns naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


#: The ``jobs`` columns :func:`job_from_row` reads (a statement that returns a job need return no other).
JOB_COLUMNS = (
    "id", "kind", "status", "progress", "request", "result", "error", "attempts", "crashes", "owner",
    "created_at", "started_at", "finished_at", "updated_at", "schedule_id", "scheduled_for",
)  # fmt: skip


def job_from_row(row: sa.Row[Any] | Mapping[str, Any]) -> Job:
    """A ``jobs`` row (or the mapping of its values) as the wire model. The row was valid when written, so it is
    not validated again (this runs for every job the workers and the api read or write)."""
    m = row if isinstance(row, Mapping) else row._mapping
    return Job.model_construct(
        job_id=m["id"],
        kind=m["kind"],
        status=JobStatus(m["status"]),
        progress=m["progress"],
        request=m["request"],
        result=m["result"],
        error=m["error"],
        attempts=m["attempts"],
        crashes=m["crashes"],
        owner=m["owner"],
        created_at=aware(m["created_at"]),
        started_at=aware(m["started_at"]),
        finished_at=aware(m["finished_at"]),
        updated_at=aware(m["updated_at"]),
        schedule_id=m["schedule_id"],
        scheduled_for=aware(m["scheduled_for"]),
    )
