"""The job store's bookkeeping of runs: heartbeats, takeovers and crash counts, fenced outcomes, retry times.

Against each real backend (SQLite always, PostgreSQL when one answers).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.schemas import JobStatus
from conveyor.store import db
from conveyor.store.jobstore import JobStore, utcnow
from tests.conveyor.store.test_jobstore import new_job

PAST = timedelta(hours=1)


def heartbeat_at(store: JobStore, job_id: str) -> object:
    with store.engine.connect() as connection:
        return connection.execute(sa.select(db.jobs.c.heartbeat_at).where(db.jobs.c.id == job_id)).scalar_one()


def test_a_fresh_heartbeat_keeps_the_job_and_a_stale_one_lets_a_delivery_take_it_over(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    first = store.claim(job.job_id, stale_before=utcnow() - PAST)
    assert first is not None and first.attempts == 1 and first.crashes == 0
    assert heartbeat_at(store, job.job_id) is not None, "a claim starts the heartbeat"
    assert store.heartbeat(job.job_id, attempt=1)
    assert store.claim(job.job_id, stale_before=utcnow() - timedelta(seconds=15)) is None, "a live run lost its job"

    second = store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    assert second is not None and second.attempts == 2 and second.crashes == 1, "a dead run's job was not taken over"
    assert not store.heartbeat(job.job_id, attempt=1), "the dead run's heartbeat still counts"
    assert store.heartbeat(job.job_id, attempt=2)


def test_an_outcome_is_recorded_only_by_the_run_that_holds_the_job(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    store.claim(job.job_id, stale_before=utcnow() - PAST)
    store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    stale = store.transition(job.job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED], attempt=1)
    assert stale is None, "a run taken for dead overwrote its successor"
    assert store.schedule_retry(job.job_id, attempt=1, error="x", delay=0, held=False) is None
    done = store.transition(job.job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED], attempt=2)
    assert done is not None and done.status is JobStatus.SUCCEEDED


def test_a_retrying_job_is_claimed_only_when_its_attempt_is_due(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    store.claim(job.job_id, stale_before=utcnow() - PAST)
    retrying = store.schedule_retry(job.job_id, attempt=1, error="busy", delay=60, held=False)
    assert retrying is not None and retrying.status is JobStatus.RETRYING and retrying.error == "busy"
    assert store.claim(job.job_id, stale_before=utcnow() - PAST) is None, "an early delivery ran the retry"
    assert store.retries_due(timedelta(seconds=15)) == []
    assert store.claim(job.job_id, stale_before=utcnow() - PAST, due_before=utcnow() + timedelta(minutes=2))


def test_the_dispatcher_sends_a_due_retry_once_and_a_held_one_only_when_its_holder_is_gone(engine: Engine) -> None:
    store = JobStore(engine)
    left, _ = store.create(new_job())
    held, _ = store.create(new_job())
    for job in (left, held):
        store.claim(job.job_id, stale_before=utcnow() - PAST)
    store.schedule_retry(left.job_id, attempt=1, error="busy", delay=0, held=False)
    store.schedule_retry(held.job_id, attempt=1, error="busy", delay=0, held=True)

    assert [d.job.job_id for d in store.retries_due(timedelta(seconds=15))] == [left.job_id]
    store.mark_dispatched([(left.job_id, None)])
    assert store.retries_due(timedelta(seconds=15)) == [], "a sent retry would be sent again"
    gone = [d.job.job_id for d in store.retries_due(timedelta(seconds=-1))]
    assert gone == [held.job_id], "a retry whose holder died is never sent"


def test_a_dead_runs_job_is_resent_at_most_once_per_window(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    store.claim(job.job_id, stale_before=utcnow() - PAST)
    assert store.stale_started(timedelta(seconds=15)) == [], "a live run's job is listed as dead"
    with store.engine.begin() as connection:
        long_ago = utcnow() - PAST
        connection.execute(db.jobs.update().values(heartbeat_at=long_ago, dispatched_at=long_ago))
    assert [d.job.job_id for d in store.stale_started(timedelta(seconds=15))] == [job.job_id]
    store.mark_dispatched([(job.job_id, None)])
    assert store.stale_started(timedelta(seconds=15)) == [], "resent again before the window passed"


def test_requeue_after_failure_starts_the_crash_count_again(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    store.claim(job.job_id, stale_before=utcnow() - PAST)
    store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    store.transition(job.job_id, JobStatus.FAILED, allowed_from=[JobStatus.STARTED], error="poisoned: x")
    again = store.requeue(job.job_id)
    assert again is not None and again.crashes == 0 and again.attempts == 0 and again.status is JobStatus.QUEUED
