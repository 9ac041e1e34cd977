"""Redis or the job store not answering is a 503 with a JSON detail on any route, never a 500."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import redis
import sqlalchemy as sa
from fastapi import FastAPI
from redis.backoff import NoBackoff
from redis.retry import Retry

from api import errors
from conveyor.ops.redis_server import free_port


def app_with_failing_routes(tmp_path: Path) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/redis")
    def uses_redis() -> None:
        redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)).ping()  # nothing listens there

    @app.get("/store")
    def uses_store() -> None:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'jobs.db'}")
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    @app.get("/bug")
    def has_a_bug() -> None:
        raise ValueError("a bug is still a 500")

    return app


def test_unavailable_dependencies_are_503_with_a_detail(tmp_path: Path) -> None:
    async def check() -> None:
        transport = httpx.ASGITransport(app=app_with_failing_routes(tmp_path), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for path, word in (("/redis", "Redis"), ("/store", "job store")):
                response = await client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert word in response.json()["detail"]
                assert response.headers["retry-after"] == str(errors.RETRY_AFTER_SECONDS)
            assert (await client.get("/bug")).status_code == 500

    anyio.run(check)
