"""The Celery tasks. Each unpacks its arguments, calls a plain function, and handles retry."""

from __future__ import annotations

import random
from typing import Any

from celery import Task
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from conveyor import logs, names
from conveyor.celery_app import app
from conveyor.settings import get_settings
from worker import housekeeping, ingest, notify
from worker.runner import Handler, JobBusy, Retryable, backoff, run_job
from worker.runtime import close_runtime, runtime


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


#: How long a delivery that found its job held by another run waits before looking again.
BUSY_RECHECK_SECONDS = 30.0


def _run(task: Task, job_id: str, handler: Handler) -> None:
    try:
        run_job(runtime(), job_id, handler)
    except JobBusy as exc:
        raise task.retry(countdown=BUSY_RECHECK_SECONDS + random.uniform(0, 5), max_retries=None, exc=exc) from exc
    except Retryable as exc:
        settings = get_settings()
        countdown = exc.countdown
        if countdown is None:
            countdown = backoff(task.request.retries, settings.retry_backoff_base, settings.retry_backoff_cap)
        raise task.retry(countdown=countdown, max_retries=None, exc=exc) from exc


@app.task(name=names.TASK_SEND_NOTIFICATION, bind=True)
def send_notification(self: Task, job_id: str) -> None:
    """Deliver the notification of job ``job_id``. At most one delivery per job, however often it runs."""
    _run(self, job_id, notify.deliver)


@app.task(name=names.TASK_INGEST_UPLOAD, bind=True)
def ingest_upload(self: Task, job_id: str) -> None:
    """Verify and store the upload of job ``job_id``, with progress events. Re-running it is harmless."""
    _run(self, job_id, ingest.ingest)


@app.task(name=names.TASK_DISPATCH_PENDING)
def dispatch_pending() -> int:
    """Send the tasks of recorded jobs whose dispatch did not complete (the api crashed, Redis was down)."""
    return housekeeping.dispatch_pending(runtime())


@app.task(name=names.TASK_REAP_STALE)
def reap_stale() -> int:
    """Send again the tasks of started jobs whose worker died and whose message is gone."""
    return housekeeping.reap_stale(runtime())


@app.task(name=names.TASK_PURGE_SPOOL)
def purge_spool() -> int:
    """Delete stale spool files that no live job needs."""
    return housekeeping.purge_spool(runtime())


@app.task(name=names.TASK_TRIM_EVENTS)
def trim_events() -> int:
    """Drop events older than the retention age from the stream."""
    return housekeeping.trim_events(runtime())
