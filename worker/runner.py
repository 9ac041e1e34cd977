"""Running one job: claim it, announce each change, record the outcome. The same for every kind of job."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from conveyor.events import job_event
from conveyor.jobstore import utcnow
from conveyor.schemas import EventType, Job, JobStatus
from worker.runtime import Runtime

log = logging.getLogger("conveyor.worker")


class Retryable(Exception):
    """A failure worth another attempt (a timeout, a busy peer); anything else fails the job at once."""

    def __init__(self, message: str, countdown: float | None = None) -> None:
        super().__init__(message)
        self.countdown = countdown


class Failed(Exception):
    """A failure that another attempt would not fix (the peer refused the request): the job fails at once with
    this message, without a traceback in the log."""


def backoff(retries: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: a random delay up to ``base * 2**retries``, at most ``cap``."""
    return random.uniform(0, min(cap, base * 2**retries))


class JobBusy(Exception):
    """The job is marked started by a run that may still be alive: look again later, don't drop the message."""


class Progress:
    """Reports a job's progress; throttled so that a fast loop cannot flood the store or the stream."""

    def __init__(self, rt: Runtime, job: Job, min_interval: float = 0.25) -> None:
        self.rt = rt
        self.job = job
        self.min_interval = min_interval
        self._last_sent = 0.0
        self._last_value = -1.0

    def __call__(self, percent: float) -> None:
        now = time.monotonic()
        if now - self._last_sent < self.min_interval or int(percent) == int(self._last_value):
            return
        self._last_sent, self._last_value = now, percent
        if self.rt.store.set_progress(self.job.job_id, percent):
            event = job_event(self.job, EventType.PROGRESS).model_copy(update={"progress": round(percent, 2)})
            self.rt.events.publish(event)


Handler = Callable[[Runtime, Job, Progress], dict[str, Any]]


def run_job(rt: Runtime, job_id: str, handler: Handler) -> Job | None:
    """Run ``handler`` for the job once this delivery may run it; record and announce the outcome.

    A finished or cancelled job is left alone (a duplicate delivery is harmless). A job that another run
    holds raises :class:`JobBusy`: the task looks again later, so that if that run died (its row goes stale
    after the task time limit) this delivery takes the job over instead of dropping it.
    ``Retryable`` puts the job in ``retrying`` and is re-raised, its ``countdown`` set (its own, at most
    ``retry_backoff_cap``, else exponential backoff with jitter), for the task to schedule the next attempt; the
    ``job.retrying`` event carries the attempt, the error and ``next_attempt_at``. After ``max_attempts`` the job
    fails with the last error. :class:`Failed` or any other exception fails the job at once with its message.
    """
    stale_before = utcnow() - timedelta(seconds=rt.settings.task_time_limit)
    job = rt.store.claim(job_id, stale_before=stale_before)
    if job is None:
        current = rt.store.get(job_id)
        if current is None:
            log.error("no job row for task job_id=%s; nothing done", job_id)
        elif current.status is JobStatus.STARTED:
            raise JobBusy(job_id)
        else:
            log.info("delivery skipped job_id=%s status=%s", job_id, current.status)
        return current
    rt.events.publish(job_event(job, attempt=job.attempts))
    log.info("job started job_id=%s kind=%s attempt=%d", job_id, job.kind, job.attempts)
    try:
        result = handler(rt, job, Progress(rt, job))
    except Retryable as exc:
        if job.attempts < rt.settings.max_attempts:
            settings = rt.settings
            cap = settings.retry_backoff_cap
            if exc.countdown is None:
                exc.countdown = backoff(job.attempts - 1, settings.retry_backoff_base, cap)
            exc.countdown = max(0.0, min(exc.countdown, cap))
            retrying = rt.store.transition(job_id, JobStatus.RETRYING, allowed_from=[JobStatus.STARTED], error=str(exc))
            if retrying is not None:
                event = job_event(retrying, attempt=job.attempts)
                rt.events.publish(event.model_copy(update={"next_attempt_at": event.ts + exc.countdown}))
            log.warning(
                "job will retry job_id=%s attempt=%d in=%.2fs error=%r", job_id, job.attempts, exc.countdown, str(exc)
            )
            raise
        return _fail(rt, job_id, f"{exc} (after {job.attempts} attempts)")
    except Failed as exc:
        log.warning("job failed job_id=%s error=%r", job_id, str(exc))
        return _fail(rt, job_id, str(exc))
    except Exception as exc:
        log.exception("job failed job_id=%s", job_id)
        return _fail(rt, job_id, f"{type(exc).__name__}: {exc}")
    done = rt.store.transition(job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED], result=result)
    if done is None:
        log.info("job finished but was cancelled meanwhile job_id=%s", job_id)
        return rt.store.get(job_id)
    rt.events.publish(job_event(done, attempt=done.attempts))
    log.info("job succeeded job_id=%s", job_id)
    return done


def _fail(rt: Runtime, job_id: str, error: str) -> Job | None:
    failed = rt.store.transition(job_id, JobStatus.FAILED, allowed_from=[JobStatus.STARTED], error=error)
    if failed is not None:
        rt.events.publish(job_event(failed, attempt=failed.attempts))
    return failed
