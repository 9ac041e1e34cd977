"""``GET /health``: 200 when Redis and the job store answer, else 503."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.errors import unavailable
from conveyor import __version__

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"description": "Redis or the job store does not answer"}})
async def health(state: StateDep) -> JSONResponse:
    """Whether this api process can accept work: Redis and the job store both answer within 2 s."""
    checks: dict[str, str] = {}
    try:
        with anyio.fail_after(2):
            await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is "unavailable"
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    try:
        with anyio.fail_after(2):
            await anyio.to_thread.run_sync(state.store.ping, abandon_on_cancel=True)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ok", **checks, "version": __version__})
    detail = "; ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
    return unavailable(detail, status="unavailable", **checks, version=__version__)
