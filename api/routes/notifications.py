"""``POST /notifications``: record a notification job and enqueue it."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response

from api.deps import StateDep
from api.submit import submit
from conveyor import webhooks
from conveyor.names import KIND_NOTIFICATION
from conveyor.schemas import Accepted, NotificationRequest, WebhookNotification
from conveyor.settings import Settings

router = APIRouter(tags=["notifications"])


def webhook_problem(body: WebhookNotification, settings: Settings) -> str | None:
    """Why a webhook request can't be delivered as asked, as far as the api can tell without DNS; else ``None``.

    The worker checks every address the host resolves to again before each attempt."""
    if body.secret is None and settings.webhook_secret is None:
        return "a webhook needs a signing secret: pass 'secret' (whsec_...) or set CONVEYOR_WEBHOOK_SECRET"
    if settings.webhook_allow_private:
        return None
    host = (body.url.host or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return f"url host {host} is loopback; set CONVEYOR_WEBHOOK_ALLOW_PRIVATE to allow it"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    reason = webhooks.refused_address(host)
    return None if reason is None else f"url refused: {reason}; set CONVEYOR_WEBHOOK_ALLOW_PRIVATE to allow it"


@router.post(
    "/notifications",
    status_code=202,
    responses={
        422: {"description": "A bad body, or a webhook without a secret or to a refused address"},
        503: {"description": "The job store is unavailable"},
    },
)
async def create_notification(
    state: StateDep,
    body: NotificationRequest,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Accept a notification for delivery. 202 means it is recorded and will be delivered (or fail visibly).

    The same ``Idempotency-Key`` with the same body returns the first job (``Idempotent-Replayed: true``);
    with a different body it is refused (422)."""
    if isinstance(body, WebhookNotification):
        problem = webhook_problem(body, state.settings)
        if problem is not None:
            raise HTTPException(422, problem)
    result, _created = await submit(
        state,
        response,
        kind=KIND_NOTIFICATION,
        request=body.model_dump(mode="json"),
        owner=None,
        idempotency_key=idempotency_key,
    )
    return result
