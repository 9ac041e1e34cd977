"""Channel ``log``: the message goes to the notification log in the job store, once per job, and nowhere else."""

from __future__ import annotations

from conveyor.schemas import Job, LogNotification
from conveyor.store.ledger import Also, Ledger
from worker.channels import Sent


def send(ledger: Ledger, job: Job, request: LogNotification, also: Also | None = None) -> Sent:
    """Write the message to the notification log (a second run finds the first run's record), with ``also``'s
    writes in the same transaction."""
    detail = ledger.log_notification(
        job.job_id, level=request.level, message=request.message, data=request.data, owner=job.owner, also=also
    )
    return Sent(detail=detail)
