"""Shared fixtures: a real redis-server per session and settings pointing at temporary directories; the in-process
api (``api``, ``burst_worker``: tests/inprocess.py, tests/burst.py); the session stack of real processes (``stack``,
for system tests)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from conveyor.ops.redis_server import free_port
from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.inprocess import Api, serve
from tests.postgres import in_ci, job_store_url
from tests.postgres import postgres_schema as _postgres_schema
from tests.support import (
    Process,
    base_env,
    bearer,
    conveyor,
    create_key,
    redis_server,
    wait_for_workers,
    wait_until_healthy,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for this test session, on a free port."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


#: The session server's database that :func:`private_redis_url` empties for each test. The others: 0 is the session
#: stack's (its workers consume from it, and most tests share it), 1 and 5 belong to tests that start an api of
#: their own (test_schemathesis.py, test_messages.py), 7 to test_ws_protocol.py's idle api (no worker reads it).
PRIVATE_DB = 3


@pytest.fixture
def private_redis_url(redis_url: str) -> str:
    """A database of the session's redis-server that no worker consumes from, empty when the test starts: queues,
    the event stream and rate-limit buckets hold only what this test put there."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{PRIVATE_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def database_url() -> Iterator[str | None]:
    """This test's own job store: ``None`` for SQLite under its data directory, or (``CONVEYOR_TEST_STORE=postgresql``)
    a fresh PostgreSQL schema's URL (tests/postgres.py)."""
    with job_store_url() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, database_url: str | None) -> Settings:
    """Settings for one test: its own data directory and job store, the session's Redis."""
    return Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=redis_url, database_url=database_url)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as uvicorn runs the api."""
    return "asyncio"


@pytest.fixture
def api_settings(tmp_path: Path, private_redis_url: str, database_url: str | None) -> Settings:
    """Settings for an in-process api: this test's data directory and job store, a private Redis database."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "var",
        redis_url=private_redis_url,
        database_url=database_url,
    )


@pytest.fixture
async def api(api_settings: Settings) -> AsyncIterator[Api]:
    """The real app on ``api_settings``, its lifespan run, served in-process with an API key (tests/inprocess.py)."""
    async with serve(api_settings) as running:
        yield running


@pytest.fixture
def burst_worker(api: Api) -> Iterator[BurstWorker]:
    """Runs the in-process api's queued jobs in this process, on demand (tests/burst.py)."""
    worker = BurstWorker(api.settings)
    try:
        yield worker
    finally:
        worker.close()


class Stack:
    """A running api and workers (real processes) on the session's Redis."""

    def __init__(
        self,
        base_url: str,
        redis_url: str,
        data_dir: Path,
        processes: dict[str, Process],
        env: dict[str, str],
        key: str,
    ) -> None:
        #: The job store's URL when it is not the SQLite file under ``data_dir`` (``CONVEYOR_TEST_STORE``).
        self.database_url = env.get("CONVEYOR_DATABASE_URL")
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://")
        self.redis_url = redis_url
        self.data_dir = data_dir
        self.processes = processes
        self.env = env
        #: An API key (owner ``tests``) and the header carrying it, for every request of the tests.
        self.key = key
        self.headers = bearer(key)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for the api, sending the key."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30, **kwargs)

    def new_key(self, owner: str) -> str:
        """Another API key, for ``owner``."""
        return create_key(self.env, owner)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-4000:]}" for name, p in self.processes.items())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """``conveyor api`` plus one ``conveyor worker`` per job queue, as subprocesses, for the whole session."""
    with job_store_url() as database_url:
        yield from _stack(tmp_path_factory, redis_url, database_url)


def _stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, database_url: str | None) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = base_env(data_dir, CONVEYOR_REDIS_URL=redis_url, CONVEYOR_API_PORT=str(port))
    if database_url is not None:
        env["CONVEYOR_DATABASE_URL"] = database_url
    logs = data_dir / "logs"
    key = create_key(env, "tests")
    processes = {"api": conveyor("api", ["api"], env, logs)}
    for queue in ("uploads", "notifications"):
        processes[queue] = conveyor(queue, ["worker", "--queues", queue, "--concurrency", "1"], env, logs)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, 60, list(processes.values()))
        wait_for_workers(redis_url, ["uploads", "notifications"], 60)
        yield Stack(base_url, redis_url, data_dir, processes, env, key)
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture
def postgres_schema() -> Iterator[tuple[sa.URL, str]]:
    """A fresh schema in the test PostgreSQL (tests/postgres.py); yields the server's URL and the schema's name."""
    with _postgres_schema() as made:
        yield made


# --- skips: a run whose every test skipped fails; in CI (CI=true) more than CONVEYOR_TEST_MAX_SKIPS skips (0 unless
# set) fail it too. tests/postgres.py says when a PostgreSQL test may skip at all.


def _skip_verdict(session: pytest.Session) -> str | None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    stats = reporter.stats
    skipped = len(stats.get("skipped", []))
    ran = sum(len(stats.get(kind, [])) for kind in ("passed", "failed", "error", "xfailed", "xpassed"))
    if skipped and not ran:
        return f"all {skipped} tests were skipped"
    limit = os.environ.get("CONVEYOR_TEST_MAX_SKIPS", "0" if in_ci() else None)
    if limit is not None and skipped > int(limit):
        return f"{skipped} tests were skipped, more than CONVEYOR_TEST_MAX_SKIPS={limit}"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and (verdict := _skip_verdict(session)) is not None:
        session.config.stash[_VERDICT] = verdict
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    verdict = config.stash.get(_VERDICT, None)
    if verdict is not None:
        terminalreporter.write_line(f"FAILED: {verdict} (see the skip policy in tests/conftest.py)", red=True)


_VERDICT = pytest.StashKey[str]()
