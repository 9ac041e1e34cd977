"""``POST /notifications``: record a notification job and enqueue it."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from api.deps import IdempotencyKey, PrincipalDep, StateDep
from api.errors import ServiceUnavailable
from api.state import AppState
from api.submit import submit, submit_many
from conveyor import webhooks
from conveyor.names import KIND_NOTIFICATION
from conveyor.schemas import (
    Accepted,
    BatchAccepted,
    HttpNotification,
    NotificationBatch,
    NotificationRequest,
    WebhookNotification,
    WebsocketNotification,
)
from conveyor.secrets import SecretsUnavailable
from conveyor.settings import Settings
from conveyor.store.apikeys import Principal

router = APIRouter(tags=["notifications"])


def webhook_problem(body: WebhookNotification, settings: Settings) -> str | None:
    """Why a webhook request can't be delivered as asked, as far as the api can tell without DNS; else ``None``.

    The worker checks every address the host resolves to again before each attempt."""
    if body.secret is None and settings.webhook_secret is None:
        return "a webhook needs a signing secret: pass 'secret' (whsec_...) or set CONVEYOR_WEBHOOK_SECRET"
    return address_problem(body.url.host, settings)


def address_problem(url_host: str | None, settings: Settings) -> str | None:
    """Why the api refuses to send to this host, as far as it can tell without DNS (an IP literal or
    ``localhost`` that is loopback, private, link-local or reserved); else ``None``."""
    if settings.webhook_allow_private:
        return None
    host = (url_host or "").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return f"url host {host} is loopback; set CONVEYOR_WEBHOOK_ALLOW_PRIVATE to allow it"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    reason = webhooks.refused_address(host)
    return None if reason is None else f"url refused: {reason}; set CONVEYOR_WEBHOOK_ALLOW_PRIVATE to allow it"


def refusal(state: AppState, principal: Principal, body: NotificationRequest) -> HTTPException | None:
    """Why the api refuses a notification before recording it: 422 for a webhook it cannot deliver as asked or an
    http request to a refused address, 403 for a shared topic the key may not publish to; else ``None``."""
    if isinstance(body, WebhookNotification):
        problem = webhook_problem(body, state.settings)
        if problem is not None:
            return HTTPException(422, problem)
    if isinstance(body, HttpNotification):
        problem = address_problem(body.url.host, state.settings)
        if problem is not None:
            return HTTPException(422, problem)
    if isinstance(body, WebsocketNotification) and not state.topics.may_publish(principal.owner, body.topic):
        return HTTPException(403, f"topic {body.topic!r} is shared and this key may not publish to it")
    return None


#: What a submission may answer besides 202.
_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A websocket notification to a shared topic the key may not publish to"},
    422: {"description": "A bad body (in a batch, naming its index), or a webhook the api refuses"},
    503: {"description": "The job store is unavailable; nothing was recorded"},
}


async def accept_one(
    state: AppState, principal: Principal, body: NotificationRequest, key: str | None, response: Response
) -> Accepted:
    """Record one notification and enqueue it (what ``POST /notifications`` does, also for :mod:`api.lane`).
    Raises ``HTTPException`` for a refusal; sets ``Idempotent-Replayed`` on ``response`` for a replay."""
    refused = refusal(state, principal, body)
    if refused is not None:
        raise refused
    plain = body.model_dump(mode="json", by_alias=True)
    result, _created = await submit(
        state,
        response,
        kind=KIND_NOTIFICATION,
        request=stored_request(state, body, plain),
        owner=principal.owner,
        idempotency_key=key,
        fingerprint=plain,
    )
    return result


async def accept_batch(
    state: AppState, principal: Principal, body: NotificationBatch, key: str | None, response: Response
) -> BatchAccepted:
    """Record a batch of notifications, all or none (what ``POST /notifications:batch`` does, also for
    :mod:`api.lane`)."""
    for index, notification in enumerate(body.notifications):
        refused = refusal(state, principal, notification)
        if refused is not None:
            raise HTTPException(refused.status_code, f"notifications[{index}]: {refused.detail}")
    plain = [notification.model_dump(mode="json", by_alias=True) for notification in body.notifications]
    jobs, _created = await submit_many(
        state,
        response,
        kind=KIND_NOTIFICATION,
        requests=[stored_request(state, n, request) for n, request in zip(body.notifications, plain, strict=True)],
        owner=principal.owner,
        idempotency_key=key,
        fingerprint=plain,
    )
    return BatchAccepted(jobs=jobs)


def stored_request(state: AppState, body: NotificationRequest, plain: dict[str, Any]) -> dict[str, Any]:
    """What the job store keeps of a request: a webhook's own secret and an http request's headers sealed
    (:mod:`conveyor.secrets`); a 503 when there is no key to seal them with (production without
    ``CONVEYOR_SECRETS_KEY``)."""
    secret = isinstance(body, WebhookNotification) and body.secret is not None
    if not secret and not (isinstance(body, HttpNotification) and body.headers):
        return plain
    try:
        return state.secrets.seal_fields(plain)
    except SecretsUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc


@router.post("/notifications", status_code=202, responses=_REFUSALS)
async def create_notification(
    state: StateDep, principal: PrincipalDep, body: NotificationRequest, response: Response, key: IdempotencyKey = None
) -> Accepted:
    """Accept a notification for delivery. 202 means it is recorded and will be delivered (or fail visibly).

    The same ``Idempotency-Key`` with the same body returns the first job (``Idempotent-Replayed: true``);
    with a different body it is refused (422)."""
    return await accept_one(state, principal, body, key, response)


@router.post("/notifications:batch", status_code=202, responses=_REFUSALS)
async def create_notifications(
    state: StateDep, principal: PrincipalDep, body: NotificationBatch, response: Response, key: IdempotencyKey = None
) -> BatchAccepted:
    """Accept up to 100 notifications at once: all are recorded in one transaction and announced in one
    round trip, or none is (the first refusal names its index). One ``Idempotency-Key`` covers the batch."""
    return await accept_batch(state, principal, body, key, response)
