"""``/schedules``: notifications fired as jobs whenever they are due (a cron expression, or every N seconds)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse

from api.deps import PrincipalDep, StateDep
from api.errors import error
from api.routes.notifications import refusal, stored_request
from api.state import AppState
from conveyor.cadence import Cadence
from conveyor.schemas import NotificationRequest, Schedule, SchedulePage, SchedulePatch, ScheduleRequest
from conveyor.store.apikeys import Principal
from conveyor.store.jobstore import InvalidCursor
from conveyor.store.schedules import Changes, NameTaken, NewSchedule, ScheduleLimit

router = APIRouter(tags=["schedules"])
ScheduleId = Annotated[str, Path(min_length=1, max_length=64)]

_NAME_TAKEN = "a schedule of this name exists (schedule_id); change it with PATCH, or delete it first"


def _stored(state: AppState, principal: Principal, notification: NotificationRequest) -> dict[str, Any]:
    """The notification as the job store keeps it; raises the refusal ``POST /notifications`` would give it."""
    refused = refusal(state, principal, notification)
    if refused is not None:
        raise HTTPException(refused.status_code, f"notification: {refused.detail}")
    return stored_request(state, notification, notification.model_dump(mode="json", by_alias=True))


def _conflict(exc: NameTaken) -> JSONResponse:
    return error(409, f"{_NAME_TAKEN}: {exc.existing.name!r}", schedule_id=exc.existing.schedule_id)


@router.post(
    "/schedules",
    status_code=201,
    response_model=Schedule,
    responses={
        409: {"description": "A schedule of this name exists (its id is in the body), or the key's cap is reached"},
        422: {"description": "A bad body: the cadence, the time zone, or a notification the api refuses"},
    },
)
async def create_schedule(
    state: StateDep, principal: PrincipalDep, body: ScheduleRequest, response: Response
) -> Schedule | JSONResponse:
    """Make a schedule: from ``next_due_at`` on, beat fires its notification as an ordinary job at each due time,
    exactly once per due time however many beats run. After beat was down, a missed due time fires once."""
    new = NewSchedule(
        owner=principal.owner,
        name=body.name,
        cadence=Cadence(cron=body.cron, every_seconds=body.every_seconds, timezone=body.timezone),
        request=_stored(state, principal, body.notification),
        paused=body.paused,
    )
    try:
        schedule = await state.db(lambda: state.schedules.create(new, limit=state.settings.max_schedules_per_owner))
    except NameTaken as exc:
        return _conflict(exc)
    except ScheduleLimit as exc:
        raise HTTPException(409, f"{exc}; delete one first (CONVEYOR_MAX_SCHEDULES_PER_OWNER)") from exc
    response.headers["Location"] = f"/schedules/{schedule.schedule_id}"
    return schedule


@router.get("/schedules", responses={400: {"description": "Bad cursor"}})
async def list_schedules(
    state: StateDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> SchedulePage:
    """A page of the caller's schedules, newest first. Pass ``next_cursor`` as ``cursor`` for the next page."""
    try:
        schedules, next_cursor = await state.db(
            lambda: state.schedules.page(principal.owner, limit=limit, cursor=cursor)
        )
    except InvalidCursor as exc:
        raise HTTPException(400, "cursor is not one this api handed out") from exc
    return SchedulePage(schedules=schedules, next_cursor=next_cursor)


@router.get("/schedules/{schedule_id}", responses={404: {"description": "No such schedule"}})
async def get_schedule(state: StateDep, principal: PrincipalDep, schedule_id: ScheduleId) -> Schedule:
    """The schedule. Its jobs: ``GET /jobs?schedule_id=…``."""
    schedule = await state.db(state.schedules.get, schedule_id, principal.owner)
    if schedule is None:
        raise HTTPException(404, f"no schedule {schedule_id}")
    return schedule


@router.patch(
    "/schedules/{schedule_id}",
    response_model=Schedule,
    responses={
        404: {"description": "No such schedule"},
        409: {"description": "Another schedule has this name"},
        422: {"description": "A bad body: the cadence, the time zone, or a notification the api refuses"},
    },
)
async def change_schedule(
    state: StateDep, principal: PrincipalDep, schedule_id: ScheduleId, body: SchedulePatch
) -> Schedule | JSONResponse:
    """Change, pause (``{"paused": true}``) or resume a schedule. A new cadence, or resuming, counts due times
    afresh from now: due times that passed while paused do not fire."""
    current = await state.db(state.schedules.get, schedule_id, principal.owner)
    if current is None:
        raise HTTPException(404, f"no schedule {schedule_id}")
    timezone = body.timezone or current.timezone
    if body.every_seconds is not None:
        cadence: Cadence | None = Cadence(every_seconds=body.every_seconds, timezone=timezone)
    elif body.cron is not None:
        cadence = Cadence(cron=body.cron, timezone=timezone)
    elif body.timezone is not None:
        cadence = Cadence(cron=current.cron, every_seconds=current.every_seconds, timezone=timezone)
    else:
        cadence = None
    changes = Changes(
        name=body.name,
        cadence=cadence,
        request=None if body.notification is None else _stored(state, principal, body.notification),
        paused=body.paused,
    )
    try:
        schedule = await state.db(state.schedules.update, schedule_id, principal.owner, changes)
    except NameTaken as exc:
        return _conflict(exc)
    if schedule is None:
        raise HTTPException(404, f"no schedule {schedule_id}")
    return schedule


@router.delete("/schedules/{schedule_id}", status_code=204, responses={404: {"description": "No such schedule"}})
async def delete_schedule(state: StateDep, principal: PrincipalDep, schedule_id: ScheduleId) -> Response:
    """Remove the schedule; it fires no more. The jobs it fired stay."""
    if not await state.db(state.schedules.delete, schedule_id, principal.owner):
        raise HTTPException(404, f"no schedule {schedule_id}")
    return Response(status_code=204)
