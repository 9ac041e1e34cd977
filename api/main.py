"""The FastAPI application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors, metrics
from api.guard import Guard
from api.instruments import CountRequests
from api.lane import SubmissionLane
from api.routes import attempts, console, health, jobs, notifications, rooms, schedules, sse, tickets, uploads, ws
from api.state import lifespan_for
from conveyor import __version__
from conveyor.settings import Settings, get_settings

#: What :class:`api.guard.Guard` may answer on any route but the public ones.
GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or not a valid one (see WWW-Authenticate)"},
    408: {"description": "The request body stopped arriving"},
    413: {"description": "The request body is larger than allowed"},
    429: {"description": "The key's rate limit is reached (see Retry-After)"},
    503: {"description": "A dependency is unavailable, or the request took too long (see Retry-After)"},
}


#: The OpenAPI description: what the operations list cannot show.
DESCRIPTION = (
    "Slow work off the request path: submit uploads and notifications, follow each job's events live.\n\n"
    "Every operation but `/health` needs `Authorization: Bearer <API key>`. Job and topic events stream on "
    "`GET /ws` (WebSocket) and `GET /events` (Server-Sent Events), resumable with `last_event_id`: the protocol "
    "(filters, messages, close codes) is in `docs/EVENTS.md` of the repository. A web console is at "
    "[/console](/console)."
)


class ConveyorApi(FastAPI):
    """The FastAPI application, with Conveyor's own front (request counting, :class:`api.guard.Guard`, the submission
    lane) in front of the framework's middleware rather than inside it: a submission the lane answers passes one
    ASGI layer per concern and none of the framework's, whose layers (error page, telemetry, body limit, routing)
    cost more per request than the submission does. Every other request goes on to the framework as before; an
    exception the framework did not answer still ends as uvicorn's 500."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.front: ASGIApp = CountRequests(Guard(SubmissionLane(super().__call__)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The api, wired to ``settings`` (default: the environment). Connections open in the lifespan."""
    app = ConveyorApi(
        title="Conveyor",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan_for(settings or get_settings()),
        docs_url=None,  # /docs and /redoc: api.routes.console serves them from vendored files
        redoc_url=None,
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    for module in (jobs, attempts, notifications, schedules, rooms, uploads, tickets, ws, sse):
        app.include_router(module.router, responses=GUARDED)
    console.install(app)
    errors.install(app)  # the front (ConveyorApi): counting outermost, then the guard, then the lane
    return app
