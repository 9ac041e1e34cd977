"""The group writer: a lone unit is committed in its caller's thread, units that arrive meanwhile share the next
commit on the writer thread, a failing unit fails alone, and a value is handed back only after its commit.

A real SQLite file; real threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor.store import db
from conveyor.store.writer import GroupWriter, Unit

ROWS = sa.Table("rows", sa.MetaData(), sa.Column("n", sa.Integer, primary_key=True))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    ROWS.metadata.create_all(engine)
    yield engine
    engine.dispose()


def committed(engine: sa.Engine) -> set[int]:
    """The rows another connection sees: what was committed."""
    with engine.connect() as connection:
        return set(connection.execute(sa.select(ROWS.c.n)).scalars())


def insert(n: int, where: list[str] | None = None) -> Unit[int]:
    def unit(connection: sa.Connection) -> int:
        if where is not None:
            where.append(threading.current_thread().name)
        connection.execute(ROWS.insert(), {"n": n})
        return n

    return unit


def test_a_lone_unit_is_committed_in_the_calling_thread_before_its_value_returns(engine: sa.Engine) -> None:
    writer = GroupWriter(engine)
    where: list[str] = []
    assert writer.run(insert(1, where)) == 1
    assert where == [threading.current_thread().name]
    assert committed(engine) == {1}
    assert writer.transactions == 1
    writer.close()


def test_units_that_arrive_during_a_transaction_share_the_next_commit(engine: sa.Engine) -> None:
    writer = GroupWriter(engine)
    inside, release = threading.Event(), threading.Event()

    def slow(connection: sa.Connection) -> int:
        connection.execute(ROWS.insert(), {"n": 0})
        inside.set()
        assert release.wait(10)
        return 0

    first = threading.Thread(target=writer.run, args=(slow,))
    first.start()
    assert inside.wait(10)
    where: list[str] = []
    values: list[int] = []
    others = [threading.Thread(target=lambda n=n: values.append(writer.run(insert(n, where)))) for n in range(1, 6)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while len(writer._pending) < 5:  # every one queued behind the running transaction
        assert time.monotonic() < deadline, "the other units never queued"
        time.sleep(0.01)
    assert committed(engine) == set()
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert sorted(values) == [1, 2, 3, 4, 5]
    assert committed(engine) == {0, 1, 2, 3, 4, 5}
    assert writer.transactions == 2, "the five queued units should have shared one commit"
    assert set(where) == {"group-writer"}
    writer.close()


def wake_ups(thread: threading.Thread) -> int:
    """How many times the kernel woke ``thread`` from a wait (its voluntary context switches, from /proc)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread wake-ups from /proc")
def test_a_lone_commit_does_not_wake_the_writer_thread(engine: sa.Engine) -> None:
    """A unit committed in its caller's thread leaves the idle writer thread asleep: waking it per commit cost a
    worker three context switches (and GIL hand-offs) per job at 50 jobs/s."""
    writer = GroupWriter(engine)
    writer.submit(insert(0)).result(10)  # the writer thread is started, then idle
    assert writer._thread is not None
    writer_thread = writer._thread
    time.sleep(0.1)
    before = wake_ups(writer_thread)
    for n in range(1, 201):
        writer.run(insert(n))
    woken = wake_ups(writer_thread) - before
    assert committed(engine) == set(range(201))
    assert woken < 10, f"the idle writer thread was woken {woken} times by 200 commits made in their callers' thread"
    writer.close()
    assert not writer_thread.is_alive()


def test_a_failing_unit_fails_alone(engine: sa.Engine) -> None:
    writer = GroupWriter(engine)
    futures = [writer.submit(insert(1)), writer.submit(insert(1)), writer.submit(insert(2))]  # 1 twice: a conflict
    outcomes: list[int | str] = []
    for future in futures:
        try:
            outcomes.append(future.result(10))
        except sa.exc.IntegrityError:
            outcomes.append("conflict")
    assert outcomes == [1, "conflict", 2]
    assert committed(engine) == {1, 2}
    writer.close()


def test_close_commits_what_is_pending(engine: sa.Engine) -> None:
    writer = GroupWriter(engine)
    futures = [writer.submit(insert(n)) for n in range(10)]
    writer.close()
    assert [future.result(10) for future in futures] == list(range(10))
    assert committed(engine) == set(range(10))
