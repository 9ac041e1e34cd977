"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routes import attempts, health, jobs, notifications, sse, uploads, ws
from api.state import lifespan_for
from conveyor import __version__
from conveyor.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The api, wired to ``settings`` (default: the environment). Connections open in the lifespan."""
    app = FastAPI(
        title="Conveyor",
        version=__version__,
        lifespan=lifespan_for(settings or get_settings()),
    )
    for module in (health, jobs, attempts, notifications, uploads, ws, sse):
        app.include_router(module.router)
    errors.install(app)
    return app
