"""The job store against each real backend."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.schemas import JobStatus
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


def test_undispatched_lists_jobs_whose_task_was_not_sent(engine: Engine) -> None:
    store = JobStore(engine)
    sent, _ = store.create(new_job())
    pending, _ = store.create(new_job())
    store.mark_dispatched([(sent.job_id, "1-0")])
    waiting = [d.job.job_id for d in store.undispatched(timedelta(seconds=-1))]
    assert pending.job_id in waiting and sent.job_id not in waiting
    assert store.undispatched(timedelta(hours=1)) == []
    assert store.queued_event_id(sent.job_id) == "1-0"


def test_cursor_round_trip_and_garbage() -> None:
    job_id = "01a207a2-fb69-7023-9247-baa030751cb3"
    assert decode_cursor(encode_cursor(job_id)) == job_id
    for bad in ("!!!", "abc", encode_cursor("short"), "\U000f1838", "gA"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
