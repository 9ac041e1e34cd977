"""What ``GET /health`` checks: Redis, the job store, this process's event reader, and the workers seen per queue.

The checks never wait behind user traffic: they use a Redis connection pool and a job-store engine of their own
(one or two connections each) and a thread limiter of their own. However many ``/health`` calls come at once, one
round of checks runs at a time and every call that arrives meanwhile shares its answer, so a flood of health checks
costs Redis and the job store next to nothing and cannot exhaust a pool. Each check is bounded by ``timeout``
seconds; a check that fails or times out says why, never raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
import sqlalchemy as sa

from api.streams.hub import Hub
from conveyor import names
from conveyor.liveness import live_workers

OK = "ok"


@dataclass(frozen=True)
class Report:
    """One round of checks. ``problems`` says, in words, every part that is down; none means ok."""

    redis: str
    database: str
    events: str
    #: Workers seen in the last ``conveyor.liveness.TTL_SECONDS``, per queue (``None``: Redis did not say).
    workers: dict[str, int] | None
    problems: list[str] = field(default_factory=list)
    #: Unexpected errors each supervised loop of this process met (and went on after) since it started.
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fields(self) -> dict[str, Any]:
        """The parts as ``/health`` shows them."""
        return {
            "redis": self.redis,
            "database": self.database,
            "events": self.events,
            "workers": self.workers,
            "errors": self.errors,
        }


class Health:
    """The checks behind ``/health`` for one api process (see the module's docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        engine: sa.Engine,
        hub: Hub,
        reader: Callable[[], asyncio.Task[None] | None],
        required_queues: Sequence[str] = (),
        *,
        loops: Mapping[str, Callable[[], int]] | None = None,
        timeout: float = 2.0,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.hub = hub
        self.reader = reader
        self.required_queues = tuple(required_queues)
        #: Supervised loops of this process, each with its count of unexpected errors (shown, never degraded: the
        #: loop went on). The event reader is always one.
        self.loops = {"event_reader": lambda: hub.failures, **(loops or {})}
        self.timeout = timeout
        #: The event reader is stale when its last read returned this long ago (it blocks ``block_ms`` per read).
        self.stale_after = 2 * hub.block_ms / 1000 + 2
        self._limiter = anyio.CapacityLimiter(1)
        self._running: asyncio.Task[Report] | None = None

    async def report(self) -> Report:
        """A report made now, or by the round of checks already running (shared by every call that waits on it)."""
        if self._running is None:
            self._running = asyncio.create_task(self._check(), name="health-check")
            self._running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, _task: asyncio.Task[Report]) -> None:
        self._running = None

    async def _check(self) -> Report:
        (redis_state, workers), database = await asyncio.gather(self._redis(), self._database())
        events = self._events()
        parts = (("redis", redis_state), ("database", database), ("event reader", events))
        problems = [f"{name} {state}" for name, state in parts if state != OK]
        if workers is not None:
            problems += [f"no live worker for queue {queue}" for queue in self.required_queues if not workers[queue]]
        errors = {name: count() for name, count in self.loops.items()}
        return Report(redis_state, database, events, workers, problems, errors)

    async def _redis(self) -> tuple[str, dict[str, int] | None]:
        try:
            with anyio.fail_after(self.timeout):
                await self.redis.ping()
                return OK, await live_workers(self.redis, names.QUEUES)
        except Exception as exc:  # noqa: BLE001 - any failure is "unavailable"
            return f"unavailable: {type(exc).__name__}", None

    async def _database(self) -> str:
        try:
            with anyio.fail_after(self.timeout):
                await anyio.to_thread.run_sync(self._ping_database, limiter=self._limiter, abandon_on_cancel=True)
            return OK
        except Exception as exc:  # noqa: BLE001 - any failure is "unavailable"
            return f"unavailable: {type(exc).__name__}"

    def _ping_database(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def _events(self) -> str:
        """``ok`` while the event reader reads; else what is wrong with it."""
        task = self.reader()
        if task is None or task.done():
            return "stopped"
        if not self.hub.ready.is_set():
            return "starting"
        idle = time.monotonic() - self.hub.read_at
        return OK if idle <= self.stale_after else f"stale: no read for {idle:.0f}s"
