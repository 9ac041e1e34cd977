"""``POST /ws-tickets``: a short-lived, single-use ticket for a browser's event stream."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, StateDep

router = APIRouter(tags=["events"])


class Ticket(BaseModel):
    """A ticket to pass as ``?ticket=`` to ``/ws`` or ``/events``: it works once, within ``expires_in`` seconds."""

    ticket: str
    expires_in: int = Field(description="Seconds the ticket stays valid if unused")


@router.post("/ws-tickets", status_code=201)
async def create_ticket(state: StateDep, principal: PrincipalDep) -> Ticket:
    """A new ticket standing for the caller's key, for clients that cannot send an ``Authorization`` header
    on a WebSocket or an ``EventSource`` (browsers). The first stream that presents it takes it."""
    seconds = state.settings.ws_ticket_seconds
    return Ticket(ticket=await state.auth.issue_ticket(principal, seconds), expires_in=seconds)
