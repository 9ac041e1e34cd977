"""Running one job: claim it, keep its heartbeat, announce each change, record the outcome. The same for every kind
of job.

Delivery is at least once, and a job is run by at most one live run at a time: the claim is one conditional UPDATE,
and a run proves it is alive by its heartbeat (``worker/heartbeat.py``). Every outcome is written only if no later
run has claimed it since, so a run that was taken for dead cannot overwrite its successor's result.

A run costs at most two job-store transactions, each shared with the other runs of the process (the group writer,
``conveyor/store/writer.py``): the claim, and the outcome together with what the run did (its effect and delivery
attempt, :class:`Recorded`). A job whose work is itself a job-store write (a ``log`` notification) is claimed, done
and recorded in one transaction, and a bundle of such jobs (:func:`run_bundle`) all in one. A run's events are
published once its writes are committed, in one round trip.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from conveyor import logs, metrics
from conveyor.events import job_event
from conveyor.redis_client import REDIS_ERRORS
from conveyor.schemas import Event, EventType, Job, JobStatus
from conveyor.settings import Settings
from conveyor.store import writes
from conveyor.store.db import UNAVAILABLE
from conveyor.store.rows import utcnow
from worker.heartbeat import Heartbeat
from worker.runtime import Runtime

log = logs.get("conveyor.worker")
T = TypeVar("T")

#: The ``reason`` of the ``job.failed`` event of a job stopped because its runs kept dying.
POISONED = "poisoned"
#: Redis errors that mean "not now" (unreachable, or refusing writes: ``MISCONF`` on a full disk): a handler meeting
#: one (a ``websocket`` notification's topic message) is retried, not failed.
REDIS_DOWN = REDIS_ERRORS
#: Writes to make in the transaction that records a run's outcome.
Writes = Callable[[sa.Connection], None]


@dataclass(frozen=True)
class Recorded:
    """What a handler did, recorded in the same transaction as the job's success: ``write`` makes the run's records
    (its effect in the ledger, its delivery attempt) and returns the job's result."""

    write: Callable[[sa.Connection], dict[str, Any]]


class Retryable(Exception):
    """A failure worth another attempt (a timeout, a busy peer); anything else fails the job at once. ``also`` are
    writes to make with the job's ``retrying`` record (the failed attempt's log row).

    When :func:`run_job` re-raises it, ``countdown`` is the wait before the next attempt and ``held`` says whether
    the caller makes that attempt itself after the wait (else the dispatcher sends it when due).
    """

    def __init__(self, message: str, countdown: float | None = None, also: Writes | None = None) -> None:
        super().__init__(message)
        self.countdown = countdown
        self.held = False
        self.also = also


class Failed(Exception):
    """A failure that another attempt would not fix (the peer refused the request): the job fails at once with
    this message, without a traceback in the log. ``also`` are writes to make with the job's ``failed`` record."""

    def __init__(self, message: str, also: Writes | None = None) -> None:
        super().__init__(message)
        self.also = also


def describe(exc: BaseException) -> str:
    """An error as a job's ``error`` shows it: its type and message, and for a database error the driver's own
    first line only (never the SQL statement or its parameters, which may hold the request's data)."""
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
        exc = exc.orig
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": ")


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


#: Progress is reported at least at every ``STEP`` percent, however fast the job goes.
STEP = 10.0


class Progress:
    """Reports a job's progress: at most every ``min_interval`` seconds, except that each :data:`STEP` percent is
    reported however fast the job goes (so a short job still shows its steps); never twice the same whole
    percent."""

    def __init__(self, rt: Runtime, job: Job, min_interval: float = 0.25) -> None:
        self.rt = rt
        self.job = job
        self.min_interval = min_interval
        self._last_sent = 0.0
        self._last_value = -1.0

    def __call__(self, percent: float) -> None:
        now = time.monotonic()
        if int(percent) == int(self._last_value):
            return
        if now - self._last_sent < self.min_interval and percent - self._last_value < STEP:
            return
        self._last_sent, self._last_value = now, percent
        if self.rt.store.set_progress(self.job.job_id, percent):
            try:
                self.rt.events.publish(job_event(self.job, EventType.PROGRESS, progress=round(percent, 2)))
            except REDIS_DOWN as exc:  # the job store holds the progress; a lost progress event is not worth a retry
                log.warning("progress event lost: Redis unavailable", job_id=self.job.job_id, error=repr(exc))


#: A job's work: returns the job's result, or :class:`Recorded` to record what it did with the outcome.
Handler = Callable[[Runtime, Job, Progress], "dict[str, Any] | Recorded"]
#: The work of jobs whose work is itself a job-store write: done inside the claim's transaction, for every job
#: claimed there at once; for each job, in order, its result, :class:`Failed`, or ``None`` when that job's work is
#: not of that kind (the job then runs through its :data:`Handler`).
InTransaction = Callable[[sa.Connection, Sequence[Job]], "list[dict[str, Any] | Failed | None]"]


@dataclass
class _Claim:
    """What the claim's transaction found: the job this run now holds, or the job as it is (not claimed); and, when
    the run already ended inside that transaction, its outcome."""

    job: Job | None = None
    current: Job | None = None
    done: Job | None = None
    reason: str | None = None


def _claim(
    connection: sa.Connection, job_ids: Sequence[str], settings: Settings, in_transaction: InTransaction | None
) -> list[_Claim]:
    """Claim the jobs of ``job_ids`` (a few statements for all of them) and, with ``in_transaction``, do and record
    the work of those whose work is a job-store write; one :class:`_Claim` per job id, in order."""
    stale_before = utcnow() - timedelta(seconds=settings.dead_after_seconds)
    claimed = writes.claim_many(connection, job_ids, stale_before=stale_before)
    missing = [job_id for job_id in job_ids if job_id not in claimed]
    current = writes.get_many(connection, missing)
    claims = {job_id: _Claim(current=current.get(job_id)) for job_id in missing}
    runnable = []
    for job in claimed.values():
        if job.crashes >= settings.max_crashes:
            error = f"{POISONED}: its worker died {job.crashes} times while running it"
            claims[job.job_id] = _Claim(
                job, done=writes.fail(connection, job.job_id, job.attempts, error), reason=POISONED
            )
        else:
            runnable.append(job)
    outcomes = in_transaction(connection, runnable) if in_transaction is not None else [None] * len(runnable)
    succeeded = []
    for job, outcome in zip(runnable, outcomes, strict=True):
        if isinstance(outcome, Failed):
            if outcome.also is not None:
                outcome.also(connection)
            claims[job.job_id] = _Claim(job, done=writes.fail(connection, job.job_id, job.attempts, str(outcome)))
        elif outcome is None:
            claims[job.job_id] = _Claim(job)
        else:
            succeeded.append((job, outcome))
    for (job, _), done in zip(succeeded, writes.succeed_many(connection, succeeded), strict=True):
        claims[job.job_id] = _Claim(job, done=done)
    return [claims[job_id] for job_id in job_ids]


def run_job(
    rt: Runtime,
    job_id: str,
    handler: Handler,
    in_transaction: InTransaction | None = None,
    worker: str | None = None,
) -> Job | None:
    """Run the job once this delivery may run it; record and announce the outcome.

    A finished or cancelled job, or a retrying one whose next attempt is not due, is left alone (a duplicate
    delivery is harmless). A job held by a live run raises :class:`JobBusy`. A job whose run died (its heartbeat is
    older than ``dead_after_seconds``) is taken over, and one whose runs died ``max_crashes`` times is failed as
    :data:`POISONED` without running again. With ``in_transaction``, a job whose work is a job-store write is
    done in the claim's transaction; otherwise ``handler`` runs, with a heartbeat keeping the claim alive. The
    ``job.started`` event names ``worker`` (the Celery node running it) when given.

    ``Retryable`` puts the job in ``retrying`` and is re-raised with ``countdown`` (its own, at most
    ``retry_backoff_cap``, else exponential backoff with jitter) and ``held`` set; the ``job.retrying`` event
    carries the attempt, the error and ``next_attempt_at``. After ``max_attempts`` the job fails with the last
    error. :class:`Failed` or any other exception fails the job at once with its message. A job store that stops
    answering mid-run is retried for a while; if it stays away the error propagates (the job is released for a
    new attempt when the store answers again in time, else it is recovered as a dead run).
    """
    try:
        claim = rt.store.write(lambda connection: _claim(connection, [job_id], rt.settings, in_transaction)[0])
    except UNAVAILABLE:
        raise
    except Exception:  # the work done in the claim's transaction raised: claim alone, then run it as a handler
        log.exception("job's in-transaction work failed; running it apart", job_id=job_id)
        claim = rt.store.write(lambda connection: _claim(connection, [job_id], rt.settings, None)[0])
    job = claim.job
    if job is None:
        _unclaimed(job_id, claim.current)
        return claim.current
    _taken_over(job)
    if claim.done is None and claim.reason is None:
        return run_claimed(rt, job, handler, worker)
    announced = _ended(job, claim, worker)
    if announced is None:
        return _not_ours(rt, job_id)
    _announce(rt, *announced[0], counted=announced[1])
    return claim.done


def run_claimed(rt: Runtime, job: Job, handler: Handler, worker: str | None = None) -> Job | None:
    """The rest of :func:`run_job` once this run holds ``job`` (claimed, its work not done in the claim's
    transaction): announce the start, run ``handler`` with a heartbeat, record and announce the outcome."""
    _announce(rt, job_event(job, attempt=job.attempts, worker=worker), counted=(job,))
    log.info("job started", job_id=job.job_id, owner=job.owner, kind=job.kind, attempt=job.attempts)
    with Heartbeat(rt.store, job.job_id, job.attempts, rt.settings.heartbeat_seconds):
        return _attempt(rt, job, handler)


def run_bundle(
    rt: Runtime, job_ids: Sequence[str], in_transaction: InTransaction, worker: str | None = None
) -> list[Job]:
    """Run jobs whose work is a job-store write all in one transaction, each claimed, done and recorded as
    :func:`run_job` does it with ``in_transaction``; then publish every event in one round trip, in the jobs'
    order. Jobs that may not run now (held by a live run, finished, cancelled, not due, without a row) are left
    alone, as :func:`run_job` leaves them.

    Returns the jobs the transaction claimed whose work is not of that kind: the caller runs each with
    :func:`run_claimed`. Raises what the transaction raised, in which case none of it was written.
    """
    job_ids = list(dict.fromkeys(job_ids))
    claims = rt.store.write(lambda connection: _claim(connection, job_ids, rt.settings, in_transaction))
    events: list[Event] = []
    counted: list[Job] = []
    rest: list[Job] = []
    for job_id, claim in zip(job_ids, claims, strict=True):
        job = claim.job
        if job is None:
            try:
                _unclaimed(job_id, claim.current)
            except JobBusy:
                log.info("duplicate delivery dropped: a live run holds the job", job_id=job_id)
            continue
        _taken_over(job)
        if claim.done is None and claim.reason is None:
            rest.append(job)
            continue
        announced = _ended(job, claim, worker)
        if announced is None:
            _not_ours(rt, job_id)
            continue
        events.extend(announced[0])
        counted.extend(announced[1])
    _announce(rt, *events, counted=counted)
    return rest


def _unclaimed(job_id: str, current: Job | None) -> None:
    """Say why a delivery found nothing to run; raise :class:`JobBusy` when a live run holds the job."""
    if current is None:
        log.error("no job row for task; nothing done", job_id=job_id)
    elif current.status is JobStatus.STARTED:
        raise JobBusy(job_id)
    else:
        log.info("delivery skipped", job_id=job_id, status=current.status)


def _taken_over(job: Job) -> None:
    if job.crashes:
        log.warning("job taken over from a dead run", job_id=job.job_id, attempt=job.attempts, crashes=job.crashes)


def _ended(job: Job, claim: _Claim, worker: str | None) -> tuple[list[Event], list[Job]] | None:
    """The run ended in the claim's transaction: the events announcing its start and outcome and the jobs whose
    transitions they count; ``None`` when the outcome was not this run's to write."""
    done = claim.done
    if done is None:
        return None
    if claim.reason is not None:
        log.warning("job failed", job_id=job.job_id, owner=job.owner, reason=claim.reason, error=done.error)
        return [job_event(done, attempt=done.attempts, reason=claim.reason)], [done]
    started = job_event(job, attempt=job.attempts, worker=worker)
    return [started, job_event(done, attempt=done.attempts)], [job, done]


def _attempt(rt: Runtime, job: Job, handler: Handler) -> Job | None:
    job_id = job.job_id
    try:
        try:
            outcome = handler(rt, job, Progress(rt, job))
        except REDIS_DOWN as exc:
            raise Retryable(f"Redis unavailable: {exc}") from exc
    except UNAVAILABLE:
        _release(rt, job)
        raise
    except Retryable as exc:
        if job.attempts < rt.settings.max_attempts:
            return _schedule_retry(rt, job, exc)
        return _fail(rt, job, f"{exc} (after {job.attempts} attempts)", exc.also)
    except Failed as exc:
        log.warning("job failed", job_id=job_id, owner=job.owner, error=str(exc))
        return _fail(rt, job, str(exc), exc.also)
    except Exception as exc:
        log.exception("job failed", job_id=job_id, owner=job.owner)
        return _fail(rt, job, describe(exc))

    def succeed(connection: sa.Connection) -> Job | None:
        result = outcome.write(connection) if isinstance(outcome, Recorded) else outcome
        return writes.succeed(connection, job_id, job.attempts, result)

    done = persist(rt, lambda: rt.store.write(succeed))
    if done is None:
        return _not_ours(rt, job_id)
    _announce(rt, job_event(done, attempt=done.attempts), counted=(done,))
    log.info("job succeeded", job_id=job_id, owner=job.owner)
    return done


def _schedule_retry(rt: Runtime, job: Job, exc: Retryable) -> Job | None:
    settings = rt.settings
    cap = settings.retry_backoff_cap
    if exc.countdown is None:
        exc.countdown = backoff(job.attempts - 1, settings.retry_backoff_base, cap)
    countdown = exc.countdown = max(0.0, min(exc.countdown, cap))
    exc.held = held_retry(settings, countdown)

    def retry(connection: sa.Connection) -> Job | None:
        if exc.also is not None:
            exc.also(connection)
        return writes.retry(
            connection, job.job_id, attempt=job.attempts, error=str(exc), delay=countdown, held=exc.held
        )

    retrying = persist(rt, lambda: rt.store.write(retry))
    if retrying is None:
        return _not_ours(rt, job.job_id)
    event = job_event(retrying, attempt=job.attempts)
    _announce(rt, event.model_copy(update={"next_attempt_at": event.ts + countdown}), counted=(retrying,))
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
        event = job_event(released, attempt=job.attempts).model_copy(update={"next_attempt_at": time.time()})
        _announce(rt, event, written=(released,))


def _fail(rt: Runtime, job: Job, error: str, also: Writes | None = None) -> Job | None:
    def fail(connection: sa.Connection) -> Job | None:
        if also is not None:
            also(connection)
        return writes.fail(connection, job.job_id, job.attempts, error)

    failed = persist(rt, lambda: rt.store.write(fail))
    if failed is None:
        return _not_ours(rt, job.job_id)
    _announce(rt, job_event(failed, attempt=failed.attempts), counted=(failed,))
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


def _announce(rt: Runtime, *events: Event, counted: Sequence[Job] = (), written: Sequence[Job] | None = None) -> None:
    """Publish ``events``, in order, and count the transitions of ``counted`` (:mod:`conveyor.metrics`), in one
    round trip (:meth:`conveyor.events.EventLog.pipeline`: a reader blocked on the stream reads them at once); then
    note that the outcomes of ``written`` (default: ``counted``) are announced (:mod:`worker.announced`). The job
    store, not the stream, is the truth: if Redis stays unreachable through the client's retries, the events are
    logged as not published yet (their counts are lost) and the job goes on; its row stays marked, and beat's
    ``reap_stale`` publishes its latest state later."""
    try:
        pipe = rt.events.pipeline(len(events))
        for event in events:
            rt.events.add_to(pipe, event)
        metrics.count_jobs(pipe, counted)
        pipe.execute()
    except REDIS_DOWN as exc:
        for event in events:
            log.error("event not published: Redis unavailable", job_id=event.job_id, type=event.type, error=repr(exc))
        return
    rt.announced.note(counted if written is None else written)
