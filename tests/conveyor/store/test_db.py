"""SQLite writers take turns on a lock (threads and processes) instead of sleeping in SQLite's busy handler.

The test with a second process is marked ``system`` (it starts one).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.store import db
from conveyor.store.db import UNAVAILABLE, WriteLockTimeout, create_engine, migrate
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


def test_a_writer_gives_up_on_a_held_write_lock_after_its_deadline(tmp_path: Path) -> None:
    """Another writer holds the SQLite write lock (a ``flock`` on ``<db>.write.lock``) too long: the transaction fails
    as the job store being unavailable (the api answers 503) instead of waiting forever; free, it goes through."""
    database = tmp_path / "held.db"
    engine = create_engine(f"sqlite:///{database}", write_lock_timeout=0.3)
    migrate(engine)
    store = JobStore(engine)
    new = NewJob(kind="notification", request={"channel": "log", "message": "m"}, task_name="t", queue="q")
    try:
        with open(f"{database}.write.lock", "a") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            with pytest.raises(UNAVAILABLE) as caught:
                store.create(new)
            assert isinstance(caught.value, WriteLockTimeout)
            fcntl.flock(holder, fcntl.LOCK_UN)
        assert store.create(new)[1]
    finally:
        store.writer.close()
        engine.dispose()


def test_writers_checkpoint_the_wal_after_letting_go_of_the_lock(tmp_path: Path) -> None:
    """The WAL stays short (the writers' own checkpoints, every ``CHECKPOINT_EVERY`` commits), and no checkpoint
    runs while the write lock is held: SQLite's automatic one only passed ``AUTOCHECKPOINT_PAGES``."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    db.migrate(engine)
    held: list[bool] = []
    lock = db._write_lock(engine)
    assert isinstance(lock, db._WriteLock)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "wal_checkpoint" in statement:
            held.append(lock.thread_lock.locked())

    rows = 40 * db.CHECKPOINT_EVERY
    for n in range(rows):
        with db.writing(engine) as connection:
            connection.execute(db.effects.insert(), {"job_id": f"j{n}", "effect": "e", "detail": {"n": "x" * 500},
                                                     "created_at": datetime.now(UTC)})  # fmt: skip
    assert held and not any(held)
    assert len(held) >= rows // db.CHECKPOINT_EVERY - 1
    wal = tmp_path / "jobs.db-wal"
    # Without the writers' checkpoints the WAL would hold every page written (well over this many).
    assert wal.stat().st_size < 4 * db.CHECKPOINT_EVERY * 4096 * 8
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(db.effects)).scalar_one() == rows
