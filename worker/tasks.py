"""The Celery tasks. Each unpacks its arguments and calls a plain function; :func:`run` is what job tasks share."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import Reject
from celery.signals import setup_logging, task_postrun, worker_process_init, worker_process_shutdown, worker_shutdown

from conveyor import logs, metrics, names
from conveyor.queue.app import app
from conveyor.redis_client import REDIS_ERRORS
from conveyor.schemas import Job
from conveyor.settings import get_settings
from conveyor.store.db import UNAVAILABLE
from worker import housekeeping, ingest, notify
from worker import liveness as _liveness  # noqa: F401 - its signal handlers make the worker say it is alive
from worker.runner import Handler, InTransaction, JobBusy, Retryable, run_bundle, run_claimed, run_job
from worker.runtime import close_runtime, flush_announced, runtime

log = logs.get("conveyor.worker")


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    import os

    settings = get_settings()
    logs.configure(os.environ.get("CONVEYOR_PROCESS_NAME", "worker"), settings.log_level, settings.log_format)


@worker_process_init.connect
def _open(**_kwargs: Any) -> None:
    runtime()


@worker_process_shutdown.connect
def _close(**_kwargs: Any) -> None:
    close_runtime()


@worker_shutdown.connect
def _note_announced(**_kwargs: Any) -> None:
    """The worker stops (after its pool, on a warm shutdown): its threads and solo pools ran tasks in this process,
    so note the outcomes they announced (:mod:`worker.announced`) rather than leave them for ``reap_stale``."""
    flush_announced()


@task_postrun.connect
def _count_housekeeping(task: Any = None, state: str | None = None, retval: Any = None, **_kwargs: Any) -> None:
    """Count each housekeeping run (``conveyor_housekeeping_runs_total``) and log it (INFO when it did something or
    failed, DEBUG when it found nothing to do): housekeeping sends no task events and publishes no job events, so
    Flower never lists it; logs and metrics still show it."""
    name = getattr(task, "name", None) or ""
    if not name.startswith("housekeeping."):
        return
    level = logging.INFO if retval or state != "SUCCESS" else logging.DEBUG
    log.log(level, "housekeeping ran", task=name, outcome=state, done=retval if isinstance(retval, int) else None)
    try:
        metrics.count(runtime().redis, metrics.HOUSEKEEPING, task=name.partition(".")[2], outcome=(state or "").lower())
    except REDIS_ERRORS as exc:
        log.warning("housekeeping run not counted: Redis unavailable", task=name, error=repr(exc))


#: How long a delivery waits in place for a job store that does not answer before it puts its message back.
STORE_WAIT_SECONDS = 60.0


def run(job_id: str, handler: Handler, in_transaction: InTransaction | None = None, claimed: Job | None = None) -> None:
    """Run job ``job_id`` with ``handler`` inside a Celery task: what every job task of Conveyor does, and what a
    plugin's own task (loaded with Celery's ``--include``) calls to run its jobs the same way. ``claimed`` is the
    job when this delivery's claim is already made (:func:`run_many`).

    The message is acknowledged when the job's outcome is recorded, when the job needs nothing from this delivery
    (finished, cancelled, held by a live run, or its next attempt left to the dispatcher), or after a held retry's
    attempts. While the job store does not answer, the delivery waits in place (backoff up to 5 s) and, after
    ``STORE_WAIT_SECONDS``, puts its message back in the queue: a job store outage never loses a job. No broker ETA
    message is ever made.
    """
    rt = runtime()
    outage = _Outage()
    while True:
        try:
            if claimed is not None:
                job, claimed = claimed, None
                run_claimed(rt, job, handler, worker=_worker_name())
            else:
                run_job(rt, job_id, handler, in_transaction, worker=_worker_name())
            return
        except JobBusy:
            log.info("duplicate delivery dropped: a live run holds the job", job_id=job_id)
            return
        except Retryable as exc:
            if not exc.held:
                return
            time.sleep(exc.countdown or 0.0)
        except UNAVAILABLE as exc:
            outage.wait(exc, job_id=job_id)


def run_many(job_ids: list[str], handler: Handler, in_transaction: InTransaction) -> None:
    """Run a bundle of jobs (``conveyor/queue/messages.py``) whose work is a job-store write: all in one
    transaction (:func:`worker.runner.run_bundle`), acknowledged once it committed; a job of the bundle whose work
    is of another kind then runs on its own as :func:`run` runs it. If the bundle's transaction fails for any reason
    but a job store outage (which is waited out as :func:`run` waits), nothing of it was written and each job runs
    on its own, so that one job's failure is that job's alone."""
    rt = runtime()
    outage = _Outage()
    while True:
        try:
            rest = run_bundle(rt, job_ids, in_transaction, worker=_worker_name())
            break
        except UNAVAILABLE as exc:
            outage.wait(exc, jobs=len(job_ids))
        except Exception:
            log.exception("a bundle's transaction failed; running its jobs one by one", jobs=len(job_ids))
            for job_id in job_ids:
                run(job_id, handler, in_transaction)
            return
    for job in rest:
        run(job.job_id, handler, in_transaction, claimed=job)


class _Outage:
    """A delivery waiting in place for the job store: backoff from 0.5 s up to 5 s; after ``STORE_WAIT_SECONDS``
    the message goes back to its queue (``Reject``, requeued)."""

    def __init__(self) -> None:
        self.waited, self.pause = 0.0, 0.5

    def wait(self, exc: BaseException, **context: Any) -> None:
        if self.waited >= STORE_WAIT_SECONDS:
            log.warning("job store still unavailable; message put back", error=repr(exc), **context)
            raise Reject(exc, requeue=True) from exc
        log.warning("job store unavailable; trying again", in_seconds=round(self.pause, 1), error=repr(exc), **context)
        time.sleep(self.pause)
        self.waited, self.pause = self.waited + self.pause, min(self.pause * 2, 5.0)


def _worker_name() -> str | None:
    """The node name of the Celery worker running the current task (``None`` outside a task)."""
    from celery import current_task

    task = current_task._get_current_object()
    hostname = None if task is None else task.request.hostname
    return str(hostname) if hostname else None


@app.task(name=names.TASK_SEND_NOTIFICATION)
def send_notification(job_id: str) -> None:
    """Deliver the notification of job ``job_id``. At most one delivery per job, however often it runs."""
    run(job_id, notify.deliver, notify.deliver_in_transaction)


@app.task(name=names.TASK_SEND_NOTIFICATIONS)
def send_notifications(job_ids: list[str]) -> None:
    """Deliver the ``log`` notifications of a bundle of jobs, in one transaction. At most one delivery per job."""
    run_many(job_ids, notify.deliver, notify.deliver_in_transaction)


@app.task(name=names.TASK_INGEST_UPLOAD)
def ingest_upload(job_id: str) -> None:
    """Verify and store the upload of job ``job_id``, with progress events. Re-running it is harmless."""
    run(job_id, ingest.ingest)


@app.task(name=names.TASK_DISPATCH_PENDING)
def dispatch_pending() -> int:
    """Send the tasks of recorded jobs whose dispatch did not complete (the api crashed, Redis was down)."""
    return housekeeping.dispatch_pending(runtime())


@app.task(name=names.TASK_REAP_STALE)
def reap_stale() -> int:
    """Send again the tasks of started jobs whose run died (heartbeat stale), for a live worker to take over."""
    return housekeeping.reap_stale(runtime())


@app.task(name=names.TASK_FIRE_SCHEDULES)
def fire_schedules() -> int:
    """Fire the users' schedules that are due, each as an ordinary job."""
    return housekeeping.fire_schedules(runtime())


@app.task(name=names.TASK_PURGE_SPOOL)
def purge_spool() -> int:
    """Delete stale spool files that no live job needs."""
    return housekeeping.purge_spool(runtime())


@app.task(name=names.TASK_TRIM_EVENTS)
def trim_events() -> int:
    """Drop events older than the retention age from the stream."""
    return housekeeping.trim_events(runtime())
