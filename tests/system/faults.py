"""Helpers for the fault tests: a stack of real processes on its own Redis, and reading the job store directly.

Each fault test starts its own processes (it kills some of them), on its own Redis and data directory, and reads
outcomes from the job store's SQLite file rather than through the api, so that the api's health is never what
decides whether a job counts as done.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from conveyor.ops.redis_server import free_port, redis_command, wait_for_port
from conveyor.store import db
from conveyor.store.db import create_engine
from conveyor.store.rows import aware as _aware
from tests.support import (
    Process,
    base_env,
    bearer,
    conveyor,
    create_key,
    start_process,
    wait_for_workers,
    wait_until_healthy,
)


@dataclass
class FaultStack:
    """Real processes sharing one Redis and one data directory; each can be killed and started again."""

    root: Path
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    #: Where the test reads the job store (default: the SQLite file the processes use).
    store_url: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.root / "var"
        self.redis_dir = self.root / "redis"
        self.logs = self.root / "logs"
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.env = base_env(
            self.data_dir,
            CONVEYOR_REDIS_URL=self.redis_url,
            CONVEYOR_API_PORT=str(self.api_port),
            **self.env,
        )
        self._engine: sa.Engine | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.api_port}"

    @functools.cached_property
    def headers(self) -> dict[str, str]:
        """The header of an API key (owner ``tests``) in this stack's job store, made on first use."""
        return bearer(create_key(self.env, "tests"))

    def start_redis(self) -> Process:
        """redis-server on this stack's port, its append-only file in this stack's directory (kept across restarts)."""
        process = start_process("redis", redis_command(self.redis_port, self.redis_dir), os.environ, self.logs)
        self.processes["redis"] = process
        wait_for_port(self.redis_port, 10, process.popen)
        return process

    def start(self, name: str, args: list[str], **extra_env: str) -> Process:
        """``conveyor ARGS`` as process ``name``."""
        env = {**self.env, **extra_env, "CONVEYOR_PROCESS_NAME": name}
        process = conveyor(name, args, env, self.logs)
        self.processes[name] = process
        return process

    def start_argv(self, name: str, argv: list[str]) -> Process:
        """Any command (``python -m celery …``) with this stack's environment."""
        env = {**self.env, "CONVEYOR_PROCESS_NAME": name}
        process = start_process(name, [sys.executable, *argv], env, self.logs)
        self.processes[name] = process
        return process

    def worker(self, name: str, queue: str, concurrency: int = 2, include: str | None = None) -> Process:
        """A Celery worker for ``queue`` with the options ``conveyor worker`` uses, but its own node name ``name``
        (two ``conveyor worker`` processes on one host share theirs), and optionally a module of extra tasks."""
        argv = [
            "-m",
            "celery",
            "-A",
            "conveyor.queue.app",
            "worker",
            f"--queues={queue}",
            f"--concurrency={concurrency}",
        ]
        argv += [f"--hostname={name}@%h", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
        if include is not None:
            argv.append(f"--include={include}")
        return self.start_argv(name, argv)

    def wait_ready(self, workers: Iterable[str] = (), timeout: float = 60) -> None:
        """Until the api is healthy and every named worker answers a ping."""
        wait_until_healthy(self.base_url, timeout, list(self.processes.values()))
        if workers:
            wait_for_workers(self.redis_url, list(workers), timeout, list(self.processes.values()))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        """Send ``sig`` to the process group of ``name`` (the process and its pool children). Returns the time."""
        process = self.processes[name]
        os.killpg(process.pid, sig)
        process.popen.wait(10)
        process.stopped = sig == signal.SIGKILL  # the whole group is gone: its id is not ours to signal again
        return time.time()

    def stop_all(self) -> None:
        for name, process in reversed(list(self.processes.items())):
            if name != "redis":
                process.stop()
        if "redis" in self.processes:
            self.processes["redis"].stop()
        if self._engine is not None:
            self._engine.dispose()

    def output(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())

    # The job store, read directly.

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.store_url or f"sqlite:///{self.data_dir / 'conveyor.db'}")
        return self._engine

    def rows(self, job_ids: Iterable[str] | None = None) -> list[Mapping[str, Any]]:
        query = sa.select(db.jobs)
        if job_ids is not None:
            query = query.where(db.jobs.c.id.in_(list(job_ids)))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def statuses(self, job_ids: Iterable[str] | None = None) -> Counter[str]:
        return Counter(row["status"] for row in self.rows(job_ids))

    def wait_for(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``done`` until it holds; returns the seconds waited, or fails with every process's log."""
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout}s\n{self.output()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def wait_finished(self, job_ids: list[str], timeout: float, status: str = "succeeded") -> float:
        return self.wait_for(
            lambda: self.statuses(job_ids)[status] == len(job_ids),
            timeout,
            f"{len(job_ids)} jobs {status} (now {dict(self.statuses(job_ids))})",
        )


def finished_at(row: Mapping[str, Any]) -> float:
    value: datetime = _aware(row["finished_at"])
    return value.timestamp()


def submit_many(
    base_url: str, bodies: list[dict[str, Any]], threads: int = 8, *, headers: Mapping[str, str]
) -> list[httpx.Response]:
    """POST every body to ``/notifications`` (a few at a time); returns the answers in order."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client, ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda body: client.post("/notifications", json=body), bodies))


def accepted_ids(responses: list[httpx.Response]) -> list[str]:
    for response in responses:
        assert response.status_code == 202, response.text
    return [str(response.json()["job_id"]) for response in responses]
