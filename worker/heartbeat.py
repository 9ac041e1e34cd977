"""A run's heartbeat: while a job runs, a thread of the worker process touches the job's row every few seconds.

A started job whose heartbeat is older than ``Settings.dead_after_seconds`` belongs to a dead run (its process was
killed, ran out of memory, or its machine is gone): a new delivery may claim it, and beat's ``reap_stale`` sends one.
The beat comes from the process doing the work, so it stops exactly when that process dies; a live but busy handler
keeps beating as long as the interpreter switches threads (every few milliseconds, even in pure-Python loops).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from conveyor.jobstore import UNAVAILABLE, JobStore

log = logging.getLogger("conveyor.worker")


class Heartbeat:
    """Touches attempt ``attempt`` of job ``job_id`` every ``interval`` seconds while the ``with`` block runs.

    Beating stops on exit, or by itself once the job is no longer this run's (finished, cancelled, taken over).
    A job store that does not answer is logged and tried again at the next beat; the run is not interrupted.
    """

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating. Waits up to 5 s for a beat in progress; one still stuck after that (a job store that does
        not answer) is left to finish on its own, harmlessly: it touches only a started job held by this attempt."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                mine = self.store.heartbeat(self.job_id, self.attempt)
            except UNAVAILABLE as exc:
                log.warning("heartbeat not recorded job_id=%s error=%r", self.job_id, exc)
                continue
            self.beats += 1
            if not mine:
                log.info("job no longer held by this run; heartbeat stops job_id=%s", self.job_id)
                return
