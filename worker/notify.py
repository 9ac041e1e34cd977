"""Delivering notifications: pick the channel, record every attempt, and never deliver twice.

A delivery that succeeded is recorded in the effect ledger (``notification.<channel>``), in the transaction that
records the job's success, and a later run of the same job returns that record instead of sending again; a
delivery that failed records nothing there, so a retry (automatic, or ``POST /jobs/{id}/retry``) sends for real.
Every attempt, whatever its outcome, gets a row in the delivery-attempt log, written with the job's outcome. What
is left is at least once: a crash between the peer's acceptance and that transaction means one more send, which
receivers recognise by its unchanged ``webhook-id`` or ``Message-ID``.

The ``log`` channel's delivery is itself a job-store write: :func:`deliver_in_transaction` makes it in the claim's
transaction, so such a job costs one transaction in all, and a bundle of them (``conveyor/queue/messages.py``) one
transaction and a few statements for all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError

from conveyor import logs
from conveyor.schemas import (
    EmailNotification,
    HttpNotification,
    Job,
    LogNotification,
    NotificationRequest,
    WebhookNotification,
)
from conveyor.secrets import SecretsUnavailable
from conveyor.store import attempts, ledger
from conveyor.store.attempts import Outcome
from worker.channels import DeliveryError, Sent, email, http, webhook, websocket
from worker.runner import Failed, Progress, Recorded, Retryable, describe
from worker.runtime import Runtime

logger = logs.get("conveyor.notify")
_REQUEST: TypeAdapter[NotificationRequest] = TypeAdapter(NotificationRequest)


def deliver_in_transaction(connection: sa.Connection, jobs: Sequence[Job]) -> list[dict[str, Any] | Failed | None]:
    """The deliveries of the ``log`` notifications among ``jobs``, in the claim's transaction, a few statements for
    all: each log entry once, its effect and its attempt row. For each job, in order: its result; :class:`Failed`
    when its stored request is not a log notification after all; ``None`` for any other channel (delivered by
    :func:`deliver`)."""
    outcomes: list[dict[str, Any] | Failed | None] = [None] * len(jobs)
    entries: list[tuple[int, ledger.LogEntry]] = []
    for index, job in enumerate(jobs):
        if job.request.get("channel") != "log":
            continue
        try:
            request = LogNotification.model_validate(job.request)
        except ValidationError as exc:
            outcomes[index] = Failed(f"the stored request is not a log notification: {exc.error_count()} problem(s)")
            continue
        entries.append((index, ledger.LogEntry(job.job_id, request.level, request.message, request.data, job.owner)))
    results = ledger.log_notifications(connection, [entry for _, entry in entries])
    for (index, _), result in zip(entries, results, strict=True):
        outcomes[index] = result
    attempts.record_delivered(connection, [(jobs[index].job_id, jobs[index].attempts) for index, _ in entries], "log")
    return outcomes


def _send(rt: Runtime, job: Job, request: NotificationRequest) -> Sent:
    if isinstance(request, WebhookNotification):
        return webhook.send(rt.settings, job.job_id, job.created_at, request)
    if isinstance(request, EmailNotification):
        return email.send(rt.settings, job.job_id, job.created_at, request)
    if isinstance(request, HttpNotification):
        return http.send(rt.settings, request)
    if isinstance(request, LogNotification):  # only when the in-transaction delivery could not be used
        return Sent(detail=rt.ledger.log_notification(
            job.job_id, level=request.level, message=request.message, data=request.data, owner=job.owner
        ))  # fmt: skip
    return websocket.send(rt.events, job, request)


def deliver(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any] | Recorded:
    """Deliver the job's notification through its channel once; returns what happened, for the job's result, as
    :class:`Recorded` writes (the effect and the attempt row) made with the job's success.

    Raises :class:`Retryable` for a transient failure (with the peer's ``Retry-After`` when it gave one) and
    :class:`Failed` for a permanent one, each carrying the attempt row to write. Running it again after a success
    sends nothing.
    """
    try:
        request = _REQUEST.validate_python(rt.secrets.open_fields(job.request))
    except SecretsUnavailable as exc:
        raise Failed(str(exc)) from exc
    channel = request.channel
    effect = f"notification.{channel}"
    done = None if isinstance(request, LogNotification) else rt.ledger.effect(job.job_id, effect)
    if done is not None:  # (a log entry is written once by its own key)
        logger.info("already delivered; not sent again", job_id=job.job_id, channel=channel)
        return done
    started = time.monotonic()

    def attempt(outcome: Outcome, **fields: Any) -> ledger.Also:
        duration = int((time.monotonic() - started) * 1000)

        def write(connection: sa.Connection) -> None:
            attempts.record(
                connection, job.job_id, attempt=job.attempts, channel=channel, outcome=outcome, duration_ms=duration,
                **fields,
            )  # fmt: skip

        return write

    try:
        sent = _send(rt, job, request)
    except DeliveryError as exc:
        outcome = Outcome.TRANSIENT if exc.transient else Outcome.PERMANENT
        also = attempt(outcome, status_code=exc.status_code, reply=exc.reply, error=str(exc))
        logger.warning(
            "delivery failed", job_id=job.job_id, channel=channel, attempt=job.attempts, outcome=outcome.value,
            error=str(exc),
        )  # fmt: skip
        if exc.transient:
            raise Retryable(str(exc), exc.retry_after, also=also) from exc
        raise Failed(str(exc), also=also) from exc
    except Exception as exc:
        logger.exception("delivery raised", job_id=job.job_id, channel=channel, attempt=job.attempts)
        raise Failed(describe(exc), also=attempt(Outcome.PERMANENT, error=describe(exc))) from exc
    result = {"channel": channel, **sent.detail}
    delivered = attempt(Outcome.DELIVERED, status_code=sent.status_code, reply=sent.reply)
    logger.info("delivered", job_id=job.job_id, owner=job.owner, channel=channel, attempt=job.attempts)

    def record(connection: sa.Connection) -> dict[str, Any]:
        delivered(connection)
        if isinstance(request, LogNotification):
            return result
        return ledger.record_effect(connection, job.job_id, effect, result)

    return Recorded(record)
