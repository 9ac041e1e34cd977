"""Running a job: claim, events, outcome, duplicates and retries."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.events import decode
from conveyor.names import EVENTS_STREAM
from conveyor.schemas import Job, JobStatus
from tests.worker.conftest import make_job
from worker.notify import deliver
from worker.runner import Progress, Retryable, run_job
from worker.runtime import Runtime


def events_of(rt: Runtime, job_id: str) -> list[str]:
    entries = rt.redis.xrange(EVENTS_STREAM)
    return [e.type.value for e in (decode(i, f) for i, f in entries) if e.job_id == job_id]  # type: ignore[union-attr]


def test_success_records_result_and_announces_each_step(rt: Runtime) -> None:
    job = make_job(rt)
    done = run_job(rt, job.job_id, deliver)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.result is not None and done.result["channel"] == "log"
    assert events_of(rt, job.job_id) == ["job.started", "job.succeeded"]
    assert rt.ledger.notification(job.job_id)["message"] == "hi"  # type: ignore[index]


def test_a_second_delivery_does_nothing(rt: Runtime) -> None:
    job = make_job(rt)
    calls: list[str] = []

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        calls.append(job.job_id)
        return {}

    run_job(rt, job.job_id, handler)
    again = run_job(rt, job.job_id, handler)
    assert calls == [job.job_id]
    assert again is not None and again.status is JobStatus.SUCCEEDED and again.attempts == 1


def test_an_exception_fails_the_job_with_its_message(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise ValueError("bad thing")

    failed = run_job(rt, job.job_id, handler)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == "ValueError: bad thing"
    assert events_of(rt, job.job_id)[-1] == "job.failed"


def test_retryable_retries_until_max_attempts(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"max_attempts": 2})
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        raise Retryable("busy")

    with pytest.raises(Retryable):
        run_job(rt, job.job_id, handler)
    current = rt.store.get(job.job_id)
    assert current is not None and current.status is JobStatus.RETRYING and current.error == "busy"
    final = run_job(rt, job.job_id, handler)
    assert final is not None and final.status is JobStatus.FAILED and final.attempts == 2
    assert events_of(rt, job.job_id) == ["job.started", "job.retrying", "job.started", "job.failed"]


def test_progress_is_recorded_and_throttled(rt: Runtime) -> None:
    job = make_job(rt)

    def handler(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
        progress.min_interval = 0
        for percent in (10, 10.5, 20, 30):
            progress(percent)
        return {}

    run_job(rt, job.job_id, handler)
    assert events_of(rt, job.job_id) == ["job.started", "job.progress", "job.progress", "job.progress", "job.succeeded"]


def test_a_task_without_a_row_does_nothing(rt: Runtime) -> None:
    assert run_job(rt, "01a207a2-fb69-7023-9247-baa030751cb3", deliver) is None


def test_a_delivery_for_a_job_held_elsewhere_asks_to_look_again(rt: Runtime) -> None:
    from datetime import timedelta

    from conveyor.store.jobstore import utcnow
    from worker.runner import JobBusy

    job = make_job(rt)
    assert rt.store.claim(job.job_id, stale_before=utcnow() - timedelta(hours=1)) is not None
    with pytest.raises(JobBusy):
        run_job(rt, job.job_id, deliver)
    assert rt.ledger.notification(job.job_id) is None
