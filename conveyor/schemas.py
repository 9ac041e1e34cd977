"""The wire contract: job and event shapes, task payloads and API bodies, in one place."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_serializer, field_validator, model_validator

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


class EventType(StrEnum):
    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    RETRYING = "job.retrying"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    TOPIC_MESSAGE = "topic.message"
    ROOM_CHANGED = "room.changed"
    ROOM_CLOSED = "room.closed"


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
    crashes: int = Field(default=0, description="Runs of this job that died before finishing (worker killed)")
    owner: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    schedule_id: str | None = Field(default=None, description="The schedule that fired this job, if one did")
    scheduled_for: datetime | None = Field(default=None, description="The due time it fired for (a schedule's job)")

    @field_serializer("request")
    def _redact(self, request: dict[str, Any]) -> dict[str, Any]:
        return redacted(request)


MASK = "**********"
#: Request fields stored for the worker but never shown by the api: a webhook's own signing secret, an http
#: request's header values (they may hold credentials; their names are shown).
REDACTED_REQUEST_KEYS = frozenset({"secret", "headers"})


def redacted(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` as the api shows it: the values of :data:`REDACTED_REQUEST_KEYS` masked."""
    return {k: _masked(v) if k in REDACTED_REQUEST_KEYS and v is not None else v for k, v in request.items()}


def _masked(value: Any) -> Any:
    return {name: MASK for name in value} if isinstance(value, dict) else MASK


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
    next_attempt_at: float | None = Field(default=None, description="On job.retrying: epoch seconds of the next try")
    reason: str | None = Field(default=None, description="On job.failed: why, as a word (e.g. poisoned)")
    worker: str | None = Field(default=None, description="On job.started: the Celery worker (node name) running it")
    room_id: str | None = Field(default=None, description="On room events: the room")
    version: int | None = Field(default=None, description="On room.changed: the room's version after the change")
    op: str | None = Field(default=None, description="On room.changed: add, remove, set or clear")
    item: str | None = Field(default=None, description="On room.changed (add, remove): the item")
    items: list[str] | None = Field(default=None, description="On room.changed: the room's items after the change")


class StreamCommand(BaseModel):
    """A WebSocket client's message: ``subscribe``/``unsubscribe`` change what it receives (naming exactly one of
    ``job_id`` and ``topic``); ``publish`` sends ``message`` to every listener of ``topic``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["subscribe", "unsubscribe", "publish"]
    job_id: str | None = Field(default=None, min_length=1, max_length=64)
    topic: str | None = Field(default=None, min_length=1, max_length=200)
    message: dict[str, Any] | list[Any] | str | int | float | bool | None = Field(
        default=None, description="publish: any JSON value but null"
    )


class Published(BaseModel):
    """Confirms a ``publish``: the ``topic.message`` event is in the stream, on its way to every listener."""

    type: Literal["published"] = "published"
    topic: str
    event_id: str


class CommandRefused(BaseModel):
    """A client's command that was not carried out (a publish without the right, over the rate limit; a room
    change refused); the connection stays open."""

    type: Literal["refused"] = "refused"
    op: str | None = None
    detail: str


class Snapshot(BaseModel):
    """Sent on ``subscribe`` to a job, before any of its live events: the job as the store held it then."""

    type: Literal["snapshot"] = "snapshot"
    job_id: str
    job: Job


class SubscriptionNotice(BaseModel):
    """Confirms a ``subscribe`` to a topic, or an ``unsubscribe``."""

    type: Literal["subscribed", "unsubscribed"]
    job_id: str | None = None
    topic: str | None = None


class Resync(BaseModel):
    """The resume point is older than what the stream retains: events after ``after`` may be missing.

    The events the stream still holds follow; read the state of the jobs you follow over HTTP.
    """

    type: Literal["resync"] = "resync"
    after: str = Field(description="The resume point the stream could not honour")
    first_event_id: str | None = Field(description="The oldest event the stream still holds")
    detail: str


class StreamError(BaseModel):
    """Sent just before the server closes an event stream (WebSocket close code 1003, 1008 or 1013)."""

    type: Literal["error"] = "error"
    detail: str


class LogNotification(BaseModel):
    """Channel ``log``: the message is recorded in the notification log and goes nowhere else."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["log"]
    message: str = Field(min_length=1, max_length=65_536)
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] | None = Field(default=None, description="Optional structured context, stored as given")


#: A plain ASCII address (``local@domain``): no display name, nothing a header or the SMTP envelope could trip on.
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _json_size(value: Any, limit: int, what: str) -> Any:
    if len(orjson.dumps(value)) > limit:
        raise ValueError(f"{what} is larger than {limit} bytes as JSON")
    return value


class WebhookNotification(BaseModel):
    """Channel ``webhook``: POST ``{"type", "timestamp", "data"}`` as JSON to ``url``, signed per Standard
    Webhooks with ``secret`` (else the server's ``CONVEYOR_WEBHOOK_SECRET``)."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["webhook"]
    url: HttpUrl
    type: str = Field(default="notification", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    data: dict[str, Any] = Field(default_factory=dict, description="The payload's data object, at most 256 KiB")
    secret: str | None = Field(default=None, description="whsec_<base64>; stored for delivery, never shown back")

    @field_validator("data")
    @classmethod
    def _data_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_size(value, 262_144, "data")  # type: ignore[no-any-return]

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None:
            from conveyor.webhooks import signing_key

            signing_key(value)
        return value


class EmailNotification(BaseModel):
    """Channel ``email``: one message to every address in ``to``, plain text with an optional HTML part."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["email"]
    to: list[Annotated[str, Field(max_length=254, pattern=_ADDRESS.pattern)]] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=998, pattern=r"^[^\r\n]*$")
    text: str = Field(min_length=1, max_length=1_048_576)
    html: str | None = Field(default=None, max_length=1_048_576)


class WebsocketNotification(BaseModel):
    """Channel ``websocket``: a ``topic.message`` event to every client connected with ``/ws?topic=<topic>``,
    on every api process."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["websocket"]
    topic: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    message: dict[str, Any] | list[Any] | str | int | float | bool = Field(description="Any JSON value but null")

    @field_validator("message")
    @classmethod
    def _message_size(cls, value: Any) -> Any:
        return _json_size(value, 65_536, "message")


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
#: Headers an ``http`` request may not set (the connection's own, or the api's way to reach the peer).
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})


class HttpNotification(BaseModel):
    """Channel ``http``: one HTTP request to ``url`` in the background (fetch a URL, call an API); the job's result
    holds the answer: status, selected headers, and the body (parsed when JSON)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    channel: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: HttpUrl
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=50, description="Sent as given; stored sealed, shown back masked"
    )
    json_body: Any = Field(default=None, alias="json", description="A JSON body (sent as application/json)")
    body: str | None = Field(default=None, max_length=1_048_576, description="A text body (instead of json)")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="To connect, and for each read")
    expect: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        default=None, max_length=50, description="Status codes that count as success (default: any 2xx)"
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name) or name.lower() in _FORBIDDEN_HEADERS:
                raise ValueError(f"header {name!r} cannot be set")
            if "\r" in text or "\n" in text or len(text) > 8192:
                raise ValueError(f"header {name!r} has a value that cannot be sent")
        return value

    @field_validator("json_body")
    @classmethod
    def _json_size(cls, value: Any) -> Any:
        return _json_size(value, 1_048_576, "json")

    @model_validator(mode="after")
    def _one_body(self) -> HttpNotification:
        if self.json_body is not None and self.body is not None:
            raise ValueError("send json or body, not both")
        return self


#: The body of ``POST /notifications``: one model per channel, chosen by ``channel``.
NotificationRequest = Annotated[
    LogNotification | WebhookNotification | EmailNotification | WebsocketNotification | HttpNotification,
    Field(discriminator="channel"),
]

#: Most notifications one ``POST /notifications:batch`` may carry.
MAX_BATCH = 100


class NotificationBatch(BaseModel):
    """Several notifications submitted at once: all are accepted, or none."""

    model_config = ConfigDict(extra="forbid")

    notifications: list[NotificationRequest] = Field(min_length=1, max_length=MAX_BATCH)


class BatchAccepted(BaseModel):
    """The 202 answer to a batch: one entry per notification, in the order given."""

    jobs: list[Accepted]


class UploadRef(BaseModel):
    """What the api hands the ingest task: where the spooled bytes are and what they should hash to."""

    spool_name: str
    size: int
    sha256: str
    filename: str | None
    client_content_type: str | None
    sniffed_type: str = "application/octet-stream"


class Upload(BaseModel):
    """A stored upload. Its id is the id of the job that stored it; its content is at ``/uploads/{id}/content``."""

    upload_id: str
    filename: str | None = Field(description="The client's file name, sanitised; metadata only")
    size: int
    sha256: str
    content_type: str | None = Field(description="Sniffed from the bytes, not taken from the client")
    storage_key: str
    created_at: datetime


class UploadPage(BaseModel):
    """One page of ``GET /uploads``, newest first."""

    uploads: list[Upload]
    next_cursor: str | None


_SCHEDULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$"


def _check_cadence(cron: str | None, timezone: str | None) -> None:
    from conveyor.cadence import cron_problem, zone_problem

    problem = (None if cron is None else cron_problem(cron)) or (None if timezone is None else zone_problem(timezone))
    if problem is not None:
        raise ValueError(problem)


class ScheduleRequest(BaseModel):
    """The body of ``POST /schedules``: a name, when (``cron`` in ``timezone``, or ``every_seconds``) and the
    notification each firing submits (any channel, as for ``POST /notifications``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=_SCHEDULE_NAME, description="Unique among your schedules")
    cron: str | None = Field(
        default=None, max_length=200, description="5 fields (minute hour day-of-month month day-of-week), or @daily…"
    )
    every_seconds: int | None = Field(default=None, ge=1, le=366 * 24 * 3600, description="Instead of cron")
    timezone: str = Field(default="UTC", max_length=64, description="IANA name the cron expression is read in")
    notification: NotificationRequest
    paused: bool = False

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduleRequest:
        if (self.cron is None) == (self.every_seconds is None):
            raise ValueError("give exactly one of cron and every_seconds")
        _check_cadence(self.cron, self.timezone)
        return self


class SchedulePatch(BaseModel):
    """The body of ``PATCH /schedules/{id}``: the fields to change. ``paused`` pauses or resumes; a new ``cron``
    replaces ``every_seconds`` and the other way round."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=_SCHEDULE_NAME)
    cron: str | None = Field(default=None, max_length=200)
    every_seconds: int | None = Field(default=None, ge=1, le=366 * 24 * 3600)
    timezone: str | None = Field(default=None, max_length=64)
    notification: NotificationRequest | None = None
    paused: bool | None = None

    @model_validator(mode="after")
    def _at_most_one_cadence(self) -> SchedulePatch:
        if self.cron is not None and self.every_seconds is not None:
            raise ValueError("give at most one of cron and every_seconds")
        _check_cadence(self.cron, self.timezone)
        return self


class Schedule(BaseModel):
    """A schedule as ``GET /schedules/{id}`` shows it (secrets in its notification masked, as in a job)."""

    schedule_id: str
    name: str
    cron: str | None
    every_seconds: int | None
    timezone: str
    notification: dict[str, Any]
    paused: bool
    next_due_at: datetime | None = Field(description="When it fires next (null while paused)")
    last_fired_at: datetime | None
    last_job_id: str | None
    fired: int = Field(description="How many jobs it has fired")
    created_at: datetime
    updated_at: datetime
    links: dict[str, str]

    @field_serializer("notification")
    def _redact(self, request: dict[str, Any]) -> dict[str, Any]:
        return redacted(request)


class SchedulePage(BaseModel):
    """One page of ``GET /schedules``, newest first."""

    schedules: list[Schedule]
    next_cursor: str | None


#: Longest item of a room, in characters.
ROOM_ITEM_MAX_CHARS = 200
#: A room's item: text without control characters.
RoomItem = Annotated[str, Field(min_length=1, max_length=ROOM_ITEM_MAX_CHARS, pattern=r"^[^\x00-\x1f\x7f]+$")]


def _unique(items: list[str] | None) -> list[str] | None:
    if items is not None and len(set(items)) != len(items):
        raise ValueError("items must be unique")
    return items


class RoomRequest(BaseModel):
    """The body of ``POST /rooms``: how long the room lives without activity, how many may join, its first items."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: int = Field(default=600, ge=1, description="Seconds without activity before the room expires")
    max_participants: int = Field(default=10, ge=1, le=1000, description="Participants at once, across api processes")
    state: list[RoomItem] | None = Field(default=None, description="The room's first items (unique)")

    _check_state = field_validator("state")(_unique)


class RoomCreated(BaseModel):
    """The 201 answer to ``POST /rooms``: share ``join_url`` (it holds the join token; no API key needed)."""

    room_id: str
    join_token: str = Field(description="Whoever holds it may join, read and change the room")
    join_url: str = Field(description="WebSocket URL to join: /rooms/{room_id}/ws?token=…")
    events_url: str = Field(description="The same room, read only, as Server-Sent Events")
    expires_at: datetime
    ttl_seconds: int
    max_participants: int


class Room(BaseModel):
    """A room as ``GET /rooms/{room_id}`` shows it."""

    room_id: str
    items: list[str]
    version: int = Field(description="Changes so far; every participant sees each version once, in order")
    participants: int
    max_participants: int
    ttl_seconds: int
    expires_at: datetime
    created_at: datetime


class RoomCommand(BaseModel):
    """A participant's change: ``add``/``remove`` an ``item``, ``set`` the ``items``, ``clear``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["add", "remove", "set", "clear"]
    item: RoomItem | None = None
    items: list[RoomItem] | None = None

    _check_items = field_validator("items")(_unique)

    @model_validator(mode="after")
    def _operands(self) -> RoomCommand:
        if (self.item is not None) != (self.op in ("add", "remove")):
            raise ValueError(f"{self.op} takes an item" if self.op in ("add", "remove") else f"{self.op} takes no item")
        if (self.items is not None) != (self.op == "set"):
            raise ValueError("set takes items" if self.op == "set" else f"{self.op} takes no items")
        return self


class RoomState(BaseModel):
    """Sent to a participant when it joins (or resumes from a version the room no longer holds): the whole room."""

    type: Literal["room.state"] = "room.state"
    room_id: str
    version: int
    items: list[str]
    participants: int
    max_participants: int
    expires_at: datetime
