"""The PostgreSQL server the tests use (``CONVEYOR_TEST_POSTGRES_URL``), and when its absence may skip a test.

Only one thing may skip a PostgreSQL test: no server listening at the URL's address, outside CI. In CI (``CI=true``)
that fails the test instead, and so does, everywhere, anything else that goes wrong on the way (a missing driver, a
wrong role or database, a slow connect, a failed ``CREATE SCHEMA``): those are errors of the run, not reasons to skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

#: The job store of the tests that do not choose one (the ``settings``, ``api_settings`` and ``stack`` fixtures of
#: tests/conftest.py): ``sqlite`` (default: a file in the test's directory) or ``postgresql`` (a schema of each
#: test's own in the server below, dropped afterwards). CI runs the suite on SQLite, then a chosen part of it again
#: with ``CONVEYOR_TEST_STORE=postgresql`` (.ci/run).
STORE = os.environ.get("CONVEYOR_TEST_STORE", "sqlite")
if STORE not in ("sqlite", "postgresql"):
    raise RuntimeError(f"CONVEYOR_TEST_STORE={STORE!r}: choose sqlite or postgresql")

POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Seconds a connection to the server may take (a loaded machine is slow; a slow server is not a missing one).
CONNECT_TIMEOUT = 30


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def require_postgres() -> sa.URL:
    """The server's URL, once something listens at its address; otherwise skip the test (fail it in CI)."""
    url = sa.make_url(POSTGRES_URL)
    if url.host is not None and not url.host.startswith("/"):
        address = (url.host, url.port or 5432)
        try:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
        except ConnectionRefusedError:
            reason = f"no PostgreSQL server listening on {address[0]}:{address[1]} (CONVEYOR_TEST_POSTGRES_URL)"
            if in_ci():
                pytest.fail(f"{reason}; in CI every PostgreSQL test runs", pytrace=False)
            pytest.skip(reason)
    return url


@contextlib.contextmanager
def postgres_schema(prefix: str = "conveyor_test_") -> Iterator[tuple[sa.URL, str]]:
    """A fresh schema in the test server, dropped afterwards; yields the server's URL and the schema's name."""
    url = require_postgres()
    admin = sa.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT})
    schema = prefix + secrets.token_hex(4)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            yield url, schema
        finally:
            with admin.begin() as connection:
                connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


def schema_url(url: sa.URL, schema: str) -> str:
    """A job-store URL (``CONVEYOR_DATABASE_URL``) whose connections work in ``schema``."""
    return url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextlib.contextmanager
def job_store_url() -> Iterator[str | None]:
    """The job store for a test that does not choose one (:data:`STORE`): ``None`` (SQLite under the test's data
    directory) or the URL of a fresh PostgreSQL schema, dropped afterwards."""
    if STORE == "sqlite":
        yield None
        return
    with postgres_schema() as (url, schema):
        yield schema_url(url, schema)
