"""Delivering notifications. Channel ``log`` writes the message to the notification log, once per job."""

from __future__ import annotations

from typing import Any

from conveyor.schemas import Job, LogNotification
from worker.runner import Progress
from worker.runtime import Runtime


def deliver(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
    """Deliver the job's notification through its channel; returns what happened, for the job's result.

    Delivering twice for the same job has the effect of delivering once.
    """
    request = LogNotification.model_validate(job.request)
    return rt.ledger.log_notification(
        job.job_id, level=request.level, message=request.message, data=request.data, owner=job.owner
    )
