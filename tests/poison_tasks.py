"""A task for the poisoned-job test, loaded only by that test's worker (Celery's ``--include``), never by Conveyor.

``tests.poison`` runs its job the way Conveyor's own tasks do (:func:`worker.tasks.run`), with a handler that kills
the worker process running it, every time: a job that keeps killing its workers.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from conveyor.queue.app import app
from conveyor.schemas import Job
from worker.runner import Progress
from worker.runtime import Runtime
from worker.tasks import run

TASK_NAME = "tests.poison"


def kill_own_process(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def poison(job_id: str) -> None:
    run(job_id, kill_own_process)
