"""Schedules in the job store, on each backend: the cap and unique names per owner, changes, and firing exactly
one job per due time however many firers race for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.cadence import Cadence
from conveyor.store import db
from conveyor.store.db import create_engine
from conveyor.store.jobstore import JobStore
from conveyor.store.rows import utcnow
from conveyor.store.schedules import Changes, NameTaken, NewSchedule, ScheduleLimit, ScheduleStore
from conveyor.store.writer import GroupWriter

REQUEST = {"channel": "log", "message": "tick"}


def new(name: str = "tick", owner: str = "alice", every: int = 60) -> NewSchedule:
    return NewSchedule(owner=owner, name=name, cadence=Cadence(every_seconds=every), request=REQUEST)


@pytest.fixture
def store(engine: Engine) -> Iterator[ScheduleStore]:
    writer = GroupWriter(engine)
    yield ScheduleStore(engine, writer)
    writer.close()


def test_create_get_page_delete(store: ScheduleStore) -> None:
    made = store.create(new(), limit=10)
    assert made.name == "tick" and made.every_seconds == 60 and made.fired == 0
    assert made.next_due_at is not None and made.next_due_at > made.created_at
    assert made.links["jobs"] == f"/jobs?schedule_id={made.schedule_id}"
    assert store.get(made.schedule_id, "alice") == made
    assert store.get(made.schedule_id, "bob") is None  # someone else's: as if missing
    other = store.create(new("tock"), limit=10)
    page, cursor = store.page("alice", limit=1)
    assert [s.schedule_id for s in page] == [other.schedule_id] and cursor is not None
    page, cursor = store.page("alice", limit=1, cursor=cursor)
    assert [s.schedule_id for s in page] == [made.schedule_id] and cursor is None
    assert store.page("bob")[0] == []
    assert not store.delete(made.schedule_id, "bob")
    assert store.delete(made.schedule_id, "alice")
    assert store.get(made.schedule_id, "alice") is None
    assert not store.delete(made.schedule_id, "alice")


def test_names_are_unique_per_owner_and_the_cap_counts_per_owner(store: ScheduleStore) -> None:
    first = store.create(new("a"), limit=2)
    with pytest.raises(NameTaken) as taken:
        store.create(new("a"), limit=2)
    assert taken.value.existing.schedule_id == first.schedule_id
    store.create(new("a", owner="bob"), limit=2)  # another owner's namespace
    store.create(new("b"), limit=2)
    with pytest.raises(ScheduleLimit):
        store.create(new("c"), limit=2)
    with pytest.raises(NameTaken):
        store.update(first.schedule_id, "alice", Changes(name="b"))


def test_pause_resume_and_a_new_cadence_count_due_times_afresh(store: ScheduleStore) -> None:
    made = store.create(new(every=3600), limit=10)
    paused = store.update(made.schedule_id, "alice", Changes(paused=True))
    assert paused is not None and paused.paused and paused.next_due_at is None
    assert store.due(utcnow() + timedelta(days=400)) == []  # a paused schedule is never due
    resumed = store.update(made.schedule_id, "alice", Changes(paused=False))
    assert resumed is not None and resumed.next_due_at is not None
    changed = store.update(made.schedule_id, "alice", Changes(cadence=Cadence(cron="0 9 * * *", timezone="Asia/Tokyo")))
    assert changed is not None and changed.cron == "0 9 * * *" and changed.every_seconds is None
    assert changed.next_due_at is not None and changed.next_due_at.astimezone().minute == 0
    renamed = store.update(
        made.schedule_id, "alice", Changes(name="renamed", request={"channel": "log", "message": "x"})
    )
    assert renamed is not None and renamed.name == "renamed" and renamed.notification["message"] == "x"
    assert renamed.next_due_at == changed.next_due_at  # neither a name nor a request moves the due time
    assert store.update(made.schedule_id, "bob", Changes(paused=True)) is None


def test_firing_records_one_job_and_moves_the_due_time_on(engine: Engine, store: ScheduleStore) -> None:
    made = store.create(new(every=2), limit=10)
    assert made.next_due_at is not None
    now = made.next_due_at + timedelta(seconds=7)  # three due times passed while nothing fired
    dues = store.due(now)
    assert [d.schedule_id for d in dues] == [made.schedule_id]
    fired = store.fire(dues, now)
    assert len(fired) == 1
    job = fired[0].job
    assert job.schedule_id == made.schedule_id and job.scheduled_for == made.next_due_at
    assert job.owner == "alice" and job.request == REQUEST and fired[0].queue == "notifications"
    assert store.fire(dues, now) == []  # the same due time again: nothing
    after = store.get(made.schedule_id, "alice")
    assert after is not None and after.fired == 1 and after.last_job_id == job.job_id
    # The missed due times fired once; the next is the first one after now, in phase.
    assert after.next_due_at == made.next_due_at + timedelta(seconds=8)
    jobs, _ = JobStore(engine).page(schedule_id=made.schedule_id)
    assert [j.job_id for j in jobs] == [job.job_id]


def test_racing_firers_fire_each_due_time_once(engine: Engine) -> None:
    # Four "processes" (each its own engine and group writer on the same database) fire the same schedules in a
    # loop; every due time must make exactly one job.
    first = ScheduleStore(engine, GroupWriter(engine))
    made = [first.create(new(f"s{i}", every=1), limit=100) for i in range(5)]
    base = min(s.next_due_at for s in made if s.next_due_at is not None)
    engines = [engine] + [_engine_like(engine) for _ in range(3)]
    stores = [ScheduleStore(e, GroupWriter(e)) for e in engines]
    fired_ids: list[str] = []
    lock = threading.Lock()

    def firer(store: ScheduleStore) -> None:
        for step in range(8):
            now = base + timedelta(seconds=step)
            jobs = store.fire(store.due(now), now)
            with lock:
                fired_ids.extend(j.job.job_id for j in jobs)

    threads = [threading.Thread(target=firer, args=(s,)) for s in stores for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in [first, *stores]:
        other.writer.close()
    for other_engine in engines[1:]:
        other_engine.dispose()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(db.jobs.c.schedule_id, db.jobs.c.scheduled_for)).all()
    assert len(rows) == len(fired_ids) == len(set(fired_ids))
    assert len(rows) == len({(r.schedule_id, r.scheduled_for) for r in rows}), "a due time fired twice"
    for schedule in made:
        current = first.get(schedule.schedule_id, "alice")
        assert current is not None
        assert current.fired == sum(1 for r in rows if r.schedule_id == schedule.schedule_id) >= 1


def _engine_like(engine: Engine) -> Engine:
    """Another engine (its own pool and, for SQLite, its own write lock holder) on the same database."""
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name == "sqlite":
        return create_engine(url)
    with engine.connect() as connection:
        schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
    return create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
