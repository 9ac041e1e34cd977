"""What an api process holds open, made by the lifespan and reached by routes through ``api.deps``."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import anyio
import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI

from api import revocation
from api.auth import Authenticator
from api.health import Health
from api.instruments import ProcessMetrics
from api.leases import Leases
from api.ratelimit import RateLimiter
from api.rooms.store import RoomStore
from api.rooms.watch import RoomWatch
from api.streams.hub import Hub, raise_open_file_limit
from conveyor import logs
from conveyor.events import AsyncEventLog, EventLog
from conveyor.files.storage import LocalStorage, Storage
from conveyor.queue.app import create_celery
from conveyor.queue.dispatch import Dispatcher
from conveyor.queue.submitter import Submitter
from conveyor.redis_client import display_url, redis_client
from conveyor.secrets import SecretBox
from conveyor.settings import Settings
from conveyor.store.apikeys import KeyStore
from conveyor.store.db import create_engine, migrate, write_stats
from conveyor.store.jobstore import JobStore
from conveyor.store.ledger import Ledger
from conveyor.store.schedules import ScheduleStore
from conveyor.topics import TopicPolicy

log = logs.get("conveyor.api")
T = TypeVar("T")
#: Job-store threads of an api process (and connections in its pool): reads and the writes routes wait for.
DB_THREADS = 20


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    ledger: Ledger
    schedules: ScheduleStore
    events: AsyncEventLog
    dispatcher: Dispatcher
    submitter: Submitter
    hub: Hub
    redis: aioredis.Redis
    celery: Celery
    storage: Storage
    auth: Authenticator
    limiter: RateLimiter
    leases: Leases
    rooms: RoomStore
    topics: TopicPolicy
    secrets: SecretBox
    #: Threads for job-store reads and writes, apart from every other thread the api uses (file I/O).
    db_threads: anyio.CapacityLimiter

    async def db(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` (a job-store call) on one of the api's job-store threads."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self.db_threads)

    health: Health
    #: This process's own metrics series (``api/metrics.py``), fed by its middleware and its hub.
    process_metrics: ProcessMetrics = field(default_factory=ProcessMetrics)
    #: The Redis holding the queues when it is not :attr:`redis` (``CONVEYOR_BROKER_URL``): queue depths are read there.
    broker_redis: aioredis.Redis | None = None

    def __post_init__(self) -> None:
        self.process_metrics.hub = self.hub


class State(TypedDict):
    conveyor: AppState


@contextlib.asynccontextmanager
async def open_state(settings: Settings) -> AsyncIterator[AppState]:
    """Open the job store, Redis pools and the event hub; close them all on exit."""
    engine = create_engine(
        settings.effective_database_url,
        write_lock_timeout=settings.write_lock_timeout_seconds,
        pool_size=DB_THREADS,
        max_overflow=10,
    )
    db_threads = anyio.CapacityLimiter(DB_THREADS)
    await anyio.to_thread.run_sync(migrate, engine)  # once per start: `conveyor api` leaves it to the lifespan
    async_redis = redis_client(settings.effective_redis_url, asynchronous=True)
    sync_redis = redis_client(settings.effective_redis_url)
    celery = create_celery(settings)
    store = JobStore(engine)
    events = AsyncEventLog(async_redis, settings.events_max_len)
    topics = TopicPolicy.parse(settings.shared_topics)
    hub = Hub(
        events,
        settings.ws_send_queue,
        settings.stream_max_connections,
        settings.stream_max_per_topic,
        max_per_holder=settings.max_streams_per_key,
        topic_key=topics.key,
    )
    raise_open_file_limit()
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    sync_events = EventLog(sync_redis, settings.events_max_len)
    # Task messages go to the broker's own Redis when it is not the events' (CONVEYOR_BROKER_URL).
    broker = redis_client(settings.effective_broker_url) if settings.separate_broker else None
    # /health's own Redis pool and job-store engine: user traffic can exhaust the shared ones, never these.
    health_redis = redis_client(settings.effective_redis_url, asynchronous=True, max_connections=2)
    health_engine = create_engine(settings.effective_database_url, pool_size=1, max_overflow=1, pool_timeout=2)
    reader: asyncio.Task[None] | None = None
    state = AppState(
        settings=settings,
        store=store,
        ledger=Ledger(engine, store.writer),
        schedules=ScheduleStore(engine, store.writer),
        events=events,
        dispatcher=Dispatcher(store, sync_events, celery, broker),
        submitter=Submitter(store, sync_events, celery, broker, bundle_max=settings.bundle_max),
        hub=hub,
        redis=async_redis,
        celery=celery,
        storage=LocalStorage(settings.storage_dir),
        auth=Authenticator(
            KeyStore(engine),
            async_redis,
            enabled=settings.auth == "keys",
            cache_seconds=settings.auth_cache_seconds,
            threads=db_threads,
        ),
        limiter=RateLimiter(async_redis, settings.rate_limit_per_second, settings.rate_limit_burst),
        leases=Leases(async_redis),
        rooms=RoomStore(async_redis, settings.events_max_len),
        topics=topics,
        secrets=SecretBox(settings),
        db_threads=db_threads,
        health=Health(health_redis, health_engine, hub, lambda: reader, settings.required_queues),
        broker_redis=(
            redis_client(settings.effective_broker_url, asynchronous=True, max_connections=4)
            if settings.separate_broker
            else None
        ),
    )
    reader = asyncio.create_task(hub.run(), name="event-hub")
    revocations = asyncio.create_task(revocation.watch(hub, state.auth), name="revocations")
    renewals = asyncio.create_task(state.leases.run(), name="lease-renewals")
    room_watch = asyncio.create_task(RoomWatch(hub, state.rooms).run(), name="room-watch")
    try:
        yield state
    finally:
        for task in (reader, revocations, renewals, room_watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.leases.aclose()
        await async_redis.aclose()
        await health_redis.aclose()
        health_engine.dispose()
        sync_redis.close()
        state.submitter.close()
        if broker is not None:
            broker.close()
        if state.broker_redis is not None:
            await state.broker_redis.aclose()
        celery.close()
        store.writer.close()
        engine.dispose()
        if settings.stats_file is not None:  # uvicorn ends the process with the stop signal: no atexit
            write_stats(settings.stats_file, os.environ.get("CONVEYOR_PROCESS_NAME", "api"))


def lifespan_for(settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        async with open_state(settings) as state:
            log.info("api ready", redis=display_url(settings.effective_redis_url))
            yield {"conveyor": state}

    return lifespan
