"""Running one job: claim it, keep its heartbeat, announce each change, record the outcome. The same for every kind
of job.

Delivery is at least once, and a job is run by at most one live run at a time: the claim is one conditional UPDATE,
and a run proves it is alive by its heartbeat (``worker/heartbeat.py``). Every outcome is written only if no later
run has claimed the job since, so a run that was taken for dead cannot overwrite its successor's result.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import redis

from conveyor import logs
from conveyor.events import job_event
from conveyor.schemas import Event, EventType, Job, JobStatus
from conveyor.settings import Settings
from conveyor.store.jobstore import UNAVAILABLE, utcnow
from worker.heartbeat import Heartbeat
from worker.runtime import Runtime

log = logs.get("conveyor.worker")
T = TypeVar("T")

#: The ``reason`` of the ``job.failed`` event of a job stopped because its runs kept dying.
POISONED = "poisoned"
#: Redis errors that mean "not reachable now": a handler meeting one (a progress event) is retried, not failed.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Retryable(Exception):
    """A failure worth another attempt (a timeout, a busy peer); anything else fails the job at once.

    When :func:`run_job` re-raises it, ``countdown`` is the wait before the next attempt and ``held`` says whether
    the caller makes that attempt itself after the wait (else the dispatcher sends it when due).
    """

    def __init__(self, message: str, countdown: float | None = None) -> None:
        super().__init__(message)
        self.countdown = countdown
        self.held = False


class Failed(Exception):
    """A failure that another attempt would not fix (the peer refused the request): the job fails at once with
    this message, without a traceback in the log."""


def backoff(retries: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: a random delay up to ``base * 2**retries``, at most ``cap``."""
    return random.uniform(0, min(cap, base * 2**retries))  # noqa: S311 - jitter, not a secret


def held_retry(settings: Settings, countdown: float) -> bool:
    """Whether a run waits for its job's next attempt and makes it itself: when the wait is no longer than the
    dispatcher's tick, which could not keep it more precisely. Longer waits are left to the dispatcher."""
    return countdown <= settings.dispatch_interval_seconds


class JobBusy(Exception):
    """The job is held by a run whose heartbeat is fresh: this delivery is a duplicate and does nothing. If that run
    dies, its heartbeat goes stale and beat's ``reap_stale`` sends the job again."""


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

    A finished or cancelled job, or a retrying one whose next attempt is not due, is left alone (a duplicate
    delivery is harmless). A job held by a live run raises :class:`JobBusy`. A job whose run died (its heartbeat is
    older than ``dead_after_seconds``) is taken over, and one whose runs died ``max_crashes`` times is failed as
    :data:`POISONED` without running again. While the handler runs, a heartbeat keeps the claim alive.

    ``Retryable`` puts the job in ``retrying`` and is re-raised with ``countdown`` (its own, at most
    ``retry_backoff_cap``, else exponential backoff with jitter) and ``held`` set; the ``job.retrying`` event
    carries the attempt, the error and ``next_attempt_at``. After ``max_attempts`` the job fails with the last
    error. :class:`Failed` or any other exception fails the job at once with its message. A job store that stops
    answering mid-run is retried for a while; if it stays away the error propagates (the job is released for a
    new attempt when the store answers again in time, else it is recovered as a dead run).
    """
    settings = rt.settings
    job = rt.store.claim(job_id, stale_before=utcnow() - timedelta(seconds=settings.dead_after_seconds))
    if job is None:
        current = rt.store.get(job_id)
        if current is None:
            log.error("no job row for task; nothing done", job_id=job_id)
        elif current.status is JobStatus.STARTED:
            raise JobBusy(job_id)
        else:
            log.info("delivery skipped", job_id=job_id, status=current.status)
        return current
    if job.crashes:
        log.warning("job taken over from a dead run", job_id=job_id, attempt=job.attempts, crashes=job.crashes)
    if job.crashes >= settings.max_crashes:
        error = f"{POISONED}: its worker died {job.crashes} times while running it"
        return _fail(rt, job, error, reason=POISONED)
    _announce(rt, job_event(job, attempt=job.attempts))
    log.info("job started", job_id=job_id, owner=job.owner, kind=job.kind, attempt=job.attempts)
    with Heartbeat(rt.store, job_id, job.attempts, settings.heartbeat_seconds):
        return _attempt(rt, job, handler)


def _attempt(rt: Runtime, job: Job, handler: Handler) -> Job | None:
    job_id = job.job_id
    try:
        try:
            result = handler(rt, job, Progress(rt, job))
        except REDIS_DOWN as exc:
            raise Retryable(f"Redis unavailable: {exc}") from exc
    except UNAVAILABLE:
        _release(rt, job)
        raise
    except Retryable as exc:
        if job.attempts < rt.settings.max_attempts:
            return _schedule_retry(rt, job, exc)
        return _fail(rt, job, f"{exc} (after {job.attempts} attempts)")
    except Failed as exc:
        log.warning("job failed", job_id=job_id, owner=job.owner, error=str(exc))
        return _fail(rt, job, str(exc))
    except Exception as exc:
        log.exception("job failed", job_id=job_id, owner=job.owner)
        return _fail(rt, job, f"{type(exc).__name__}: {exc}")
    done = persist(
        rt,
        lambda: rt.store.transition(
            job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.STARTED], result=result, attempt=job.attempts
        ),
    )
    if done is None:
        return _not_ours(rt, job_id)
    _announce(rt, job_event(done, attempt=done.attempts))
    log.info("job succeeded", job_id=job_id, owner=job.owner)
    return done


def _schedule_retry(rt: Runtime, job: Job, exc: Retryable) -> Job | None:
    settings = rt.settings
    cap = settings.retry_backoff_cap
    if exc.countdown is None:
        exc.countdown = backoff(job.attempts - 1, settings.retry_backoff_base, cap)
    countdown = exc.countdown = max(0.0, min(exc.countdown, cap))
    exc.held = held_retry(settings, countdown)
    retrying = persist(
        rt,
        lambda: rt.store.schedule_retry(
            job.job_id, attempt=job.attempts, error=str(exc), delay=countdown, held=exc.held
        ),
    )
    if retrying is None:
        return _not_ours(rt, job.job_id)
    event = job_event(retrying, attempt=job.attempts)
    _announce(rt, event.model_copy(update={"next_attempt_at": event.ts + countdown}))
    log.warning(
        "job will retry", job_id=job.job_id, attempt=job.attempts, in_seconds=round(countdown, 2), error=str(exc)
    )
    raise exc


def _release(rt: Runtime, job: Job) -> None:
    """The job store failed mid-run: hand the job back for a new attempt, if the store answers again in time."""
    try:
        released = persist(
            rt,
            lambda: rt.store.schedule_retry(
                job.job_id, attempt=job.attempts, error="job store unavailable", delay=0.0, held=True
            ),
        )
    except UNAVAILABLE as exc:
        log.warning("job store still unavailable; job left to the dead-run reaper", job_id=job.job_id, error=repr(exc))
        return
    if released is not None:
        log.warning("job store failed mid-run; job released for another attempt", job_id=job.job_id)
        _announce(rt, job_event(released, attempt=job.attempts).model_copy(update={"next_attempt_at": time.time()}))


def _fail(rt: Runtime, job: Job, error: str, reason: str | None = None) -> Job | None:
    failed = persist(
        rt,
        lambda: rt.store.transition(
            job.job_id, JobStatus.FAILED, allowed_from=[JobStatus.STARTED], error=error, attempt=job.attempts
        ),
    )
    if failed is None:
        return _not_ours(rt, job.job_id)
    if reason is not None:
        log.warning("job failed", job_id=job.job_id, owner=job.owner, reason=reason, error=error)
    _announce(rt, job_event(failed, attempt=failed.attempts, reason=reason))
    return failed


def _not_ours(rt: Runtime, job_id: str) -> Job | None:
    current = rt.store.get(job_id)
    status = current.status.value if current is not None else "unknown"
    log.info("job changed meanwhile (cancelled or taken over); outcome not recorded", job_id=job_id, status=status)
    return current


def persist(rt: Runtime, write: Callable[[], T]) -> T:
    """``write()``, tried again while the job store does not answer, for up to ``dead_after_seconds`` (the run's
    heartbeat goes on meanwhile). For writes that must not be lost once their effect happened: an outcome, or the
    record that a notification was delivered."""
    deadline = time.monotonic() + rt.settings.dead_after_seconds
    delay = 0.1
    while True:
        try:
            return write()
        except UNAVAILABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job store unavailable; trying again", in_seconds=round(delay, 1), error=repr(exc))
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _announce(rt: Runtime, event: Event) -> None:
    """Publish ``event``. The job store, not the stream, is the truth: if Redis stays unreachable through the
    client's retries, the event is logged as lost and the job goes on."""
    try:
        rt.events.publish(event)
    except REDIS_DOWN as exc:
        log.error("event lost: Redis unavailable", job_id=event.job_id, type=event.type, error=repr(exc))
