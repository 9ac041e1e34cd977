"""Answers for failures of what the api depends on: Redis or the job store not answering is a 503, never a 500.

Any route that meets a Redis connection error or timeout, or a job store that is down, restarting, locked or out
of connections, answers ``503 {"detail": …}`` with ``Retry-After``; the client may try again. Nothing was
recorded unless the route says otherwise in its own answer (submissions record before they touch Redis).
"""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from conveyor.store.jobstore import UNAVAILABLE

log = logging.getLogger("conveyor.api")

#: Seconds a client is asked to wait before trying again.
RETRY_AFTER = 2
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: Redis (the broker and event stream) did not answer."""
    log.warning("redis unavailable path=%s error=%r", request.url.path, exc)
    return _unavailable("Redis is unavailable; try again shortly")


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: the job store did not answer."""
    log.warning("job store unavailable path=%s error=%r", request.url.path, exc)
    return _unavailable("the job store is unavailable; try again shortly")


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})


def install(app: FastAPI) -> None:
    """Register the 503 handlers on ``app``."""
    for error in REDIS_UNAVAILABLE:
        app.add_exception_handler(error, redis_unavailable)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, store_unavailable)
