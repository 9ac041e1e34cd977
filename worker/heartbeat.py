"""A run's heartbeat: while a job runs, a thread of the worker process touches the job's row every few seconds.

A started job whose heartbeat is older than ``Settings.dead_after_seconds`` belongs to a dead run (its process was
killed, ran out of memory, or its machine is gone): a new delivery may claim it, and beat's ``reap_stale`` sends one.
The beat comes from the process doing the work, so it stops exactly when that process dies; a live but busy handler
keeps beating as long as the interpreter switches threads (every few milliseconds, even in pure-Python loops).
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

from conveyor import logs
from conveyor.store import writes
from conveyor.store.db import UNAVAILABLE
from conveyor.store.jobstore import JobStore

log = logs.get("conveyor.worker")


class Heartbeat:
    """Touches attempt ``attempt`` of job ``job_id`` every ``interval`` seconds while the ``with`` block runs.

    Beating stops on exit, or by itself once the job is no longer this run's (finished, cancelled, taken over).
    A job store that does not answer is logged and tried again at the next beat; the run is not interrupted.
    One thread per process beats every run of the process (``_Beater``), all due runs in one transaction: a run
    costs no thread of its own.
    """

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self.due = 0.0
        self._idle = threading.Event()
        self._idle.set()

    def __enter__(self) -> Heartbeat:
        self.due = time.monotonic() + self.interval
        _beater().add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating. Waits up to 5 s for a beat in progress; one still stuck after that (a job store that does
        not answer) is left to finish on its own, harmlessly: it touches only a started job held by this attempt."""
        _beater().discard(self)
        if threading.current_thread() is not _beater().thread:
            self._idle.wait(timeout=5)


class _Beater:
    """The process's heartbeat thread: sleeps until the next run is due, beats every due run, again."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.runs: set[Heartbeat] = set()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)
        self.thread.start()

    def add(self, run: Heartbeat) -> None:
        with self.cond:
            self.runs.add(run)
            self.cond.notify()

    def discard(self, run: Heartbeat) -> None:
        with self.cond:
            self.runs.discard(run)

    def _loop(self) -> None:
        """Beat forever. An unexpected error is logged with its traceback and the loop goes on: a beater that died
        would let every later run of the process look dead."""
        while True:
            try:
                self._beat_due()
            except Exception:
                log.exception("heartbeat loop failed; beating on")
                time.sleep(1.0)

    def _beat_due(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                due = [run for run in self.runs if run.due <= now]
                if due:
                    for run in due:
                        run._idle.clear()
                    break
                self.cond.wait(min((run.due for run in self.runs), default=now + 60) - now)
        try:
            mine = self._touch(due)
        finally:
            for run in due:
                run.due = time.monotonic() + run.interval
                run._idle.set()
        for run, held in zip(due, mine, strict=True):
            if not held:
                log.info("job no longer held by this run; heartbeat stops", job_id=run.job_id)
                self.discard(run)

    @staticmethod
    def _touch(due: list[Heartbeat]) -> list[bool]:
        """Touch every due run's row in one transaction; for each, whether the run still holds its job (a job store
        that does not answer is logged and tried again at the next beat: the runs are not interrupted)."""
        runs = [(run.job_id, run.attempt) for run in due]
        try:
            return due[0].store.write(lambda connection: writes.heartbeat(connection, runs))
        except UNAVAILABLE as exc:
            log.warning("heartbeats not recorded", jobs=len(runs), error=repr(exc))
            return [True] * len(due)


_beaters: dict[int, _Beater] = {}
_beaters_lock = threading.Lock()


def _beater() -> _Beater:
    """This process's beater, started on first use (a forked worker process starts its own)."""
    pid = os.getpid()
    beater = _beaters.get(pid)
    if beater is None:
        with _beaters_lock:
            beater = _beaters.get(pid)
            if beater is None:
                beater = _beaters[pid] = _Beater()
    return beater
