"""SQLite writers take turns on a lock (threads and processes) instead of sleeping in SQLite's busy handler.

The test with a second process is marked ``system`` (it starts one).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.store import db
from conveyor.store.jobstore import JobStore, NewJob


def _hold(database: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    engine = db.create_engine(f"sqlite:///{database}")
    with db.writing(engine) as connection:
        connection.execute(sa.text("SELECT 1"))
        ready.set()
        time.sleep(seconds)
    engine.dispose()


def test_threads_write_in_turn(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    engine = db.create_engine(f"sqlite:///{database}")
    db.migrate(engine)
    store = JobStore(engine)
    new = NewJob(kind="notification", request={"channel": "log"}, task_name="t", queue="q")

    def submit() -> None:
        for _ in range(25):
            store.create_many([new, new])

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(db.jobs)).scalar_one() == 200
    assert Path(f"{database}.write.lock").exists()
    engine.dispose()


@pytest.mark.system
def test_another_process_writes_in_turn(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    engine = db.create_engine(f"sqlite:///{database}")
    db.migrate(engine)
    store = JobStore(engine)
    new = NewJob(kind="notification", request={"channel": "log"}, task_name="t", queue="q")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold, args=(str(database), 1.0, ready))
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        store.create(new)  # waits for the other process's write to end
        assert time.monotonic() - started > 0.5
    finally:
        holder.join(30)
        engine.dispose()
    assert holder.exitcode == 0


def test_an_in_memory_database_takes_no_lock() -> None:
    engine = db.create_engine("sqlite://")
    with db.writing(engine) as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    engine.dispose()
