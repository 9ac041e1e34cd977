"""A job's attempts: the delivery-attempt log, and a new run on demand for a failed job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path

from api.deps import PrincipalDep, StateDep
from conveyor.names import TASK_FOR_KIND
from conveyor.schemas import Job
from conveyor.store.attempts import AttemptLog
from conveyor.store.jobstore import Dispatch

router = APIRouter(tags=["jobs"])
JobId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/jobs/{job_id}/attempts", responses={404: {"description": "No such job"}})
async def list_attempts(state: StateDep, principal: PrincipalDep, job_id: JobId) -> dict[str, Any]:
    """Every delivery attempt of the job, oldest first: when, the channel, the outcome (``delivered``,
    ``transient``, ``permanent``), the peer's status code or SMTP reply code and text, and the error."""
    job = await state.db(state.store.get, job_id, principal.owner)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    attempts = await state.db(AttemptLog(state.store.engine).of, job_id)
    return {"job_id": job_id, "attempts": [attempt.as_json() for attempt in attempts]}


@router.post(
    "/jobs/{job_id}/retry",
    status_code=202,
    responses={404: {"description": "No such job"}, 409: {"description": "The job is not failed"}},
)
async def retry_job(state: StateDep, principal: PrincipalDep, job_id: JobId) -> Job:
    """Queue a failed job again: its error is cleared, its attempts start again from one, ``job.queued`` is
    published and its task sent. 202 means it will run (if Redis is down, the dispatcher sends it later).
    Effects that already happened are not repeated; a delivery that never succeeded is sent."""
    if await state.db(state.store.get, job_id, principal.owner) is None:
        raise HTTPException(404, f"no job {job_id}")
    job = await state.db(state.store.requeue, job_id)
    if job is None:
        current = await state.db(state.store.get, job_id)
        if current is None:
            raise HTTPException(404, f"no job {job_id}")
        raise HTTPException(409, f"job {job_id} is {current.status.value}, not failed")
    task_name, queue = TASK_FOR_KIND[job.kind]
    await state.db(state.dispatcher.send, Dispatch(job, task_name, queue))
    return job
