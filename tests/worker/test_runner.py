"""Running a job: claim, events, outcome, duplicates and retries; and when things break: dead runs, poisoned jobs,
and Redis or the job store failing mid-run.

Real Redis and SQLite; the handlers are plain functions standing in for a task's work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from conveyor.schemas import Event, Job, JobStatus
from conveyor.store import db
from conveyor.store.attempts import AttemptLog
from conveyor.store.db import STATS
from conveyor.store.jobstore import utcnow
from tests.events_support import stream_events
from tests.worker.conftest import make_job
from worker.notify import deliver, deliver_in_transaction
from worker.runner import POISONED, Failed, JobBusy, Progress, Retryable, run_bundle, run_job
from worker.runtime import Runtime

LONG_AGO = timedelta(hours=1)


def events(rt: Runtime, job_id: str) -> list[Event]:
    return [e for e in stream_events(rt.redis) if e.job_id == job_id]


def events_of(rt: Runtime, job_id: str) -> list[str]:
    return [e.type.value for e in events(rt, job_id)]


def test_success_records_result_and_announces_each_step(rt: Runtime) -> None:
    job = make_job(rt)
    done = run_job(rt, job.job_id, deliver)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.result is not None and done.result["channel"] == "log"
    assert events_of(rt, job.job_id) == ["job.started", "job.succeeded"]
    assert rt.ledger.notification(job.job_id)["message"] == "hi"  # type: ignore[index]


def test_a_second_delivery_does_nothing(rt: Runtime) -> None:
    job = make_job(rt)
    calls: list[str] = []

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        calls.append(job.job_id)
        return {}

    run_job(rt, job.job_id, handler)
    again = run_job(rt, job.job_id, handler)
    assert calls == [job.job_id]
    assert again is not None and again.status is JobStatus.SUCCEEDED and again.attempts == 1


def test_an_exception_fails_the_job_with_its_message(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise ValueError("bad thing")

    failed = run_job(rt, job.job_id, handler)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == "ValueError: bad thing"
    assert events_of(rt, job.job_id)[-1] == "job.failed"


def test_retryable_retries_until_max_attempts(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"max_attempts": 2})
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise Retryable("busy")

    with pytest.raises(Retryable):
        run_job(rt, job.job_id, handler)
    current = rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.RETRYING and current.error == "busy"
    final = run_job(rt, job.job_id, handler)
    assert final is not None and final.status is JobStatus.FAILED and final.attempts == 2
    assert events_of(rt, job.job_id) == ["job.started", "job.retrying", "job.started", "job.failed"]


def test_progress_is_recorded_and_throttled(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        progress.min_interval = 0
        for percent in (10, 10.5, 20, 30):
            progress(percent)
        return {}

    run_job(rt, job.job_id, handler)
    assert events_of(rt, job.job_id) == ["job.started", "job.progress", "job.progress", "job.progress", "job.succeeded"]


def test_a_task_without_a_row_does_nothing(rt: Runtime) -> None:
    assert run_job(rt, "01a207a2-fb69-7023-9247-baa030751cb3", deliver) is None


def test_a_delivery_for_a_job_held_elsewhere_asks_to_look_again(rt: Runtime) -> None:
    job = make_job(rt)
    assert rt.store.claim(job.job_id, stale_before=utcnow() - timedelta(hours=1)) is not None
    with pytest.raises(JobBusy):
        run_job(rt, job.job_id, deliver)
    assert rt.ledger.notification(job.job_id) is None


def test_a_live_runs_job_is_left_alone_and_a_dead_runs_job_is_taken_over(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"heartbeat_seconds": 60})  # dead after three minutes of silence
    job = make_job(rt)
    assert rt.store.claim(job.job_id, stale_before=utcnow() - LONG_AGO) is not None  # a run that then dies
    with pytest.raises(JobBusy):
        run_job(rt, job.job_id, lambda rt, job, progress: {"ran": True})
    silent = utcnow() - timedelta(seconds=rt.settings.dead_after_seconds + 1)
    with rt.store.engine.begin() as connection:  # its last heartbeat is now older than the dead-run window
        connection.execute(db.jobs.update().where(db.jobs.c.id == job.job_id).values(heartbeat_at=silent))
    done = run_job(rt, job.job_id, lambda rt, job, progress: {"ran": True})
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == {"ran": True}
    assert done.attempts == 2 and done.crashes == 1


def test_a_job_whose_runs_keep_dying_is_failed_as_poisoned_without_running(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"max_crashes": 2})
    job = make_job(rt)
    calls: list[int] = []
    for _ in range(2):  # a run claims it and dies; the next delivery takes it over and dies too
        rt.store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    with rt.store.engine.begin() as connection:
        connection.execute(db.jobs.update().values(heartbeat_at=utcnow() - LONG_AGO))

    failed = run_job(rt, job.job_id, lambda rt, job, progress: calls.append(1) or {})  # type: ignore[func-returns-value]
    assert calls == [], "a poisoned job ran again"
    assert failed is not None and failed.status is JobStatus.FAILED and failed.crashes == 2
    assert failed.error is not None and failed.error.startswith("poisoned")
    last = events(rt, job.job_id)[-1]
    assert last.type.value == "job.failed" and last.reason == POISONED
    assert run_job(rt, job.job_id, lambda rt, job, progress: {}) is not None  # a later delivery is dropped quietly


def test_a_run_taken_for_dead_cannot_record_its_outcome(rt: Runtime) -> None:
    job = make_job(rt)

    def slow(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        # Meanwhile another delivery decided this run was dead and took the job over.
        assert rt.store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1)) is not None
        return {"by": "first"}

    run_job(rt, job.job_id, slow)
    current = rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.STARTED and current.attempts == 2
    assert current.result is None


def test_a_short_retry_is_made_by_the_run_and_a_long_one_by_the_dispatcher(rt: Runtime) -> None:
    short, long = make_job(rt), make_job(rt)
    with pytest.raises(Retryable) as caught:
        run_job(rt, short.job_id, lambda rt, job, progress: (_ for _ in ()).throw(Retryable("busy", 0.01)))
    assert caught.value.held and caught.value.countdown == pytest.approx(0.01)
    with pytest.raises(Retryable) as caught:
        run_job(rt, long.job_id, lambda rt, job, progress: (_ for _ in ()).throw(Retryable("busy", 120)))
    assert not caught.value.held
    assert rt.store.retries_due(timedelta(seconds=15)) == []
    assert run_job(rt, long.job_id, lambda rt, job, progress: {}).status is JobStatus.RETRYING  # type: ignore[union-attr]
    time.sleep(0.02)  # the behaviour under test: the short retry's 0.01 s countdown runs out
    done = run_job(rt, short.job_id, lambda rt, job, progress: {})
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 2


def test_redis_failing_inside_the_handler_retries_the_job(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise redis.exceptions.ConnectionError("Connection refused")

    with pytest.raises(Retryable):
        run_job(rt, job.job_id, handler)
    current = rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.RETRYING
    assert current.error is not None and "Redis unavailable" in current.error


def test_the_job_store_failing_mid_run_releases_the_job_instead_of_failing_it(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(sa.exc.OperationalError):
        run_job(rt, job.job_id, handler)
    current = rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.RETRYING
    done = run_job(rt, job.job_id, lambda rt, job, progress: {"ok": True})
    assert done is not None and done.status is JobStatus.SUCCEEDED


def test_a_database_error_in_a_handler_fails_the_job_without_its_sql_or_parameters(rt: Runtime) -> None:
    job = make_job(rt)
    secret = "parameter-value-9f3c"

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        insert = sa.text("INSERT INTO effects (job_id, effect, created_at) VALUES (:x, 'e', '2026-01-01')")
        with rt.store.engine.begin() as connection:
            connection.execute(insert, {"x": secret})
            connection.execute(insert, {"x": secret})
        return {}

    failed = run_job(rt, job.job_id, handler)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.error is not None
    # SQLite's words, or PostgreSQL's (CONVEYOR_TEST_STORE=postgresql); never the statement or its parameters.
    assert failed.error.startswith(("IntegrityError: UNIQUE constraint failed", "UniqueViolation: duplicate key")), (
        failed.error
    )
    assert "SELECT" not in failed.error and secret not in failed.error


def test_a_bundle_runs_its_log_jobs_in_one_transaction_and_leaves_the_others(rt: Runtime) -> None:
    """A bundle: each fresh ``log`` job claimed, logged, its attempt written and succeeded, all in one transaction;
    a finished job and one held by a live run left alone; a job of another channel claimed and handed back."""
    fresh = [make_job(rt, {"channel": "log", "message": f"m{n}"}) for n in range(3)]
    finished, held = make_job(rt), make_job(rt)
    run_job(rt, finished.job_id, deliver, deliver_in_transaction)
    assert rt.store.claim(held.job_id, stale_before=utcnow() - LONG_AGO) is not None
    hook = make_job(rt, {"channel": "webhook", "url": "http://127.0.0.1:9/"})
    ids = [fresh[0].job_id, finished.job_id, held.job_id, hook.job_id, fresh[1].job_id, fresh[2].job_id]
    before = STATS.transactions
    rest = run_bundle(rt, ids, deliver_in_transaction, worker="w1")
    assert STATS.transactions - before == 1
    assert [job.job_id for job in rest] == [hook.job_id]
    assert rest[0].status is JobStatus.STARTED
    for n, job in enumerate(fresh):
        done = rt.store.get(job.job_id)
        assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 1
        assert done.result is not None and done.result["channel"] == "log"
        assert rt.ledger.notification(job.job_id)["message"] == f"m{n}"  # type: ignore[index]
        assert [(a.attempt, a.outcome.value) for a in AttemptLog(rt.store.engine).of(job.job_id)] == [(1, "delivered")]
        started, succeeded = events(rt, job.job_id)[-2:]
        assert (started.type.value, started.worker, succeeded.type.value) == ("job.started", "w1", "job.succeeded")
    assert events_of(rt, finished.job_id) == ["job.started", "job.succeeded"]
    assert events_of(rt, held.job_id) == []
    assert rt.store.get(finished.job_id).attempts == 1  # type: ignore[union-attr]


def test_a_bundle_delivered_again_does_nothing_more(rt: Runtime) -> None:
    jobs = [make_job(rt) for _ in range(3)]
    ids = [job.job_id for job in jobs]
    run_bundle(rt, ids, deliver_in_transaction)
    assert run_bundle(rt, ids + ids, deliver_in_transaction) == []
    for job in jobs:
        assert events_of(rt, job.job_id) == ["job.started", "job.succeeded"]
        assert len(AttemptLog(rt.store.engine).of(job.job_id)) == 1


def test_a_log_job_logged_by_an_earlier_run_keeps_its_first_entry(rt: Runtime) -> None:
    """A run that logged the message apart (the fallback path) and died before its outcome: the bundle that takes
    the job over writes no second entry and reports the first one."""
    job = make_job(rt, {"channel": "log", "message": "first", "level": "warning"})
    first = rt.ledger.log_notification(job.job_id, level="warning", message="first", data=None, owner=None)
    run_bundle(rt, [job.job_id, make_job(rt).job_id], deliver_in_transaction)
    done = rt.store.get(job.job_id)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.result == {"channel": "log", "level": "warning", "logged_at": first["logged_at"]}
    with rt.store.engine.connect() as connection:
        rows = connection.execute(sa.select(db.notification_log).where(db.notification_log.c.job_id == job.job_id))
        assert len(rows.all()) == 1


def test_a_bundle_whose_transaction_fails_writes_nothing(rt: Runtime) -> None:
    jobs = [make_job(rt) for _ in range(3)]

    def breaks(connection: sa.Connection, claimed: Sequence[Job]) -> list[dict[str, Any] | Failed | None]:
        deliver_in_transaction(connection, claimed)
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        run_bundle(rt, [job.job_id for job in jobs], breaks)
    for job in jobs:
        again = rt.store.get(job.job_id)
        assert again is not None and again.status is JobStatus.QUEUED and again.attempts == 0
        assert AttemptLog(rt.store.engine).of(job.job_id) == [] and events_of(rt, job.job_id) == []
