"""Delivering notifications: pick the channel, record every attempt, and never deliver twice.

A delivery that succeeded is recorded in the effect ledger (``notification.<channel>``) and a later run of the
same job returns that record instead of sending again; a delivery that failed records nothing there, so a retry
(automatic, or ``POST /jobs/{id}/retry``) sends for real. Every attempt, whatever its outcome, gets a row in the
delivery-attempt log. What is left is at least once: a crash between the peer's acceptance and the ledger write
means one more send, which receivers recognise by its unchanged ``webhook-id`` or ``Message-ID``.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from conveyor import logs
from conveyor.schemas import (
    EmailNotification,
    Job,
    LogNotification,
    NotificationRequest,
    WebhookNotification,
    WebsocketNotification,
)
from conveyor.store.attempts import AttemptLog, Outcome
from conveyor.store.ledger import Also
from worker.channels import DeliveryError, Sent, email, log, webhook, websocket
from worker.runner import Failed, Progress, Retryable, persist
from worker.runtime import Runtime

logger = logs.get("conveyor.notify")
_REQUEST: TypeAdapter[NotificationRequest] = TypeAdapter(NotificationRequest)


def _send(rt: Runtime, job: Job, request: NotificationRequest, also: Also) -> Sent:
    if isinstance(request, LogNotification):
        return log.send(rt.ledger, job, request, also)
    if isinstance(request, WebhookNotification):
        return webhook.send(rt.settings, job.job_id, job.created_at, request)
    if isinstance(request, EmailNotification):
        return email.send(rt.settings, job.job_id, job.created_at, request)
    assert isinstance(request, WebsocketNotification)
    return websocket.send(rt.events, job, request)


def deliver(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
    """Deliver the job's notification through its channel once; returns what happened, for the job's result.

    Raises :class:`Retryable` for a transient failure (with the peer's ``Retry-After`` when it gave one) and
    :class:`Failed` for a permanent one. Running it again after a success sends nothing.
    """
    request = _REQUEST.validate_python(job.request)
    effect = f"notification.{request.channel}"
    if not isinstance(request, LogNotification):
        done = rt.ledger.effect(job.job_id, effect)
        if done is not None:
            logger.info("already delivered; not sent again", job_id=job.job_id, channel=request.channel)
            return done
    attempts = AttemptLog(rt.ledger.engine)
    started = time.monotonic()

    def record(outcome: Outcome, **fields: Any) -> None:
        fields["duration_ms"] = int((time.monotonic() - started) * 1000)
        attempts.record(job.job_id, attempt=job.attempts, channel=request.channel, outcome=outcome, **fields)

    def logged(connection: sa.Connection) -> None:  # the log channel's attempt, written with the log entry
        record(Outcome.DELIVERED, connection=connection)

    try:
        sent = _send(rt, job, request, logged)
    except DeliveryError as exc:
        outcome = Outcome.TRANSIENT if exc.transient else Outcome.PERMANENT
        record(outcome, status_code=exc.status_code, reply=exc.reply, error=str(exc))
        logger.warning(
            "delivery failed",
            job_id=job.job_id,
            channel=request.channel,
            attempt=job.attempts,
            outcome=outcome.value,
            error=str(exc),
        )
        if exc.transient:
            raise Retryable(str(exc), exc.retry_after) from exc
        raise Failed(str(exc)) from exc
    except Exception as exc:
        record(Outcome.PERMANENT, error=f"{type(exc).__name__}: {exc}")
        raise
    result = {"channel": request.channel, **sent.detail}
    if not isinstance(request, LogNotification):

        def attempt(connection: sa.Connection) -> None:  # written with the effect: both, or neither
            record(Outcome.DELIVERED, status_code=sent.status_code, reply=sent.reply, connection=connection)

        delivered = result
        result = persist(rt, lambda: rt.ledger.record_effect(job.job_id, effect, delivered, also=attempt))
    logger.info("delivered", job_id=job.job_id, owner=job.owner, channel=request.channel, attempt=job.attempts)
    return result
