"""Housekeeping that beat schedules: late dispatch, stale-job recovery, spool purge, event-stream trim."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from conveyor.schemas import JobStatus
from conveyor.spool import PARTIAL_SUFFIX
from worker.runtime import Runtime

log = logging.getLogger("conveyor.housekeeping")
LIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.RETRYING}


def dispatch_pending(rt: Runtime) -> int:
    """Send the tasks of recorded jobs whose dispatch never completed. Returns how many were sent."""
    return rt.dispatcher.dispatch_pending(timedelta(seconds=rt.settings.dispatch_grace_seconds))


def reap_stale(rt: Runtime) -> int:
    """Re-send started jobs untouched for longer than the broker's own redelivery takes. Returns how many."""
    return rt.dispatcher.resend_stale(timedelta(seconds=rt.settings.visibility_timeout + 60))


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
        log.info("spool file purged name=%s", path.name)
    return removed


def trim_events(rt: Runtime) -> int:
    """Drop events older than ``events_max_age_seconds`` from the stream. Returns how many."""
    return rt.events.trim_older_than(rt.settings.events_max_age_seconds)
