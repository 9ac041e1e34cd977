"""Noting, behind the runs, that their outcomes are on the event stream.

A run's outcome (succeeded, failed, retrying) is written with its row marked *unannounced*
(:mod:`conveyor.store.writes`); the run then publishes the outcome's event. Clearing the mark in a transaction of
its own would cost every run one more commit, so the run hands it to :class:`Announced`, which clears the marks of
every run of the process at once, every ``FLUSH_SECONDS``, in one unit of the process's group writer.

What is guaranteed: a mark is cleared only after its event was published. A process that dies between an
outcome's commit and its publish leaves the mark, and beat's ``reap_stale`` publishes the job's latest state once
the mark is ``ANNOUNCE_GRACE_SECONDS`` old, so a job's outcome always reaches the stream. A process that dies after
publishing but before its flush leaves marks too: those jobs' outcomes are published a second time (a client
sees the outcome twice, never not at all). A clean shutdown flushes what is left (:meth:`Announced.close`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime

from conveyor import logs
from conveyor.schemas import Job, JobStatus
from conveyor.store.db import UNAVAILABLE
from conveyor.store.jobstore import JobStore

log = logs.get("conveyor.worker")

#: How often a process clears the marks of the outcomes it announced.
FLUSH_SECONDS = 1.0
#: Marks kept while the job store does not answer; beyond that the oldest are dropped (their jobs' outcomes are
#: then published a second time by ``reap_stale``, never lost).
MAX_NOTES = 100_000
#: The statuses whose write marks the row (the outcomes of a run, and a cancellation).
MARKED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RETRYING, JobStatus.CANCELLED})


class Announced:
    """The marks this process's published outcomes are to clear, cleared by one thread (started on first use)
    every ``interval`` seconds. Thread-safe."""

    def __init__(self, store: JobStore, interval: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._notes: list[tuple[str, datetime]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, jobs: Iterable[Job]) -> None:
        """The outcomes of ``jobs`` (as written) are published: their marks are cleared within ``interval``. Jobs
        in a status that marks nothing (started) are passed over."""
        notes = [(job.job_id, job.updated_at) for job in jobs if job.status in MARKED]
        if not notes:
            return
        with self._lock:
            self._notes.extend(notes)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="announced", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Clear every mark noted so far, in one unit; how many. A job store that does not answer keeps them for
        the next flush (logged)."""
        with self._lock:
            notes, self._notes = self._notes, []
        if not notes:
            return 0
        try:
            self.store.mark_announced(notes)
        except UNAVAILABLE as exc:
            log.warning("announced outcomes not noted yet; trying again", jobs=len(notes), error=repr(exc))
            with self._lock:
                self._notes[:0] = notes
                del self._notes[:-MAX_NOTES]
            return 0
        return len(notes)

    def close(self) -> None:
        """Stop the thread and flush what is left (a clean shutdown leaves no mark it could clear)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            log.exception("announced outcomes not noted at shutdown; reap_stale will announce them again")

    def _loop(self) -> None:
        """Flush every ``interval`` until closed. An unexpected error is logged and the loop goes on."""
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:
                log.exception("noting announced outcomes failed; going on")
