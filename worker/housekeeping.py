"""Housekeeping that beat schedules: late dispatch, stale-job recovery, users' schedules, spool purge, event-stream
trim."""

from __future__ import annotations

import time
from datetime import timedelta

from conveyor import logs
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
    unclaimed, and their queue is empty). Returns how many were sent."""
    dead_after = timedelta(seconds=rt.settings.dead_after_seconds)
    return rt.dispatcher.resend_stale(dead_after) + rt.dispatcher.resend_lost(dead_after)


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
