"""A run whose Redis refuses writes (``MISCONF``, a full disk) on a real redis-server of its own
(tests/refusing_redis.py): the job store is the truth, so the run goes on and records its outcome; its events are
logged as not published, and beat's ``reap_stale`` publishes the outcome once Redis takes writes again; a handler
that needs Redis is retried, never failed at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.queue.app import create_celery
from conveyor.schemas import Job, JobStatus
from conveyor.settings import Settings
from conveyor.store.db import migrate
from tests.events_support import stream_events
from tests.refusing_redis import RefusingRedis, refusing_redis
from tests.worker.conftest import make_job
from worker import housekeeping
from worker.runner import Progress, Retryable, run_job
from worker.runtime import Runtime, open_runtime


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RefusingRedis]:
    with refusing_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def refusing_rt(tmp_path: Path, server: RefusingRedis) -> Iterator[Runtime]:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=server.url)  # type: ignore[call-arg]
    runtime = open_runtime(settings, create_celery(settings))
    migrate(runtime.store.engine)
    yield runtime
    runtime.close()


def test_a_run_records_its_outcome_while_redis_refuses_its_events(
    refusing_rt: Runtime, server: RefusingRedis, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(refusing_rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        progress(50.0)
        return {"done": True}

    with server.refusing():
        done = run_job(refusing_rt, job.job_id, handler)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == {"done": True}
    logged = [r.getMessage() for r in caplog.records]
    assert "progress event lost: Redis unavailable" in logged
    assert "event not published: Redis unavailable" in logged

    # Redis takes writes again: the outcome the run could not publish is announced by beat's reap_stale, once.
    refusing_rt.announced.flush()
    assert [waiting.job_id for waiting, _ in refusing_rt.store.unannounced(timedelta(0))] == [job.job_id]
    assert housekeeping.announce_unannounced(refusing_rt, timedelta(seconds=60)) == 0  # not yet late enough
    assert housekeeping.announce_unannounced(refusing_rt, timedelta(0)) == 1
    assert housekeeping.announce_unannounced(refusing_rt, timedelta(0)) == 0
    mine = [e for e in stream_events(refusing_rt.redis) if e.job_id == job.job_id]
    assert [e.type.value for e in mine] == ["job.succeeded"] and mine[0].result == {"done": True}, mine


def test_a_handler_meeting_a_refusing_redis_is_retried(refusing_rt: Runtime, server: RefusingRedis) -> None:
    job = make_job(refusing_rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        rt.redis.xadd("conveyor-tests:topic", {"m": "1"})
        return {}

    with server.refusing(), pytest.raises(Retryable) as caught:
        run_job(refusing_rt, job.job_id, handler)
    assert "MISCONF" in str(caught.value)
    current = refusing_rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.RETRYING
