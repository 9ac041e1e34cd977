"""PostgreSQL connections get a connect timeout and a statement timeout, keep the ``options`` a URL or a caller gives
(a ``search_path``), and a statement over the limit fails as the job store being unavailable."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conveyor.store.db import POSTGRES_STATEMENT_TIMEOUT_MS, UNAVAILABLE, create_engine, migrate
from tests.postgres import postgres_schema, schema_url

pytestmark = pytest.mark.postgres


def _show(engine: sa.Engine, name: str) -> str:
    with engine.connect() as connection:
        return str(connection.execute(sa.text(f"SHOW {name}")).scalar_one())


def test_a_url_with_a_search_path_gets_the_statement_timeout_too() -> None:
    with postgres_schema() as (url, schema):
        engine = create_engine(schema_url(url, schema))
        try:
            migrate(engine)  # waits for other migrations without the limit, then restores it
            assert _show(engine, "search_path") == schema
            assert _show(engine, "statement_timeout") == f"{POSTGRES_STATEMENT_TIMEOUT_MS // 1000}s"
        finally:
            engine.dispose()


def test_the_urls_own_statement_timeout_wins_and_a_slow_statement_is_unavailable() -> None:
    with postgres_schema() as (url, schema):
        options = f"-csearch_path={schema} -c statement_timeout=200"
        engine = create_engine(url.set(query={"options": options}).render_as_string(hide_password=False))
        try:
            assert _show(engine, "statement_timeout") == "200ms"
            with pytest.raises(UNAVAILABLE), engine.connect() as connection:
                connection.execute(sa.text("SELECT pg_sleep(2)"))
        finally:
            engine.dispose()
