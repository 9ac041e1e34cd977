"""What an api process holds open, made by the lifespan and reached by routes through ``api.deps``."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypedDict

import anyio
import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI

from api import revocation
from api.auth import Authenticator
from api.leases import Leases
from api.ratelimit import RateLimiter
from api.streams.hub import Hub, raise_open_file_limit
from conveyor import logs
from conveyor.events import AsyncEventLog, EventLog
from conveyor.files.storage import LocalStorage, Storage
from conveyor.queue.app import create_celery
from conveyor.queue.dispatch import Dispatcher
from conveyor.queue.submitter import Submitter
from conveyor.redis_client import redis_client
from conveyor.settings import Settings
from conveyor.store.apikeys import KeyStore
from conveyor.store.db import create_engine, migrate, write_stats
from conveyor.store.jobstore import JobStore
from conveyor.store.ledger import Ledger
from conveyor.topics import TopicPolicy

log = logs.get("conveyor.api")


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    ledger: Ledger
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
    topics: TopicPolicy


class State(TypedDict):
    conveyor: AppState


@contextlib.asynccontextmanager
async def open_state(settings: Settings) -> AsyncIterator[AppState]:
    """Open the job store, Redis pools and the event hub; close them all on exit."""
    engine = create_engine(settings.effective_database_url, pool_size=20, max_overflow=20)
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
    state = AppState(
        settings=settings,
        store=store,
        ledger=Ledger(engine, store.writer),
        events=events,
        dispatcher=Dispatcher(store, sync_events, celery),
        submitter=Submitter(store, sync_events, celery),
        hub=hub,
        redis=async_redis,
        celery=celery,
        storage=LocalStorage(settings.storage_dir),
        auth=Authenticator(
            KeyStore(engine), async_redis, enabled=settings.auth == "keys", cache_seconds=settings.auth_cache_seconds
        ),
        limiter=RateLimiter(async_redis, settings.rate_limit_per_second, settings.rate_limit_burst),
        leases=Leases(async_redis),
        topics=topics,
    )
    reader = asyncio.create_task(hub.run(), name="event-hub")
    revocations = asyncio.create_task(revocation.watch(hub, state.auth), name="revocations")
    renewals = asyncio.create_task(state.leases.run(), name="lease-renewals")
    try:
        yield state
    finally:
        for task in (reader, revocations, renewals):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.leases.aclose()
        await async_redis.aclose()
        sync_redis.close()
        state.submitter.close()
        celery.close()
        store.writer.close()
        engine.dispose()
        if settings.stats_file is not None:  # uvicorn ends the process with the stop signal: no atexit
            write_stats(settings.stats_file, os.environ.get("CONVEYOR_PROCESS_NAME", "api"))


def lifespan_for(settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        async with open_state(settings) as state:
            log.info("api ready", redis=settings.effective_redis_url.split("@")[-1])
            yield {"conveyor": state}

    return lifespan
