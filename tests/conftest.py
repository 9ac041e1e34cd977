"""Shared fixtures: a real redis-server per session and settings pointing at temporary directories; the in-process
api (``api``, ``burst_worker``: tests/inprocess.py, tests/burst.py); the session stack of real processes (``stack``,
for system tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conveyor.ops.redis_server import free_port
from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.inprocess import Api, serve
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
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings for one test: its own data directory and SQLite job store, the session's Redis."""
    return Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=redis_url)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as uvicorn runs the api."""
    return "asyncio"


@pytest.fixture
def api_settings(tmp_path: Path, private_redis_url: str) -> Settings:
    """Settings for an in-process api: this test's data directory and SQLite job store, a private Redis database."""
    return Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=private_redis_url)  # type: ignore[call-arg]


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
    data_dir = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = base_env(data_dir, CONVEYOR_REDIS_URL=redis_url, CONVEYOR_API_PORT=str(port))
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
