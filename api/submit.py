"""Recording and enqueueing a submission, shared by every route that creates jobs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import HTTPException, Response

from api.state import AppState
from conveyor.names import TASK_FOR_KIND
from conveyor.schemas import Accepted, Job
from conveyor.store.jobstore import IdempotencyConflict, NewJob

MAX_IDEMPOTENCY_KEY = 255


def request_hash(request: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


def accepted(job: Job) -> Accepted:
    return Accepted(
        job_id=job.job_id,
        status=job.status,
        kind=job.kind,
        created_at=job.created_at,
        links={"self": f"/jobs/{job.job_id}", "events": f"/ws?job_id={job.job_id}"},
    )


async def submit(
    state: AppState,
    response: Response,
    *,
    kind: str,
    request: Mapping[str, Any],
    owner: str | None,
    idempotency_key: str | None,
    job_id: str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> tuple[Accepted, bool]:
    """Record the job and send its task. Returns the 202 body and whether a new job was made.

    The same ``Idempotency-Key`` from the same owner returns the first job; with a different request it is
    refused (422); ``fingerprint`` (default: the request) is what "the same request" compares. A job store
    that cannot be written gives 503 and records nothing.
    """
    accepted_jobs, created = await submit_many(
        state,
        response,
        kind=kind,
        requests=[request],
        owner=owner,
        idempotency_key=idempotency_key,
        job_ids=[job_id],
        fingerprint=request if fingerprint is None else fingerprint,
        batch=False,
    )
    return accepted_jobs[0], created


async def submit_many(
    state: AppState,
    response: Response,
    *,
    kind: str,
    requests: Sequence[Mapping[str, Any]],
    owner: str | None,
    idempotency_key: str | None,
    job_ids: Sequence[str | None] | None = None,
    fingerprint: Any = None,
    batch: bool = True,
) -> tuple[list[Accepted], bool]:
    """Record several jobs of one kind in one transaction and send their tasks; returns the 202 bodies, in
    order, and whether they are new. All are recorded, or none (503).

    With an ``Idempotency-Key`` the jobs are one submission: repeating it returns the same jobs
    (``Idempotent-Replayed: true``), a different ``fingerprint`` (default: the requests) under it is 422.
    A ``batch`` keeps its keys apart from single submissions' (each job's key gets its index).
    """
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise HTTPException(422, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    task_name, queue = TASK_FOR_KIND[kind]
    digest = request_hash({"kind": kind, "request": list(requests) if fingerprint is None else fingerprint})
    news = [
        NewJob(
            kind=kind,
            request=request,
            task_name=task_name,
            queue=queue,
            owner=owner,
            idempotency_key=None
            if idempotency_key is None
            else f"{owner or ''}:{idempotency_key}" + (f"#{index}" if batch else ""),
            request_hash=digest,
            job_id=None if job_ids is None else job_ids[index],
        )
        for index, request in enumerate(requests)
    ]
    try:
        results = await state.submitter.submit(news)
    except IdempotencyConflict as exc:
        raise HTTPException(422, "Idempotency-Key was already used with a different request") from exc
    replayed = [result for result in results if not result.created]
    if replayed:
        if replayed[0].request_hash != digest:
            raise HTTPException(422, "Idempotency-Key was already used with a different request")
        response.headers["Idempotent-Replayed"] = "true"
    return [accepted(result.job) for result in results], not replayed
