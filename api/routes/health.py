"""``GET /health``: 200 when every part answers, else 503 ``degraded`` naming what is down."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.errors import unavailable
from conveyor import __version__

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={503: {"description": "Degraded: Redis, the job store, the event reader or a required queue's workers"}},
)
async def health(state: StateDep) -> JSONResponse:
    """Whether this api process can serve: Redis and the job store answer (each within 2 s), its event reader reads,
    and every queue of ``CONVEYOR_HEALTH_QUEUES`` has a live worker. Shows each part and the workers seen per queue.
    Never waits behind user traffic (its own connections); calls at the same moment share one round of checks."""
    report = await state.health.report()
    if report.ok:
        return JSONResponse({"status": "ok", **report.fields(), "version": __version__})
    return unavailable("; ".join(report.problems), status="degraded", **report.fields(), version=__version__)
