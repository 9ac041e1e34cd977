"""The writes a run makes to its job's row, as functions of a connection, so that a caller can put several in one
transaction (:mod:`conveyor.store.writer`). Every statement is built once, with bound parameters: building and
compiling a statement costs several times what SQLite takes to run it.

Every write is one conditional ``UPDATE``, so two processes racing on one job cannot both win; a run's outcome is
written only while the job is still that run's attempt (a run that was taken for dead cannot overwrite its
successor's). Each returns the job as written, or ``None`` when the condition did not hold.

An outcome (succeeded, failed, retrying) also marks the row *unannounced* (``unannounced_since``, the job's
``updated_at``) in the same statement; :func:`announced` clears the mark once the outcome's event is on the stream,
and beat's ``reap_stale`` announces a job whose mark stays (:meth:`conveyor.store.outbox.Outbox.unannounced`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from conveyor.schemas import Job, JobStatus
from conveyor.store import db
from conveyor.store.prepared import Prepared
from conveyor.store.rows import JOB_COLUMNS, job_from_row, utcnow

#: How far ahead of its time a retrying job may be claimed (clocks of different hosts disagree a little).
CLOCK_SLACK = timedelta(seconds=1)

_c = db.jobs.c
_when = sa.DateTime(timezone=True)
_NOW = sa.bindparam("p_now", type_=_when)
_JOB: sa.BindParameter[str] = sa.bindparam("p_job", type_=sa.String)
_ATTEMPT: sa.BindParameter[int] = sa.bindparam("p_attempt", type_=sa.Integer)
_STARTED = JobStatus.STARTED.value


def _returning(statement: sa.Update) -> sa.Update:
    return statement.returning(*(_c[name] for name in JOB_COLUMNS))


def _this_run() -> sa.ColumnElement[bool]:
    """The job is still started by this run's attempt."""
    return sa.and_(_c.id == _JOB, _c.status == _STARTED, _c.attempts == _ATTEMPT)


def _claim_statement(which: sa.ColumnElement[bool]) -> sa.Update:
    """The claim of the jobs ``which`` selects (see :func:`claim`)."""
    return _returning(
        db.jobs.update()
        .where(
            which,
            sa.or_(
                _c.status == JobStatus.QUEUED.value,
                sa.and_(
                    _c.status == JobStatus.RETRYING.value,
                    sa.or_(_c.next_attempt_at.is_(None), _c.next_attempt_at <= sa.bindparam("p_due", type_=_when)),
                ),
                sa.and_(
                    _c.status == _STARTED,
                    sa.func.coalesce(_c.heartbeat_at, _c.updated_at) < sa.bindparam("p_stale", type_=_when),
                ),
            ),
        )
        .values(
            status=_STARTED,
            updated_at=_NOW,
            started_at=_NOW,
            heartbeat_at=_NOW,
            next_attempt_at=None,
            attempts=_c.attempts + 1,
            crashes=_c.crashes + sa.case((_c.status == _STARTED, 1), else_=0),
        )
    )


_CLAIM = Prepared(_claim_statement(_c.id == _JOB))
_CLAIM_MANY = _claim_statement(_c.id.in_(sa.bindparam("p_jobs", expanding=True)))
_SUCCEED_UNREAD = (
    db.jobs.update()
    .where(_this_run())
    .values(
        status=JobStatus.SUCCEEDED.value,
        updated_at=_NOW,
        finished_at=_NOW,
        progress=100.0,
        result=sa.bindparam("p_result", type_=sa.JSON),
        unannounced_since=_NOW,
    )
)
_SUCCEED = Prepared(_returning(_SUCCEED_UNREAD))
_SUCCEED_MANY = Prepared(_SUCCEED_UNREAD)
_FAIL = Prepared(
    _returning(
        db.jobs.update()
        .where(_this_run())
        .values(
            status=JobStatus.FAILED.value,
            updated_at=_NOW,
            finished_at=_NOW,
            error=sa.bindparam("p_error"),
            unannounced_since=_NOW,
        )
    )
)
_RETRY = Prepared(
    _returning(
        db.jobs.update()
        .where(_this_run())
        .values(
            status=JobStatus.RETRYING.value,
            updated_at=_NOW,
            error=sa.bindparam("p_error"),
            next_attempt_at=sa.bindparam("p_next", type_=_when),
            dispatched_at=sa.bindparam("p_dispatched", type_=_when),
            heartbeat_at=None,
            unannounced_since=_NOW,
        )
    )
)
_HEARTBEAT = db.jobs.update().where(_this_run()).values(heartbeat_at=_NOW)
_PROGRESS = (
    db.jobs.update()
    .where(_c.id == _JOB, _c.status == _STARTED)
    .values(progress=sa.bindparam("p_progress"), updated_at=_NOW)
)
_ANNOUNCED = (
    db.jobs.update()
    .where(_c.id == _JOB, _c.unannounced_since <= sa.bindparam("p_since", type_=_when))
    .values(unannounced_since=None)
)
_GET = db.jobs.select().where(_c.id == _JOB)
_GET_MANY = db.jobs.select().where(_c.id.in_(sa.bindparam("p_jobs", expanding=True)))


def _one(connection: sa.Connection, statement: Prepared, params: Mapping[str, Any]) -> Job | None:
    rows = statement.fetch(connection, params)
    return job_from_row(rows[0]) if rows else None


def get(connection: sa.Connection, job_id: str) -> Job | None:
    """The job, read in ``connection``'s transaction; ``None`` when unknown."""
    row = connection.execute(_GET, {"p_job": job_id}).first()
    return None if row is None else job_from_row(row)


def get_many(connection: sa.Connection, job_ids: Sequence[str]) -> dict[str, Job]:
    """The jobs of ``job_ids`` that exist, by id, read in ``connection``'s transaction with one statement."""
    if len(job_ids) <= 1:
        job = get(connection, job_ids[0]) if job_ids else None
        return {} if job is None else {job.job_id: job}
    return {job.job_id: job for job in map(job_from_row, connection.execute(_GET_MANY, {"p_jobs": list(job_ids)}))}


def claim_many(connection: sa.Connection, job_ids: Sequence[str], *, stale_before: datetime) -> dict[str, Job]:
    """:func:`claim` for several jobs with one statement: the jobs claimed, by id (the others may not run now)."""
    if len(job_ids) == 1:  # the statement compiled once, without an IN list to render
        job = claim(connection, job_ids[0], stale_before=stale_before)
        return {} if job is None else {job.job_id: job}
    now = utcnow()
    params = {"p_jobs": list(job_ids), "p_now": now, "p_due": now + CLOCK_SLACK, "p_stale": stale_before}
    return {job.job_id: job for job in map(job_from_row, connection.execute(_CLAIM_MANY, params))}


def claim(
    connection: sa.Connection, job_id: str, *, stale_before: datetime, due_before: datetime | None = None
) -> Job | None:
    """Mark the job started for a new attempt (its heartbeat fresh), if it may run now: when it is queued; when it
    is retrying and its next attempt is due by ``due_before`` (default: now, with a second of slack); or when it is
    started but its run's heartbeat is older than ``stale_before`` (that run died; one crash is counted).
    ``None`` otherwise, so that a duplicate delivery of a running, early or finished job does nothing."""
    now = utcnow()
    params = {"p_job": job_id, "p_now": now, "p_due": due_before or now + CLOCK_SLACK, "p_stale": stale_before}
    return _one(connection, _CLAIM, params)


def succeed(connection: sa.Connection, job_id: str, attempt: int, result: Mapping[str, Any]) -> Job | None:
    """Attempt ``attempt`` of the job succeeded with ``result`` (progress 100)."""
    params = {"p_job": job_id, "p_attempt": attempt, "p_now": utcnow(), "p_result": dict(result)}
    return _one(connection, _SUCCEED, params)


def succeed_many(connection: sa.Connection, runs: Sequence[tuple[Job, Mapping[str, Any]]]) -> list[Job]:
    """:func:`succeed` for runs of jobs claimed in this same transaction (so each is still its run's), with one
    statement executed for all; returns the jobs as written. Raises :class:`LostClaim` (the transaction must not
    commit) if a row did not match after all."""
    if not runs:
        return []
    now = utcnow()
    results = [dict(result) for _, result in runs]
    params = [
        {"p_job": job.job_id, "p_attempt": job.attempts, "p_now": now, "p_result": result}
        for (job, _), result in zip(runs, results, strict=True)
    ]
    written = _SUCCEED_MANY.execute(connection, params)
    if connection.dialect.supports_sane_multi_rowcount and written != len(runs):
        raise LostClaim(f"{len(runs) - written} of {len(runs)} jobs were no longer this transaction's to record")
    done = {"status": JobStatus.SUCCEEDED, "updated_at": now, "finished_at": now, "progress": 100.0}
    return [job.model_copy(update={**done, "result": result}) for (job, _), result in zip(runs, results, strict=True)]


class LostClaim(Exception):
    """A job claimed earlier in a transaction no longer matched its run's condition within it."""


def fail(connection: sa.Connection, job_id: str, attempt: int, error: str) -> Job | None:
    """Attempt ``attempt`` of the job failed for good with ``error``."""
    return _one(connection, _FAIL, {"p_job": job_id, "p_attempt": attempt, "p_now": utcnow(), "p_error": error})


def retry(connection: sa.Connection, job_id: str, *, attempt: int, error: str, delay: float, held: bool) -> Job | None:
    """Attempt ``attempt`` of the job failed in a way another attempt may fix: ``retrying``, the next attempt due
    in ``delay`` seconds. With ``held`` the calling run makes that attempt itself (``dispatched_at`` is now, before
    the due time); otherwise the dispatcher sends it when due."""
    now = utcnow()
    params = {
        "p_job": job_id,
        "p_attempt": attempt,
        "p_now": now,
        "p_error": error,
        "p_next": now + timedelta(seconds=max(0.0, delay)),
        "p_dispatched": now if held else None,
    }
    return _one(connection, _RETRY, params)


def heartbeat(connection: sa.Connection, runs: Sequence[tuple[str, int]]) -> list[bool]:
    """Touch the heartbeat of each ``(job_id, attempt)``; for each, whether that run still holds its job."""
    now = utcnow()
    return [
        connection.execute(_HEARTBEAT, {"p_job": job_id, "p_attempt": attempt, "p_now": now}).rowcount == 1
        for job_id, attempt in runs
    ]


def progress(connection: sa.Connection, job_id: str, percent: float) -> bool:
    """Record progress of a started job; ``False`` if the job is no longer running."""
    params = {"p_job": job_id, "p_progress": max(0.0, min(100.0, percent)), "p_now": utcnow()}
    return bool(connection.execute(_PROGRESS, params).rowcount == 1)


def announced(connection: sa.Connection, notes: Sequence[tuple[str, datetime]]) -> None:
    """Note that the change of each ``(job_id, since)`` (the job as written at ``since``: its ``updated_at``) is on
    the event stream: its row stops waiting to be announced, unless a later change marked it again. One statement
    executed for all."""
    if notes:
        connection.execute(_ANNOUNCED, [{"p_job": job_id, "p_since": since} for job_id, since in notes])
