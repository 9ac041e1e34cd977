"""SQLite writers take turns on a lock (threads and processes) instead of sleeping in SQLite's busy handler.

The test with a second process is marked ``system`` (it starts one).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import shutil
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


def test_the_wal_is_checkpointed_on_a_thread_of_its_own_while_writers_go_on(tmp_path: Path) -> None:
    """The WAL stays short (a checkpoint every ``CHECKPOINT_EVERY`` commits), every checkpoint runs on the
    process's checkpointer thread, never on a writer's, and never under the write lock: SQLite's automatic one only
    passed ``AUTOCHECKPOINT_PAGES``."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    db.migrate(engine)
    seen: list[tuple[str, bool]] = []
    lock = db._write_lock(engine)
    assert isinstance(lock, db._WriteLock)

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "wal_checkpoint" in statement:
            holder = threading.current_thread()
            seen.append((holder.name, lock.thread_lock.locked() and holder is writer))

    writer = threading.current_thread()
    rows = 40 * db.CHECKPOINT_EVERY
    for n in range(rows):
        with db.writing(engine) as connection:
            connection.execute(db.effects.insert(), {"job_id": f"j{n}", "effect": "e", "detail": {"n": "x" * 500},
                                                     "created_at": datetime.now(UTC)})  # fmt: skip
    assert lock.checkpointer.wait_idle(10)
    assert seen and {name for name, _held in seen} == {"job-store-checkpointer"}
    assert not any(held for _name, held in seen)
    # Every committed page is in the database file itself (a copy of it without its WAL holds every row): the
    # checkpoints kept up. SQLite's own checkpoint never ran, as the WAL never reached its threshold.
    assert (tmp_path / "jobs.db-wal").stat().st_size < db.AUTOCHECKPOINT_PAGES * 4096
    shutil.copyfile(tmp_path / "jobs.db", tmp_path / "copy.db")
    copy = sa.create_engine(f"sqlite:///{tmp_path / 'copy.db'}")
    with copy.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(db.effects)).scalar_one() == rows
    copy.dispose()


def test_the_checkpointer_outlives_a_failed_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint that fails is logged and left to the next one, which runs on the same thread."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    db.migrate(engine)
    checkpointer = db._Checkpointer()
    broken = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'jobs.db'}")  # its directory does not exist
    checkpointer.request(broken)
    assert checkpointer.wait_idle(10)
    thread = checkpointer._thread
    checkpointer.request(engine)
    assert checkpointer.wait_idle(10)
    assert checkpointer.done == 2 and checkpointer._thread is thread and thread is not None and thread.is_alive()
    assert "job store checkpoint failed" in caplog.text


def _checkpoint_in_child(path: str, out: Any) -> None:
    engine = db.create_engine(f"sqlite:///{path}")
    lock = db._write_lock(engine)
    assert isinstance(lock, db._WriteLock)
    lock.checkpointer.request(engine)
    out.put((lock.checkpointer.wait_idle(10), lock.checkpointer.done))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # what it tests
def test_a_forked_child_checkpoints_on_a_thread_of_its_own(tmp_path: Path) -> None:
    """A child forked while the parent's checkpointer holds its lock gets a checkpointer of its own that works."""
    engine = db.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    db.migrate(engine)
    lock = db._write_lock(engine)
    assert isinstance(lock, db._WriteLock)
    lock.checkpointer.request(engine)
    assert lock.checkpointer.wait_idle(10)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    held, forked = threading.Event(), threading.Event()

    def hold() -> None:  # another thread of the parent holds the checkpointer's lock at the fork
        with lock.checkpointer._cond:
            held.set()
            forked.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    child = context.Process(target=_checkpoint_in_child, args=(str(tmp_path / "jobs.db"), out))
    child.start()
    forked.set()
    holder.join()
    assert out.get(timeout=20) == (True, 1)
    child.join(timeout=10)
    assert child.exitcode == 0
