"""A run's heartbeat: it moves while the job runs and stops with the run. Real Redis and SQLite."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.schemas import Job, JobStatus
from conveyor.store import db
from conveyor.store.rows import utcnow
from tests.worker.conftest import make_job
from worker import heartbeat
from worker.heartbeat import Heartbeat
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


def test_the_heartbeat_thread_survives_an_unexpected_error(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error nobody expected (not the job store being unavailable) in one beat is logged; the thread beats on."""
    job = make_job(rt)
    claimed = rt.store.claim(job.job_id, stale_before=utcnow() - timedelta(seconds=60))
    assert claimed is not None
    real = heartbeat._Beater._touch
    calls = {"n": 0}

    def flaky(due: list[Heartbeat]) -> list[bool]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real(due)

    monkeypatch.setattr(heartbeat._Beater, "_touch", staticmethod(flaky))
    before = heartbeat_at(rt, job.job_id)
    with Heartbeat(rt.store, job.job_id, claimed.attempts, interval=0.05):
        deadline = time.monotonic() + 10
        while heartbeat_at(rt, job.job_id) == before or calls["n"] < 2:
            assert time.monotonic() < deadline, f"no beat after the injected error ({calls['n']} calls)"
            time.sleep(0.05)
    assert calls["n"] >= 2
