"""A run's heartbeat: it moves while the job runs and stops with the run. Real Redis and SQLite."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from conveyor.schemas import Job, JobStatus
from conveyor.store import db
from tests.worker.conftest import make_job
from worker.runner import Progress, run_job
from worker.runtime import Runtime


def heartbeat_at(rt: Runtime, job_id: str) -> Any:
    with rt.store.engine.connect() as connection:
        return connection.execute(sa.select(db.jobs.c.heartbeat_at).where(db.jobs.c.id == job_id)).scalar_one()


def test_a_running_job_keeps_its_heartbeat_fresh(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"heartbeat_seconds": 0.05})
    job = make_job(rt)
    seen: list[Any] = []

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        seen.append(heartbeat_at(rt, job.job_id))
        for _ in range(2):  # the heartbeat moves twice while the job runs (or the run fails here)
            deadline = time.monotonic() + 30
            while (beat := heartbeat_at(rt, job.job_id)) == seen[-1]:
                assert time.monotonic() < deadline, f"the heartbeat did not move while the job ran: {seen}"
                time.sleep(0.01)
            seen.append(beat)
        return {}

    done = run_job(rt, job.job_id, handler)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert seen[0] < seen[1] < seen[2], seen
    after = heartbeat_at(rt, job.job_id)
    time.sleep(4 * rt.settings.heartbeat_seconds)  # the behaviour under test: four beats' time without a beat
    assert heartbeat_at(rt, job.job_id) == after, "the heartbeat goes on after the run ended"
