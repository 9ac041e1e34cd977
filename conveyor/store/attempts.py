"""The delivery-attempt log: every try to deliver a notification, with what the peer answered.

Workers append one row per attempt; ``GET /jobs/{job_id}/attempts`` reads them back in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.prepared import Prepared
from conveyor.store.rows import aware as _aware
from conveyor.store.rows import utcnow

#: Longest reply or error text kept per attempt.
MAX_TEXT = 1000


class Outcome(StrEnum):
    DELIVERED = "delivered"
    #: Failed in a way another attempt may fix (timeout, 5xx, 429, SMTP 4xx).
    TRANSIENT = "transient"
    #: Failed in a way another attempt would not fix (4xx, SMTP 5xx, a refused address).
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Attempt:
    """One recorded delivery attempt."""

    job_id: str
    attempt: int
    channel: str
    outcome: Outcome
    status_code: int | None
    reply: str | None
    error: str | None
    duration_ms: int | None
    at: datetime

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Attempt:
        """The attempt a ``delivery_attempts`` row records."""
        fields = {name: row[name] for name in _COLUMNS}
        return cls(**fields, outcome=Outcome(row["outcome"]), at=_aware(row["created_at"]))

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "channel": self.channel,
            "outcome": self.outcome.value,
            "status_code": self.status_code,
            "reply": self.reply,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


_COLUMNS = ("job_id", "attempt", "channel", "status_code", "reply", "error", "duration_ms")


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MAX_TEXT]


_INSERT = db.delivery_attempts.insert()
_INSERT_MANY = Prepared(_INSERT, (*_COLUMNS, "outcome", "created_at"))


def record(
    connection: sa.Connection,
    job_id: str,
    *,
    attempt: int,
    channel: str,
    outcome: Outcome,
    status_code: int | None = None,
    reply: str | None = None,
    error: str | None = None,
    duration_ms: int | None = None,
) -> None:
    """Append one attempt in ``connection``'s transaction (texts clipped to ``MAX_TEXT`` characters), so that it is
    written with what the attempt did, or not at all."""
    row = {"job_id": job_id, "attempt": attempt, "channel": channel, "outcome": outcome.value}
    row |= {"status_code": status_code, "reply": _clip(reply), "error": _clip(error), "duration_ms": duration_ms}
    connection.execute(_INSERT, {**row, "created_at": utcnow()})


def record_delivered(connection: sa.Connection, runs: Sequence[tuple[str, int]], channel: str) -> None:
    """Append a ``delivered`` attempt for each ``(job_id, attempt)`` of ``runs``, with one statement, in
    ``connection``'s transaction (:func:`record` for a bundle of runs that delivered without a peer's reply)."""
    if not runs:
        return
    at = utcnow()
    common = {"channel": channel, "outcome": Outcome.DELIVERED.value, "created_at": at}
    common |= {"status_code": None, "reply": None, "error": None, "duration_ms": None}
    _INSERT_MANY.execute(connection, [{"job_id": job_id, "attempt": attempt, **common} for job_id, attempt in runs])


class AttemptLog:
    """Delivery attempts in the job store's database. Rows are only ever added."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def of(self, job_id: str, limit: int = 1000) -> list[Attempt]:
        """The job's attempts, oldest first."""
        table = db.delivery_attempts
        query = sa.select(table).where(table.c.job_id == job_id).order_by(table.c.id).limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [Attempt.of(row._mapping) for row in rows]
