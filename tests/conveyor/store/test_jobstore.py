"""The job store against each real backend: jobs, idempotency, pages, and the bookkeeping of runs (claims,
heartbeats and takeovers, fenced outcomes, retry times)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.schemas import JobStatus
from conveyor.store import db
from conveyor.store.db import migrate
from conveyor.store.jobstore import (
    IdempotencyConflict,
    InvalidCursor,
    JobStore,
    NewJob,
    decode_cursor,
    encode_cursor,
    utcnow,
)


def new_job(**overrides: object) -> NewJob:
    values: dict[str, object] = {
        "kind": "notification",
        "request": {"channel": "log", "message": "m"},
        "task_name": "notifications.send",
        "queue": "notifications",
    }
    values.update(overrides)
    return NewJob(**values)  # type: ignore[arg-type]


def test_create_and_get(engine: Engine) -> None:
    store = JobStore(engine)
    job, created = store.create(new_job())
    assert created
    assert job.status is JobStatus.QUEUED
    assert job.progress == 0 and job.attempts == 0
    assert job.created_at.tzinfo is not None
    assert store.get(job.job_id) == job
    assert store.get("00000000-0000-7000-8000-000000000000") is None


def test_migrate_twice_is_harmless(engine: Engine) -> None:
    migrate(engine)
    assert "jobs" in sa.inspect(engine).get_table_names()


def test_idempotency_key_returns_the_first_job(engine: Engine) -> None:
    store = JobStore(engine)
    first, created = store.create(new_job(idempotency_key=":k1", request_hash="a"))
    again, created_again = store.create(new_job(idempotency_key=":k1", request_hash="b"))
    assert created and not created_again
    assert again.job_id == first.job_id
    assert store.request_hash(first.job_id) == "a"


def test_create_many_records_all_in_order_or_replays_all(engine: Engine) -> None:
    store = JobStore(engine)
    news = [new_job(idempotency_key=f":b#{i}", request_hash="h", request={"n": i}) for i in range(3)]
    created = store.create_many(news)
    assert [c for _job, c in created] == [True] * 3
    assert [job.request for job, _c in created] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(store.get(job.job_id) == job for job, _c in created)
    replayed = store.create_many(news)
    assert [(job.job_id, c) for job, c in replayed] == [(job.job_id, False) for job, _c in created]
    extended = [*news, new_job(idempotency_key=":b#3", request_hash="h")]
    with pytest.raises(IdempotencyConflict):
        store.create_many(extended)
    assert store.find_by_idempotency_key(":b#3") is None  # nothing of the conflicting batch was written


def test_claim_runs_a_job_once_until_it_goes_stale(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    long_ago = utcnow() - timedelta(hours=1)
    claimed = store.claim(job.job_id, stale_before=long_ago)
    assert claimed is not None and claimed.status is JobStatus.STARTED and claimed.attempts == 1
    assert store.claim(job.job_id, stale_before=long_ago) is None, "a running job was claimed twice"
    reclaimed = store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    assert reclaimed is not None and reclaimed.attempts == 2, "a dead worker's job was not claimable"


def test_transitions_are_conditional(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    assert store.transition(job.job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED]) is None
    store.claim(job.job_id, stale_before=utcnow())
    assert store.set_progress(job.job_id, 42.5)
    done = store.transition(job.job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED], result={"ok": 1})
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED and done.progress == 100 and done.result == {"ok": 1}
    assert done.finished_at is not None
    assert not store.set_progress(job.job_id, 50)
    assert store.claim(job.job_id, stale_before=utcnow() + timedelta(days=1)) is None


def test_page_is_newest_first_with_filters_and_cursor(engine: Engine) -> None:
    store = JobStore(engine)
    ids = [store.create(new_job())[0].job_id for _ in range(5)]
    upload, _ = store.create(new_job(kind="upload", task_name="uploads.ingest", queue="uploads"))
    page, cursor = store.page(kind="notification", limit=2)
    assert [j.job_id for j in page] == ids[::-1][:2]
    assert cursor is not None
    seen = [j.job_id for j in page]
    while cursor is not None:
        page, cursor = store.page(kind="notification", limit=2, cursor=cursor)
        seen += [j.job_id for j in page]
    assert seen == ids[::-1]
    assert [j.job_id for j in store.page(kind="upload")[0]] == [upload.job_id]
    assert store.page(status=JobStatus.SUCCEEDED)[0] == []


def test_cursor_round_trip_and_garbage() -> None:
    job_id = "01a207a2-fb69-7023-9247-baa030751cb3"
    assert decode_cursor(encode_cursor(job_id)) == job_id
    for bad in ("!!!", "abc", encode_cursor("short"), "\U000f1838", "gA"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


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


def test_requeue_after_failure_starts_the_crash_count_again(engine: Engine) -> None:
    store = JobStore(engine)
    job, _ = store.create(new_job())
    store.claim(job.job_id, stale_before=utcnow() - PAST)
    store.claim(job.job_id, stale_before=utcnow() + timedelta(seconds=1))
    store.transition(job.job_id, JobStatus.FAILED, allowed_from=[JobStatus.STARTED], error="poisoned: x")
    again = store.requeue(job.job_id)
    assert again is not None and again.crashes == 0 and again.attempts == 0 and again.status is JobStatus.QUEUED
