"""Submitting jobs so that no row is left without a task and no task without a row.

The job row is written first and is its own outbox: a row whose task was never confirmed sent
(``dispatched_at`` unset) is sent again by :func:`Dispatcher.dispatch_pending`, which beat runs every few
seconds. Tasks carry only the job id, and a worker that finds no row for it does nothing; so a crash at
any step leaves either nothing, or a row that will be sent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery

from conveyor.events import EventLog, job_event
from conveyor.jobstore import Dispatch, JobStore, NewJob
from conveyor.schemas import Job

log = logging.getLogger("conveyor.dispatch")


class Dispatcher:
    """Records jobs and hands their tasks to the broker."""

    def __init__(self, store: JobStore, events: EventLog, celery: Celery) -> None:
        self.store = store
        self.events = events
        self.celery = celery

    def submit(self, new: NewJob) -> tuple[Job, bool]:
        """Record the job, announce it and send its task. Returns ``(job, created)``.

        Once this returns, the job is recorded and will run: if the broker was unreachable, the task is
        sent later by :meth:`dispatch_pending`. Raises only when the job store could not record the job, in
        which case nothing was recorded and nothing sent.
        """
        job, created = self.store.create(new)
        if created:
            self.send(Dispatch(job, new.task_name, new.queue))
        return job, created

    def send(self, dispatch: Dispatch, *, announce: bool = True) -> bool:
        """Publish ``job.queued`` (unless ``announce`` is off) and send the task; ``False`` (logged) if Redis
        refused."""
        job = dispatch.job
        try:
            event_id = self.events.publish(job_event(job)) if announce else None
            self.celery.send_task(dispatch.task_name, args=[job.job_id], queue=dispatch.queue, task_id=job.job_id)
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves the row for dispatch_pending
            log.warning("dispatch deferred job_id=%s error=%r", job.job_id, exc)
            return False
        if not announce:
            return True
        try:
            self.store.mark_dispatched(job.job_id, event_id)
        except Exception as exc:  # noqa: BLE001 - the task is sent; at worst dispatch_pending sends it again
            log.warning("dispatch not marked job_id=%s error=%r", job.job_id, exc)
        return True

    def dispatch_pending(self, grace: timedelta) -> int:
        """Send every queued job whose task was not confirmed sent within ``grace``. Returns how many went."""
        sent = 0
        for dispatch in self.store.undispatched(grace):
            if self.send(dispatch):
                log.info("dispatched late job_id=%s", dispatch.job.job_id)
                sent += 1
        return sent

    def resend_stale(self, older_than: timedelta) -> int:
        """Send again the task of every started job untouched for ``older_than`` (its worker and message
        are gone). The worker's claim lets exactly one delivery run it. Returns how many were sent."""
        sent = 0
        for dispatch in self.store.stale_started(older_than):
            if self.send(dispatch, announce=False):
                log.warning("stale job sent again job_id=%s", dispatch.job.job_id)
                sent += 1
        return sent
