"""Dispatch: a recorded job always gets its task, even when Redis refused the first send."""

from __future__ import annotations

from datetime import timedelta

import redis

from conveyor.events import EventLog
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port
from conveyor.queue.app import create_celery
from conveyor.queue.dispatch import Dispatcher
from conveyor.settings import Settings
from conveyor.store.db import create_engine, migrate
from conveyor.store.jobstore import JobStore, NewJob


def dispatcher_for(settings: Settings, redis_url: str) -> Dispatcher:
    engine = create_engine(settings.effective_database_url)
    migrate(engine)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    celery = create_celery(settings.model_copy(update={"redis_url": redis_url}))
    return Dispatcher(JobStore(engine), EventLog(client, 10_000), celery)


def queued_message_ids(redis_url: str, queue: str) -> list[str]:
    import json

    client = redis.Redis.from_url(redis_url)
    messages = [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
    client.close()
    return messages


NEW = NewJob(kind="notification", request={"channel": "log", "message": "x"}, task_name="t.test", queue="housekeeping")


def test_submit_records_announces_and_sends(settings: Settings, redis_url: str) -> None:
    dispatcher = dispatcher_for(settings, redis_url)
    job, created = dispatcher.submit(NEW)
    assert created
    assert job.job_id in queued_message_ids(redis_url, "housekeeping")
    assert dispatcher.store.queued_event_id(job.job_id) is not None
    assert dispatcher.store.undispatched(timedelta(seconds=-1)) == []


def test_broker_down_leaves_the_job_recorded_and_sent_later(settings: Settings, redis_url: str) -> None:
    down = dispatcher_for(settings, f"redis://127.0.0.1:{free_port()}/0")
    job, created = down.submit(NEW)
    assert created, "a job must be recorded even when Redis refuses"
    assert [d.job.job_id for d in down.store.undispatched(timedelta(seconds=-1))] == [job.job_id]
    up = dispatcher_for(settings, redis_url)
    assert up.dispatch_pending(timedelta(seconds=-1)) == 1
    assert job.job_id in queued_message_ids(redis_url, "housekeeping")
    assert up.dispatch_pending(timedelta(seconds=-1)) == 0


def test_stale_started_jobs_are_sent_again_without_a_new_queued_event(settings: Settings, redis_url: str) -> None:
    from conveyor.store.jobstore import utcnow

    dispatcher = dispatcher_for(settings, redis_url)
    job, _ = dispatcher.submit(NEW)
    dispatcher.store.claim(job.job_id, stale_before=utcnow())
    before = queued_message_ids(redis_url, "housekeeping").count(job.job_id)
    assert dispatcher.resend_stale(timedelta(hours=1)) == 0
    assert dispatcher.resend_stale(timedelta(seconds=-1)) == 1
    assert queued_message_ids(redis_url, "housekeeping").count(job.job_id) == before + 1


def test_a_job_whose_message_was_lost_is_sent_again_once_its_queue_is_empty(
    settings: Settings, private_redis_url: str
) -> None:
    import sqlalchemy as sa

    from conveyor.store import db
    from conveyor.store.jobstore import utcnow

    url = private_redis_url  # an empty database: only this test's messages are in its queues
    dispatcher = dispatcher_for(settings, url)
    lost, _ = dispatcher.submit(NEW)
    waiting, _ = dispatcher.submit(NEW)
    with dispatcher.store.engine.begin() as connection:
        connection.execute(db.jobs.update().values(dispatched_at=utcnow() - timedelta(minutes=5)))
    assert dispatcher.resend_lost(timedelta(minutes=1)) == 0, "a job waiting behind a backlog was sent again"

    client = redis.Redis.from_url(url)
    client.delete("housekeeping")  # both messages gone: taken by a worker that died before recording them
    assert dispatcher.resend_lost(timedelta(minutes=1)) == 2
    assert sorted(queued_message_ids(url, "housekeeping")) == sorted([lost.job_id, waiting.job_id])
    assert dispatcher.resend_lost(timedelta(minutes=1)) == 0, "sent again before the window passed"
    with dispatcher.store.engine.begin() as connection:
        connection.execute(sa.update(db.jobs).values(status="started", dispatched_at=utcnow() - timedelta(hours=1)))
    client.delete("housekeeping")
    assert dispatcher.resend_lost(timedelta(minutes=1)) == 0, "a claimed job counted as lost"
    client.close()


def test_with_a_broker_of_its_own_the_task_goes_there_and_the_event_stays(settings: Settings, redis_url: str) -> None:
    events_url, broker_url = (f"{redis_url.rsplit('/', 1)[0]}/{db}" for db in (9, 10))
    for url in (events_url, broker_url):
        redis.Redis.from_url(url).flushdb()
    engine = create_engine(settings.effective_database_url)
    migrate(engine)
    events, broker = redis.Redis.from_url(events_url), redis.Redis.from_url(broker_url)
    celery = create_celery(settings.model_copy(update={"redis_url": events_url, "broker_url": broker_url}))
    dispatcher = Dispatcher(JobStore(engine), EventLog(events, 10_000), celery, broker)
    try:
        job, _ = dispatcher.submit(NEW)
        assert job.job_id in queued_message_ids(broker_url, "housekeeping")
        assert queued_message_ids(events_url, "housekeeping") == []
        assert dispatcher.store.queued_event_id(job.job_id) is not None
        assert events.xlen(EVENTS_STREAM) == 1 and not broker.exists(EVENTS_STREAM)
    finally:
        events.close()
        broker.close()
