"""An outcome's event always reaches the stream: every outcome a run records marks its row unannounced until the run
published its event; the marks are cleared behind the runs (``worker/announced.py``), and beat's ``reap_stale``
publishes the latest state of a job whose mark stays (its run died between the commit and the publish).

Real Redis and SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from conveyor.schemas import JobStatus
from conveyor.store import db, writes
from conveyor.store.jobstore import utcnow
from tests.events_support import stream_events
from tests.worker.conftest import make_job
from worker import housekeeping
from worker.announced import Announced
from worker.notify import deliver, deliver_in_transaction
from worker.runner import Failed, Retryable, run_bundle, run_job
from worker.runtime import Runtime


def waiting(rt: Runtime) -> list[str]:
    """Ids of the jobs whose rows wait to be noted as announced."""
    return [job.job_id for job, _ in rt.store.unannounced(timedelta(0))]


def test_every_outcome_a_run_announces_is_noted_behind_it(rt: Runtime) -> None:
    succeeded, failed, retrying = make_job(rt), make_job(rt), make_job(rt)
    bundled = [make_job(rt, {"channel": "log", "message": f"m{n}"}) for n in range(3)]
    run_job(rt, succeeded.job_id, deliver)
    run_job(rt, failed.job_id, lambda rt, job, progress: (_ for _ in ()).throw(Failed("no")))
    with pytest.raises(Retryable):
        run_job(rt, retrying.job_id, lambda rt, job, progress: (_ for _ in ()).throw(Retryable("busy", 120)))
    run_bundle(rt, [job.job_id for job in bundled], deliver_in_transaction)
    everyone = {succeeded.job_id, failed.job_id, retrying.job_id, *(job.job_id for job in bundled)}
    assert set(waiting(rt)) == everyone  # recorded, published, not yet noted

    assert rt.announced.flush() == len(everyone)
    assert waiting(rt) == []
    assert housekeeping.announce_unannounced(rt, timedelta(0)) == 0  # nothing is published twice


def test_a_run_that_died_before_publishing_has_its_outcome_announced_by_reap_stale(rt: Runtime) -> None:
    """The outcome committed, and its process died before the publish: the row stays marked, and once the mark is
    older than the grace, ``reap_stale`` publishes the job's latest state (its result included)."""
    job = make_job(rt)
    claimed = rt.store.claim(job.job_id, stale_before=utcnow())
    assert claimed is not None
    rt.store.write(lambda c: writes.succeed(c, job.job_id, claimed.attempts, {"ok": True}))  # then the crash
    assert waiting(rt) == [job.job_id]
    assert housekeeping.reap_stale(rt) == 0  # within the grace: a live run may still be publishing it
    with rt.store.engine.begin() as connection:
        late = utcnow() - timedelta(seconds=rt.settings.announce_grace_seconds + 1)
        connection.execute(db.jobs.update().values(unannounced_since=late))
    assert housekeeping.reap_stale(rt) == 1
    (event,) = [e for e in stream_events(rt.redis) if e.job_id == job.job_id]
    assert (event.type.value, event.status, event.result, event.attempt) == (
        "job.succeeded",
        JobStatus.SUCCEEDED,
        {"ok": True},
        1,
    )
    assert waiting(rt) == [] and housekeeping.reap_stale(rt) == 0


def test_a_note_does_not_clear_a_later_change(rt: Runtime) -> None:
    """A job failed, its event published and noted late; meanwhile it was requeued and failed again, unpublished:
    the old note leaves the new mark."""
    job = make_job(rt)
    claimed = rt.store.claim(job.job_id, stale_before=utcnow())
    assert claimed is not None
    first = rt.store.write(lambda c: writes.fail(c, job.job_id, claimed.attempts, "first"))
    assert first is not None
    time.sleep(0.01)  # the behaviour under test: the second change is marked at a later time
    assert rt.store.requeue(job.job_id) is not None
    again = rt.store.claim(job.job_id, stale_before=utcnow())
    assert again is not None
    assert rt.store.write(lambda c: writes.fail(c, job.job_id, again.attempts, "second")) is not None
    rt.store.mark_announced([(job.job_id, first.updated_at)])
    assert waiting(rt) == [job.job_id]


def test_the_marks_are_cleared_within_the_interval_and_at_close(rt: Runtime) -> None:
    rt.announced.close()  # the runtime's own noter notes nothing more; this one is under test
    announced = Announced(rt.store, interval=0.05)
    first = make_job(rt)
    run_job(rt, first.job_id, deliver)
    assert waiting(rt) == [first.job_id]
    announced.note([rt.store.get(first.job_id)])  # type: ignore[list-item]
    deadline = time.monotonic() + 10
    while waiting(rt) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert waiting(rt) == []

    second = make_job(rt)
    claimed = rt.store.claim(second.job_id, stale_before=utcnow())
    assert claimed is not None
    done = rt.store.write(lambda c: writes.succeed(c, second.job_id, claimed.attempts, {}))
    announced._stop.set()  # the thread stops; close must still flush
    announced.note([done])  # type: ignore[list-item]
    announced.close()
    assert waiting(rt) == []


class _Unavailable:
    """A job store that does not answer (once), then does: what :meth:`Announced.flush` writes through."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.calls = 0

    def mark_announced(self, notes: Sequence[tuple[str, datetime]]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        self.rt.store.mark_announced(notes)


def test_a_job_store_that_does_not_answer_keeps_the_notes_for_the_next_flush(rt: Runtime) -> None:
    rt.announced.close()
    job = make_job(rt)
    done = run_job(rt, job.job_id, deliver)
    assert waiting(rt) == [job.job_id]
    announced = Announced(_Unavailable(rt), interval=3600)  # type: ignore[arg-type]
    announced.note([done])  # type: ignore[list-item]
    assert announced.flush() == 0 and waiting(rt) == [job.job_id]
    assert announced.flush() == 1 and waiting(rt) == []
