"""A worker runtime on real Redis and SQLite, for calling the plain functions tasks call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.queue.app import create_celery
from conveyor.schemas import Job
from conveyor.settings import Settings
from conveyor.store.db import migrate
from conveyor.store.jobstore import NewJob
from worker.runtime import Runtime, open_runtime


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = open_runtime(settings, create_celery(settings))
    migrate(runtime.store.engine)
    yield runtime
    runtime.close()


def make_job(rt: Runtime, request: dict[str, object] | None = None, kind: str = "notification") -> Job:
    job, _ = rt.store.create(
        NewJob(
            kind=kind,
            request=request or {"channel": "log", "message": "hi"},
            task_name="notifications.send",
            queue="notifications",
        )
    )
    return job
