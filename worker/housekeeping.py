"""Housekeeping that beat schedules: late dispatch, stale-job recovery, users' schedules, spool purge, event-stream
trim."""

from __future__ import annotations

import time
from datetime import timedelta

from conveyor import logs
from conveyor.events import job_event
from conveyor.files.spool import PARTIAL_SUFFIX
from conveyor.schemas import JobStatus
from conveyor.store.rows import utcnow
from worker.runtime import Runtime

log = logs.get("conveyor.housekeeping")
LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.RETRYING}


def dispatch_pending(rt: Runtime) -> int:
    """Send the tasks of recorded jobs whose dispatch never completed, and of retrying jobs whose next attempt is
    due (a run that meant to make it itself counts as gone once the attempt is a dead-run window late). Returns how
    many were sent."""
    settings = rt.settings
    return rt.dispatcher.dispatch_pending(
        timedelta(seconds=settings.dispatch_grace_seconds), timedelta(seconds=settings.dead_after_seconds)
    )


def reap_stale(rt: Runtime) -> int:
    """Re-send started jobs whose run's heartbeat is older than ``dead_after_seconds`` (the run died), so that a
    live worker takes them over, and jobs whose message vanished before any run claimed them (sent that long ago,
    unclaimed, and their queue is empty); announce the outcomes dead runs recorded but did not publish
    (:func:`announce_unannounced`). Returns how many jobs were sent or announced."""
    dead_after = timedelta(seconds=rt.settings.dead_after_seconds)
    sent = rt.dispatcher.resend_stale(dead_after) + rt.dispatcher.resend_lost(dead_after)
    return sent + announce_unannounced(rt, timedelta(seconds=rt.settings.announce_grace_seconds))


def announce_unannounced(rt: Runtime, older_than: timedelta) -> int:
    """Publish the latest state of every job whose recorded change (an outcome, a cancellation) has waited more
    than ``older_than`` to be noted as announced: its writer died between the commit and the publish, or Redis
    refused the event. The events go out in one round trip, then the marks are cleared, so a failure in between
    announces them again next time (a client may see an outcome twice, never not at all). Returns how many.

    ``reap_stale`` waits ``announce_grace_seconds`` (30 s): longer than a worker's Redis client keeps retrying a
    publish (about 25 s) plus its noting delay (:data:`worker.announced.FLUSH_SECONDS`), so that a live run's own
    publish is not repeated."""
    waiting = rt.store.unannounced(older_than)
    if not waiting:
        return 0
    rt.events.publish_many(job_event(job, attempt=job.attempts) for job, _ in waiting)
    rt.store.mark_announced([(job.job_id, since) for job, since in waiting])
    for job, since in waiting:
        log.warning("job's latest change announced late", job_id=job.job_id, status=job.status, since=since)
    return len(waiting)


def purge_spool(rt: Runtime) -> int:
    """Delete spool files older than ``spool_max_age_seconds`` that no live job needs. Returns how many."""
    cutoff = time.time() - rt.settings.spool_max_age_seconds
    removed = 0
    for path in rt.settings.spool_dir.iterdir():
        try:
            if path.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        if not path.name.endswith(PARTIAL_SUFFIX):
            job = rt.store.get(path.name)
            if job is not None and job.status in LIVE:
                continue
        path.unlink(missing_ok=True)
        removed += 1
        log.info("spool file purged", name=path.name)
    return removed


def trim_events(rt: Runtime) -> int:
    """Drop events older than ``events_max_age_seconds`` from the stream. Returns how many."""
    return rt.events.trim_older_than(rt.settings.events_max_age_seconds)


def fire_schedules(rt: Runtime) -> int:
    """Fire every schedule that is due: one job per schedule and due time, however many beats ask at once
    (:mod:`conveyor.store.schedules`). The jobs are recorded before their tasks are sent; a task Redis refused
    is sent by :func:`dispatch_pending`. Returns how many jobs were fired."""
    now = utcnow()
    dues = rt.schedules.due(now)
    if not dues:
        return 0
    fired = rt.schedules.fire(dues, now)
    if fired:
        rt.dispatcher.send_many(fired)
    for dispatch in fired:
        job = dispatch.job
        log.info("schedule fired", schedule_id=job.schedule_id, job_id=job.job_id, due=job.scheduled_for)
    return len(fired)
