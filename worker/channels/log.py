"""Channel ``log``: the message goes to the notification log in the job store, once per job, and nowhere else."""

from __future__ import annotations

from conveyor.ledger import Ledger
from conveyor.schemas import Job, LogNotification
from worker.channels import Sent


def send(ledger: Ledger, job: Job, request: LogNotification) -> Sent:
    """Write the message to the notification log (a second run finds the first run's record)."""
    detail = ledger.log_notification(
        job.job_id, level=request.level, message=request.message, data=request.data, owner=job.owner
    )
    return Sent(detail=detail)
