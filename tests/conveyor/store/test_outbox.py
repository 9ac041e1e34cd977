"""The job store's outbox queries: jobs whose task was never sent, retries that are due, runs that died, outcomes not
yet noted as announced.

Against each real backend (SQLite always, PostgreSQL when one answers).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine

from conveyor.schemas import JobStatus
from conveyor.store import db
from conveyor.store.jobstore import JobStore, utcnow
from tests.conveyor.store.test_jobstore import new_job

PAST = timedelta(hours=1)


def test_undispatched_lists_jobs_whose_task_was_not_sent(engine: Engine) -> None:
    store = JobStore(engine)
    sent, _ = store.create(new_job())
    pending, _ = store.create(new_job())
    store.mark_dispatched([(sent.job_id, "1-0")])
    waiting = [d.job.job_id for d in store.undispatched(timedelta(seconds=-1))]
    assert pending.job_id in waiting and sent.job_id not in waiting
    assert store.undispatched(timedelta(hours=1)) == []
    assert store.queued_event_id(sent.job_id) == "1-0"


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


def test_outcomes_and_cancellations_wait_to_be_announced_oldest_first(engine: Engine) -> None:
    store = JobStore(engine)
    queued, _ = store.create(new_job())
    retrying, _ = store.create(new_job())
    cancelled, _ = store.create(new_job())
    store.claim(retrying.job_id, stale_before=utcnow() - PAST)
    assert store.unannounced(timedelta(0)) == [], "a submission or a claim waits to be announced"
    marked = store.schedule_retry(retrying.job_id, attempt=1, error="busy", delay=60, held=False)
    done = store.transition(cancelled.job_id, JobStatus.CANCELLED, allowed_from=[JobStatus.QUEUED])
    assert marked is not None and done is not None
    waiting = store.unannounced(timedelta(0))
    assert [(job.job_id, since) for job, since in waiting] == [
        (retrying.job_id, marked.updated_at),
        (cancelled.job_id, done.updated_at),
    ]
    assert waiting[1][0].status is JobStatus.CANCELLED
    assert store.unannounced(timedelta(hours=1)) == [] and len(store.unannounced(timedelta(0), limit=1)) == 1
    store.mark_announced([(cancelled.job_id, done.updated_at)])
    assert [job.job_id for job, _ in store.unannounced(timedelta(0))] == [retrying.job_id]
    assert queued.job_id not in {job.job_id for job, _ in store.unannounced(timedelta(0))}
