"""What a worker process holds open: job store, ledger, event stream, storage. Made once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis
from celery import Celery

from conveyor.events import EventLog
from conveyor.files.storage import LocalStorage, Storage
from conveyor.queue.app import app as celery_app
from conveyor.queue.dispatch import Dispatcher
from conveyor.redis_client import redis_client
from conveyor.secrets import SecretBox
from conveyor.settings import Settings, get_settings
from conveyor.store.db import create_engine
from conveyor.store.jobstore import JobStore
from conveyor.store.ledger import Ledger
from conveyor.store.schedules import ScheduleStore
from worker.announced import Announced


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    ledger: Ledger
    schedules: ScheduleStore
    events: EventLog
    storage: Storage
    dispatcher: Dispatcher
    redis: redis.Redis
    secrets: SecretBox
    pid: int
    #: Published outcomes whose rows' marks are cleared behind the runs (:mod:`worker.announced`).
    announced: Announced

    def close(self) -> None:
        self.announced.close()
        self.store.writer.close()
        self.redis.close()
        if self.dispatcher.broker is not None:
            self.dispatcher.broker.close()
        self.store.engine.dispose()


_runtime: Runtime | None = None


def open_runtime(settings: Settings, celery: Celery | None = None) -> Runtime:
    """Connections for this process (made lazily by their pools, never at import time).

    Tasks are sent through ``celery`` (default: the worker's own app).
    """
    engine = create_engine(settings.effective_database_url, write_lock_timeout=settings.write_lock_timeout_seconds)
    # A Redis restart (seconds) is ridden out: each command is tried again with backoff for about 25 s.
    client = redis_client(settings.effective_redis_url, patience="background")
    store = JobStore(engine)  # its group writer commits every write of this process
    events = EventLog(client, settings.events_max_len)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    return Runtime(
        settings=settings,
        store=store,
        ledger=Ledger(engine, store.writer),
        schedules=ScheduleStore(engine, store.writer),
        events=events,
        storage=LocalStorage(settings.storage_dir),
        dispatcher=Dispatcher(
            store,
            events,
            celery or celery_app,
            redis_client(settings.effective_broker_url, patience="background") if settings.separate_broker else None,
        ),
        redis=client,
        secrets=SecretBox(settings),
        pid=os.getpid(),
        announced=Announced(store),
    )


def runtime() -> Runtime:
    """This process's runtime; a forked child never reuses its parent's connections."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = open_runtime(get_settings())
    return _runtime


def close_runtime() -> None:
    global _runtime
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.close()
    _runtime = None


def flush_announced() -> None:
    """Note now the outcomes this process's runtime announced (:meth:`worker.announced.Announced.flush`), if it has
    one; the runtime stays open."""
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.announced.flush()
