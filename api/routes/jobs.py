"""``/jobs``: read one job, list jobs, cancel a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import PrincipalDep, StateDep
from conveyor import logs, metrics
from conveyor.events import job_event
from conveyor.redis_client import REDIS_ERRORS
from conveyor.schemas import Job, JobPage, JobStatus
from conveyor.store.jobstore import UNAVAILABLE, InvalidCursor

log = logs.get("conveyor.api")
router = APIRouter(tags=["jobs"])
JobId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/jobs/{job_id}", responses={404: {"description": "No such job"}})
async def get_job(state: StateDep, principal: PrincipalDep, job_id: JobId) -> Job:
    """The job's current state, as the job store holds it. Another owner's job is 404, like a missing one."""
    job = await state.db(state.store.get, job_id, principal.owner)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("/jobs", responses={400: {"description": "Bad cursor"}})
async def list_jobs(
    state: StateDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    schedule_id: Annotated[str | None, Query(max_length=64, description="Only the jobs this schedule fired")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> JobPage:
    """A page of the caller's jobs, newest first. Pass ``next_cursor`` as ``cursor`` for the next page."""
    try:
        jobs, next_cursor = await state.db(
            lambda: state.store.page(
                status=status, kind=kind, owner=principal.owner, schedule_id=schedule_id, limit=limit, cursor=cursor
            )
        )
    except InvalidCursor as exc:
        raise HTTPException(400, "cursor is not one this api handed out") from exc
    return JobPage(jobs=jobs, next_cursor=next_cursor)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    responses={404: {"description": "No such job"}, 409: {"description": "The job already finished"}},
)
async def cancel_job(state: StateDep, principal: PrincipalDep, job_id: JobId) -> Job:
    """Cancel a job that has not finished. A running task may still complete its work; its result is dropped.
    The cancellation is recorded before its ``job.cancelled`` event is published; if Redis refuses the event, the
    job is cancelled all the same (the job store is the truth) and beat's ``reap_stale`` publishes the event later
    (the row stays marked unannounced until the event is out)."""
    if await state.db(state.store.get, job_id, principal.owner) is None:
        raise HTTPException(404, f"no job {job_id}")
    job = await state.db(
        lambda: state.store.transition(
            job_id,
            JobStatus.CANCELLED,
            allowed_from=[JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.STARTED],
            error="cancelled by request",
        )
    )
    if job is None:
        current = await state.db(state.store.get, job_id)
        if current is None:
            raise HTTPException(404, f"no job {job_id}")
        raise HTTPException(409, f"job {job_id} already {current.status.value}")
    try:
        await state.events.publish(job_event(job))
    except REDIS_ERRORS as exc:
        log.error("event not published: Redis unavailable", job_id=job_id, type="job.cancelled", error=repr(exc))
        return job
    try:
        await state.db(state.store.mark_announced, [(job.job_id, job.updated_at)])
    except UNAVAILABLE as exc:  # the cancellation stands; reap_stale publishes its event once more
        log.warning("cancellation's event not noted as published", job_id=job_id, error=repr(exc))
    try:
        counted = state.redis.pipeline(transaction=False)
        metrics.count_job(counted, job)
        await counted.execute()
    except REDIS_ERRORS as exc:
        log.warning("cancellation not counted: Redis unavailable", job_id=job_id, error=repr(exc))
    return job
