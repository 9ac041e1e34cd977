"""Job store backends: SQLite always; PostgreSQL at ``CONVEYOR_TEST_POSTGRES_URL`` (see tests/postgres.py for when its
tests may skip: only with no server listening, and never in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from conveyor.store.db import create_engine, migrate
from tests.postgres import CONNECT_TIMEOUT, postgres_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated job-store database of each backend."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
        migrate(engine)
        yield engine
        engine.dispose()
        return
    with postgres_schema() as (url, schema):
        engine = create_engine(
            url.render_as_string(hide_password=False),
            connect_args={"options": f"-csearch_path={schema}", "connect_timeout": CONNECT_TIMEOUT},
        )
        try:
            migrate(engine)
            yield engine
        finally:
            engine.dispose()
