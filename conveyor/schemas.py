"""The wire contract: job and event shapes, task payloads and API bodies, in one place."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EVENT_VERSION = 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: States from which a worker may (re)start a job: a redelivered ``started`` job is run again.
RUNNABLE = frozenset({JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.STARTED})


class EventType(StrEnum):
    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    RETRYING = "job.retrying"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    TOPIC_MESSAGE = "topic.message"


EVENT_FOR_STATUS: dict[JobStatus, EventType] = {
    JobStatus.QUEUED: EventType.QUEUED,
    JobStatus.STARTED: EventType.STARTED,
    JobStatus.RETRYING: EventType.RETRYING,
    JobStatus.SUCCEEDED: EventType.SUCCEEDED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
}


class Job(BaseModel):
    """A job as the job store holds it and ``GET /jobs/{job_id}`` shows it."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: str
    status: JobStatus
    progress: float = Field(description="Percent done, 0 to 100")
    request: dict[str, Any] = Field(description="A summary of what was asked; never file bytes")
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    owner: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class JobPage(BaseModel):
    """One page of ``GET /jobs``: newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""

    jobs: list[Job]
    next_cursor: str | None


class Accepted(BaseModel):
    """The 202 answer to a submission."""

    job_id: str
    status: JobStatus
    kind: str
    created_at: datetime
    links: dict[str, str]


class Event(BaseModel):
    """One change, as stored in the event stream and sent to WebSocket clients.

    ``event_id`` is the stream id: ids only grow, so a client resumes after the last one it saw.
    """

    model_config = ConfigDict(frozen=True)

    v: int = EVENT_VERSION
    event_id: str = ""
    type: EventType
    job_id: str | None = None
    kind: str | None = None
    status: JobStatus | None = None
    progress: float | None = None
    ts: float
    owner: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempt: int | None = None
    topic: str | None = None
    message: Any = None


class LogNotification(BaseModel):
    """Channel ``log``: the message is recorded in the notification log and goes nowhere else."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["log"]
    message: str = Field(min_length=1, max_length=65_536)
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] | None = Field(default=None, description="Optional structured context, stored as given")


#: The body of ``POST /notifications``; later channels join this as a union discriminated by ``channel``.
NotificationRequest = LogNotification


class UploadRef(BaseModel):
    """What the api hands the ingest task: where the spooled bytes are and what they should hash to."""

    spool_name: str
    size: int
    sha256: str
    filename: str | None
    client_content_type: str | None


class HealthReport(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str
    database: str
    version: str
