"""Folding job events into Flower's real state (Flower's and Celery's own classes, no Redis): what each job's
task looks like after each event. Also the contract with the Flower internals the feed relies on."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.events.state import State
from flower.events import EventsState

from conveyor.ops.flower_feed import FEED_MARK, FlowerFeed, JobState, JobTask, serves, task_events
from conveyor.schemas import Event, EventType, JobStatus

STATUS = {
    EventType.QUEUED: JobStatus.QUEUED,
    EventType.STARTED: JobStatus.STARTED,
    EventType.PROGRESS: JobStatus.STARTED,
    EventType.RETRYING: JobStatus.RETRYING,
    EventType.SUCCEEDED: JobStatus.SUCCEEDED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


@pytest.fixture
def feed() -> FlowerFeed:
    state = JobState(max_workers_in_memory=100, max_tasks_in_memory=1000)
    return FlowerFeed(state, client=None)  # type: ignore[arg-type]  # fold() never touches Redis


def fold(feed: FlowerFeed, type_: EventType, job_id: str = "j1", kind: str = "notification", **fields: Any) -> Any:
    fields.setdefault("progress", 0.0)
    feed.fold(Event(type=type_, job_id=job_id, kind=kind, status=STATUS[type_], ts=time.time(), **fields))
    return feed.state.tasks.get(job_id)


def heartbeat(feed: FlowerFeed, hostname: str) -> None:
    now = time.time()
    feed.state.event(
        {"type": "worker-heartbeat", "hostname": hostname, "timestamp": now, "local_received": now, "freq": 2.0}
    )


def test_a_job_that_retries_then_fails_is_failure_with_its_error_and_retries(feed: FlowerFeed) -> None:
    task = fold(feed, EventType.QUEUED)
    assert (task.state, task.name, task.args, task.retries) == ("RECEIVED", "notifications.send", "['j1']", 0)
    assert fold(feed, EventType.STARTED, attempt=1).state == "STARTED"
    task = fold(feed, EventType.RETRYING, attempt=1, error="webhook answered 500")
    assert (task.state, task.retries, task.exception) == ("RETRY", 1, "webhook answered 500")
    fold(feed, EventType.STARTED, attempt=2)
    task = fold(feed, EventType.FAILED, attempt=2, error="webhook answered 500 (after 2 attempts)")
    assert (task.state, task.retries, task.exception) == ("FAILURE", 1, "webhook answered 500 (after 2 attempts)")
    assert task.runtime is not None and task.runtime >= 0


def test_progress_keeps_the_job_started_and_shows_in_result_and_progress(feed: FlowerFeed) -> None:
    fold(feed, EventType.QUEUED, kind="upload")
    fold(feed, EventType.STARTED, kind="upload", attempt=1)
    task = fold(feed, EventType.PROGRESS, kind="upload", progress=42.5)
    assert (task.state, task.progress, task.result) == ("STARTED", 42.5, '{"progress":42.5}')
    info = task.as_dict()
    assert info["progress"] == 42.5 and info["state"] == "STARTED"
    task = fold(feed, EventType.SUCCEEDED, kind="upload", progress=100.0, attempt=1, result={"size": 7})
    assert (task.state, task.result, task.progress) == ("SUCCESS", '{"size":7}', 100.0)


def test_progress_after_cancellation_changes_nothing_and_a_requeued_failure_runs_again(feed: FlowerFeed) -> None:
    fold(feed, EventType.QUEUED)
    fold(feed, EventType.STARTED, attempt=1)
    fold(feed, EventType.CANCELLED, error="cancelled by request")
    task = fold(feed, EventType.PROGRESS, progress=50.0)
    assert (task.state, task.progress) == ("REVOKED", 0.0)

    fold(feed, EventType.QUEUED, job_id="j2")
    fold(feed, EventType.STARTED, job_id="j2", attempt=1)
    fold(feed, EventType.FAILED, job_id="j2", attempt=1, error="no")
    assert fold(feed, EventType.QUEUED, job_id="j2").state == "RECEIVED"  # POST /jobs/{id}/retry
    task = fold(feed, EventType.STARTED, job_id="j2", attempt=1)
    assert (task.state, task.exception) == ("STARTED", None)


def test_a_job_whose_first_events_were_trimmed_still_gets_its_name_and_state(feed: FlowerFeed) -> None:
    task = fold(feed, EventType.PROGRESS, kind="upload", progress=10.0)
    assert (task.state, task.name, task.progress) == ("STARTED", "uploads.ingest", 10.0)
    assert fold(feed, EventType.SUCCEEDED, job_id="j3", result={"ok": True}).state == "SUCCESS"


def test_every_start_follows_a_receipt_so_flowers_prefetch_gauge_stays_balanced(feed: FlowerFeed) -> None:
    fold(feed, EventType.QUEUED)
    fold(feed, EventType.QUEUED)  # the dispatcher announced it twice: one receipt
    fold(feed, EventType.STARTED, attempt=1)
    fold(feed, EventType.RETRYING, attempt=1, error="x")
    fold(feed, EventType.STARTED, attempt=2)
    fold(feed, EventType.SUCCEEDED, attempt=2, result={})
    assert feed.state.counter == {}  # credited to the queue: no worker was heard
    metric = feed.state.metrics.number_of_prefetched_tasks.labels("notifications", "notifications.send")
    assert metric._value.get() == 0


def test_jobs_are_credited_to_the_one_live_worker_of_their_queue(feed: FlowerFeed) -> None:
    heartbeat(feed, "notifications@host")
    heartbeat(feed, "uploads@host")
    fold(feed, EventType.QUEUED)
    task = fold(feed, EventType.STARTED, attempt=1)
    assert task.worker.hostname == "notifications@host"
    fold(feed, EventType.SUCCEEDED, attempt=1, result={})
    assert feed.state.counter["notifications@host"]["task-succeeded"] == 1
    heartbeat(feed, "notifications+uploads@other")
    task = fold(feed, EventType.STARTED, job_id="j4", attempt=1)
    assert task.worker.hostname == "notifications"  # two candidates: the queue stands in
    assert "notifications" not in feed.state.workers and "notifications" not in feed.state.counter


def test_task_events_from_workers_and_other_kinds_are_ignored(feed: FlowerFeed) -> None:
    feed.state.event(
        {"type": "task-received", "uuid": "w1", "hostname": "w@h", "timestamp": 1.0, "local_received": 1.0, "clock": 1}
    )
    assert feed.state.tasks.get("w1") is None
    assert fold(feed, EventType.QUEUED, job_id="h1", kind="housekeeping") is None
    assert feed.fold(Event(type=EventType.TOPIC_MESSAGE, topic="t", message="m", ts=1.0)) == 0


def test_serves_reads_conveyors_worker_names() -> None:
    assert serves("uploads@vm", "uploads") and serves("uploads+notifications@vm", "notifications")
    assert not serves("uploads@vm", "notifications") and not serves("uploads", "uploads")
    assert serves("uploads-4242@vm", "uploads") and serves("uploads+notifications-7@vm", "notifications")
    assert not serves("uploads-x@vm", "uploads") and not serves("uploadsx-1@vm", "uploads")


def test_the_flower_internals_the_feed_relies_on() -> None:
    """Flower's state is Celery's State plus counters, search index and metrics; tasks are made from ``Task``;
    a task event's fields land on the task; ``as_dict`` lists ``_fields`` (what every page and API shows)."""
    assert issubclass(EventsState, State) and JobState.Task is JobTask
    event = task_events(
        Event(type=EventType.QUEUED, job_id="contract-1", kind="upload", ts=1.0, event_id="1-0"), None, "uploads", 1
    )[0]
    assert event[FEED_MARK] == "1-0" and {"uuid", "hostname", "timestamp", "local_received", "clock"} <= set(event)
    state = JobState(max_workers_in_memory=10, max_tasks_in_memory=10)
    state.event(event)
    task = state.tasks["contract-1"]
    assert type(task) is JobTask and "progress" in task.as_dict() and task.routing_key == "uploads"
    assert state.search_engine.search(state.tasks, "contract-1").task_ids == ["contract-1"]


def test_searches_see_each_jobs_newest_state_though_events_only_mark_it_stale(feed: FlowerFeed) -> None:
    """Flower's search (its tasks page and API) indexes a task when it searches, in the task's newest state: what
    indexing at every event would show, for one indexing per job. An evicted task is not found."""
    engine = feed.state.search_engine
    for job_id in ("j1", "j2"):
        fold(feed, EventType.QUEUED, job_id=job_id)
        fold(feed, EventType.STARTED, job_id=job_id, attempt=1)
    fold(feed, EventType.SUCCEEDED, job_id="j1", attempt=1, result={"delivered": "to-alice"})
    assert engine.documents == {}  # nothing indexed while nobody searched

    def ids(query: str = "", **filters: Any) -> list[str]:
        return sorted(engine.search(feed.state.tasks, query, **filters).task_ids)

    assert ids(state="SUCCESS") == ["j1"] and ids(state="STARTED") == ["j2"]
    assert ids("to-alice") == ["j1"] and ids("result:to-alice") == ["j1"]
    assert ids(task_type="notifications.send") == ["j1", "j2"]
    fold(feed, EventType.FAILED, job_id="j2", attempt=1, error="webhook answered 500")
    assert ids(state="FAILURE") == ["j2"] and ids(state="STARTED") == []
    assert sorted(engine.documents) == ["j1", "j2"]

    small = FlowerFeed(JobState(max_workers_in_memory=10, max_tasks_in_memory=2), client=None)  # type: ignore[arg-type]
    for job_id in ("a", "b", "c"):
        fold(small, EventType.QUEUED, job_id=job_id)
    assert sorted(small.state.tasks) == ["b", "c"]
    assert sorted(small.state.search_engine.search(small.state.tasks, "").task_ids) == ["b", "c"]
    assert "a" not in small.state.search_engine._stale and "a" not in small.state.search_engine.documents
