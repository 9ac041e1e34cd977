"""Submitting jobs so that no row is left without a task and no task without a row.

The job row is written first and is its own outbox: a row whose task was never confirmed sent
(``dispatched_at`` unset) is sent again by :func:`Dispatcher.dispatch_pending`, which beat runs every few
seconds. Tasks carry only the job id, and a worker that finds no row for it does nothing; so a crash at
any step leaves either nothing, or a row that will be sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import redis
from celery import Celery
from kombu.exceptions import ChannelError

from conveyor import logs, metrics
from conveyor.events import EventLog, job_event
from conveyor.queue.messages import task_message
from conveyor.redis_client import text
from conveyor.schemas import Job
from conveyor.store.jobstore import Dispatch, JobStore, NewJob

log = logs.get("conveyor.queue.dispatch")


class Dispatcher:
    """Records jobs and hands their tasks to the broker."""

    def __init__(self, store: JobStore, events: EventLog, celery: Celery, broker: redis.Redis | None = None) -> None:
        self.store = store
        self.events = events
        self.celery = celery
        #: The broker's Redis when it is not the events' (``CONVEYOR_BROKER_URL``): task messages go there, in a
        #: second round trip after the events.
        self.broker = broker

    def submit(self, new: NewJob) -> tuple[Job, bool]:
        """Record the job, announce it and send its task. Returns ``(job, created)``.

        Once this returns, the job is recorded and will run: if the broker was unreachable, the task is
        sent later by :meth:`dispatch_pending`. Raises only when the job store could not record the job, in
        which case nothing was recorded and nothing sent.
        """
        return self.submit_many([new])[0]

    def submit_many(self, news: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        """:meth:`submit` for several jobs at once: one transaction records them all, one round trip to
        Redis announces them, and one more transaction notes that their tasks were sent."""
        results = self.store.create_many(news)
        fresh = [
            Dispatch(job, new.task_name, new.queue)
            for (job, created), new in zip(results, news, strict=True)
            if created
        ]
        if fresh:
            self.send_many(fresh, new=True)
        return results

    def send(self, dispatch: Dispatch, *, announce: bool = True) -> bool:
        """Publish ``job.queued`` (unless ``announce`` is off), send the task and note when it was sent; ``False``
        (logged) if Redis refused."""
        return self.send_many([dispatch], announce=announce) == 1

    def send_many(self, dispatches: Sequence[Dispatch], *, announce: bool = True, new: bool = False) -> int:
        """:meth:`send` for several jobs; returns how many tasks were sent. Their ``job.queued`` events and task
        messages go to Redis in one round trip (:mod:`conveyor.queue.messages`), then one transaction notes them sent.
        If Redis refuses, nothing is noted and :meth:`dispatch_pending` sends them later. ``new`` jobs (just
        recorded) are counted as queued (:mod:`conveyor.metrics`) in the same round trip."""
        pipe = self.events.client.pipeline(transaction=False)
        tasks = pipe if self.broker is None else self.broker.pipeline(transaction=False)
        if announce:
            for dispatch in dispatches:
                self.events.add_to(pipe, job_event(dispatch.job))
        for dispatch in dispatches:
            job_id = dispatch.job.job_id
            tasks.lpush(dispatch.queue, task_message(self.celery, dispatch.task_name, job_id, dispatch.queue))
        if new:  # after the events: the first replies are their ids
            metrics.count_jobs(pipe, [dispatch.job for dispatch in dispatches])
        try:
            replies = pipe.execute()
            if tasks is not pipe:  # after the events: a worker's job.started never comes before job.queued
                tasks.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure leaves the rows for dispatch_pending
            log.warning("dispatch deferred", jobs=len(dispatches), error=repr(exc))
            return 0
        event_ids = [text(reply) for reply in replies[: len(dispatches)]] if announce else [None] * len(dispatches)
        sent = [(d.job.job_id, event_id) for d, event_id in zip(dispatches, event_ids, strict=True)]
        try:
            self.store.mark_dispatched(sent)
        except Exception as exc:  # noqa: BLE001 - the tasks are sent; at worst dispatch_pending sends them again
            log.warning("dispatch not marked", jobs=len(sent), error=repr(exc))
        return len(sent)

    def dispatch_pending(self, grace: timedelta, abandoned_after: timedelta | None = None) -> int:
        """Send every queued job whose task was not confirmed sent within ``grace``, and every retrying job whose
        next attempt is due and that nobody else will send (its holder, if any, gone for ``abandoned_after``;
        default ``grace``). Returns how many went."""
        sent = 0
        for dispatch in self.store.undispatched(grace):
            if self.send(dispatch):
                log.info("dispatched late", job_id=dispatch.job.job_id)
                sent += 1
        for dispatch in self.store.retries_due(grace if abandoned_after is None else abandoned_after):
            if self.send(dispatch, announce=False):
                log.info("retry sent", job_id=dispatch.job.job_id, attempt=dispatch.job.attempts + 1)
                sent += 1
        return sent

    def resend_lost(self, older_than: timedelta) -> int:
        """Send again the task of every job sent more than ``older_than`` ago, still unclaimed, whose queue in the
        broker is empty: its message is not waiting, and a live worker claims what it takes within moments, so the
        message is lost or held by a dead worker (a worker or Redis died between taking it and claiming the job, or
        Redis lost its last second of writes in a machine crash). If Redis gives a held message back later, it is
        a duplicate the claim drops. A queue with a backlog is looked at again once it drains; meanwhile the
        visibility timeout returns held messages. Returns how many were sent."""
        candidates = self.store.unclaimed(older_than)
        empty = {queue for queue in {d.queue for d in candidates} if self._waiting(queue) == 0}
        sent = 0
        for dispatch in candidates:
            if dispatch.queue in empty and self.send(dispatch, announce=False):
                log.warning("lost message sent again", job_id=dispatch.job.job_id, queue=dispatch.queue)
                sent += 1
        return sent

    def _waiting(self, queue: str) -> int:
        """Messages waiting in ``queue`` in the broker (0 when the broker holds no such queue)."""
        with self.celery.connection_for_write() as connection:
            try:
                _name, count, _consumers = connection.default_channel.queue_declare(queue=queue, passive=True)
            except ChannelError:
                return 0
        return int(count)

    def resend_stale(self, dead_after: timedelta) -> int:
        """Send again the task of every started job whose run's heartbeat is older than ``dead_after`` (that run
        died), at most once per ``dead_after``. The worker's claim lets exactly one delivery take it over.
        Returns how many were sent."""
        sent = 0
        for dispatch in self.store.stale_started(dead_after):
            if self.send(dispatch, announce=False):
                log.warning("job of a dead run sent again", job_id=dispatch.job.job_id)
                sent += 1
        return sent
