"""A job that kills its worker process every time it runs is stopped after ``CONVEYOR_MAX_CRASHES`` deaths: failed,
reason ``poisoned``, with a ``job.failed`` event; the worker and the other jobs carry on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from conveyor.events import EventLog
from conveyor.names import QUEUE_NOTIFICATIONS
from conveyor.queue.app import create_celery
from conveyor.queue.dispatch import Dispatcher
from conveyor.schemas import Event
from conveyor.settings import Settings
from conveyor.store.jobstore import JobStore, NewJob
from tests.events_support import stream_events
from tests.poison_tasks import TASK_NAME
from tests.system.faults import FaultStack, accepted_ids, submit_many

#: Longer than the global 120 s: 60 s to start, then up to 90 + 60 s of waiting for jobs.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]


def events_of(client: redis.Redis, job_id: str) -> list[Event]:
    return [e for e in stream_events(client) if e.job_id == job_id]


def test_a_job_that_kills_its_worker_every_time_is_failed_as_poisoned(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, env={"CONVEYOR_HEARTBEAT_SECONDS": "1", "CONVEYOR_MAX_CRASHES": "3"})
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        worker = stack.worker("poisoned", QUEUE_NOTIFICATIONS, include="tests.poison_tasks")
        stack.worker("housekeeping", "housekeeping", concurrency=1)
        stack.start("beat", ["beat"])
        stack.wait_ready(["poisoned", "housekeeping"])

        settings = Settings(_env_file=None, data_dir=stack.data_dir, redis_url=stack.redis_url)  # type: ignore[call-arg]
        client = redis.Redis.from_url(stack.redis_url)
        celery = create_celery(settings)
        dispatcher = Dispatcher(JobStore(stack.engine), EventLog(client, 10_000), celery)
        poison, _ = dispatcher.submit(
            NewJob(kind="test.poison", request={}, task_name=TASK_NAME, queue=QUEUE_NOTIFICATIONS)
        )
        others = accepted_ids(
            submit_many(
                stack.base_url, [{"channel": "log", "message": f"m{n}"} for n in range(10)], headers=stack.headers
            )
        )

        started = time.monotonic()
        stack.wait_for(lambda: stack.statuses([poison.job_id])["failed"] == 1, 90, "the poisoned job failed")
        print(f"poisoned job stopped after {time.monotonic() - started:.1f}s")
        stack.wait_finished(others, 60)
        (row,) = stack.rows([poison.job_id])
        assert row["crashes"] == 3 and row["error"].startswith("poisoned"), row
        # The event follows the commit that failed the job (published right after it): wait for it, not a race.
        stack.wait_for(
            lambda: "job.failed" in [e.type.value for e in events_of(client, poison.job_id)], 10, "job.failed"
        )
        mine = events_of(client, poison.job_id)
        assert [e.type.value for e in mine].count("job.started") == 3
        assert mine[-1].type.value == "job.failed" and mine[-1].reason == "poisoned", mine[-1]
        assert worker.alive(), "the worker itself died"
        deaths = worker.output().count("exited with 'signal 9 (SIGKILL)'")
        assert deaths == 3, f"{deaths} pool processes died\n{worker.output()[-3000:]}"
        time.sleep(3)  # the behaviour under test: for a while, leftover messages of the job run nothing
        assert worker.output().count("exited with 'signal 9 (SIGKILL)'") == 3
        client.close()
        celery.close()
    finally:
        stack.stop_all()
