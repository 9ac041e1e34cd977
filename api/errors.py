"""Error answers: every error the api gives is ``{"detail": …}`` JSON, and every 503 is built by :func:`unavailable`.

Any route that meets a Redis error (unreachable, timed out, or refusing: ``MISCONF`` when Redis cannot write its
append-only file, ``OOM``, ``READONLY``), or a job store that is down, full, restarting, locked or out of
connections, answers ``503 {"detail": …}`` with ``Retry-After``; the client may try again. Nothing was recorded
unless the route says otherwise in its own answer (submissions record before they touch Redis).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS
from conveyor.store.jobstore import UNAVAILABLE

log = logs.get("conveyor.api")

#: Seconds a client is asked to wait before trying again after any 503: one policy for every route.
RETRY_AFTER_SECONDS = 2
STORE_DOWN = "the job store is unavailable; nothing was recorded, try again shortly"
REDIS_DOWN = "Redis is unavailable; try again shortly"


def error(status: int, detail: str, headers: Mapping[str, str] | None = None, /, **fields: object) -> JSONResponse:
    """An error answer: ``status`` with ``{"detail": detail}`` (and ``fields``). Also an ASGI app, for middleware."""
    return JSONResponse({**fields, "detail": detail}, status_code=status, headers=dict(headers or {}))


def unavailable(detail: str, /, **fields: object) -> JSONResponse:
    """The 503 answer: ``{"detail": detail}`` (and ``fields``) with ``Retry-After`` (:data:`RETRY_AFTER_SECONDS`)."""
    return error(503, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)}, **fields)


class ServiceUnavailable(Exception):
    """Raised by a route that cannot serve now for a reason of the server's (its detail says which): 503."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def service_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with the route's own detail."""
    detail = exc.detail if isinstance(exc, ServiceUnavailable) else str(exc)
    log.warning("service unavailable", path=request.url.path, detail=detail)
    return unavailable(detail)


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: Redis (the broker and event stream) did not answer, or refused the command."""
    log.warning("redis unavailable", path=request.url.path, error=repr(exc))
    return unavailable(REDIS_DOWN)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: the job store did not answer."""
    log.warning("job store unavailable", path=request.url.path, error=repr(exc))
    return unavailable(STORE_DOWN)


def install(app: FastAPI) -> None:
    """Register the 503 handlers on ``app``."""
    for redis_error in REDIS_ERRORS:
        app.add_exception_handler(redis_error, redis_unavailable)
    for store_error in UNAVAILABLE:
        app.add_exception_handler(store_error, store_unavailable)
    app.add_exception_handler(ServiceUnavailable, service_unavailable)
