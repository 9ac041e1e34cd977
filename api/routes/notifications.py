"""``POST /notifications``: record a notification job and enqueue it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from api.deps import StateDep
from api.submit import submit
from conveyor.names import KIND_NOTIFICATION
from conveyor.schemas import Accepted, NotificationRequest

router = APIRouter(tags=["notifications"])


@router.post("/notifications", status_code=202, responses={503: {"description": "The job store is unavailable"}})
async def create_notification(
    state: StateDep,
    body: NotificationRequest,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Accept a notification for delivery. 202 means it is recorded and will be delivered (or fail visibly)."""
    result, _created = await submit(
        state,
        response,
        kind=KIND_NOTIFICATION,
        request=body.model_dump(mode="json"),
        owner=None,
        idempotency_key=idempotency_key,
    )
    return result
