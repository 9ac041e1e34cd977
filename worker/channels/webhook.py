"""Channel ``webhook``: one signed HTTP POST per attempt, made as :mod:`worker.channels.outbound` makes every
outbound request (pinned addresses, no redirects, capped reads). Connection errors, timeouts, 408, 429 and 5xx are
transient (``Retry-After`` honoured); any other answer outside 2xx is permanent.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from conveyor import __version__, webhooks
from conveyor.schemas import WebhookNotification
from conveyor.settings import Settings
from worker.channels import DeliveryError, Sent, outbound

TRANSIENT_STATUS = frozenset({408, 429})
EXCERPT_CHARS = 200


def payload(request: WebhookNotification, created_at: datetime) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}``, identical on every attempt (the timestamp is the
    job's creation time)."""
    stamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": request.type, "timestamp": stamp, "data": request.data})


def send(settings: Settings, job_id: str, created_at: datetime, request: WebhookNotification) -> Sent:
    """POST the signed payload once. Returns the 2xx answer; raises :class:`DeliveryError` otherwise."""
    secret = request.secret or (settings.webhook_secret.get_secret_value() if settings.webhook_secret else None)
    if secret is None:
        raise DeliveryError("no webhook secret: set CONVEYOR_WEBHOOK_SECRET or pass one", transient=False)
    body = payload(request, created_at)
    msg_id = webhooks.message_id(job_id)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Conveyor/{__version__}",
        **webhooks.signed_headers(secret, msg_id, body),
    }
    answer = outbound.request(
        "POST",
        str(request.url),
        headers=headers,
        content=body,
        timeout=settings.webhook_timeout,
        cap=settings.webhook_max_response_bytes,
        allow_private=settings.webhook_allow_private,
        what="webhook",
    )
    status = answer.status
    reply = f"{status} {answer.reason}".strip()
    text = answer.body.decode("utf-8", "replace")[:EXCERPT_CHARS]
    if text:
        reply += f": {text}"
    if 200 <= status < 300:
        return Sent(status, reply, {"webhook_id": msg_id, "status_code": status, "url": str(request.url)})
    message = f"webhook answered {status} {answer.reason}".strip()
    if status in TRANSIENT_STATUS or status >= 500:
        retry_after = outbound.parse_retry_after(answer.headers.get("retry-after"))
        raise DeliveryError(message, transient=True, status_code=status, reply=reply, retry_after=retry_after)
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise DeliveryError(message, transient=False, status_code=status, reply=reply)
