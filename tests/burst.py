"""A burst worker (arq's idea): runs the tasks waiting in Redis in this process, one at a time, until none is left.

The api pushes Celery messages onto the queues' Redis lists (``conveyor/queue/messages.py``). :meth:`BurstWorker.drain`
pops them oldest first, reads them the way a Celery worker does (JSON only) and calls the task's own function from
the Celery app's registry (``worker/tasks.py``), so a job runs through exactly the code a worker process runs:
``worker.tasks.run`` → ``worker.runner.run_job`` → the handler. The task functions reach their connections through
``worker.runtime.runtime()``; while draining, that is this worker's runtime (opened with
``worker.runtime.open_runtime`` on the test's settings), as ``worker_process_init`` would have made it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import anyio
import redis

import worker.runtime
from conveyor import names
from conveyor.queue.app import app as celery_app
from conveyor.queue.app import create_celery
from conveyor.settings import Settings
from worker import tasks
from worker.runtime import open_runtime

#: The queues that hold jobs' tasks (housekeeping tasks are beat's).
JOB_QUEUES = (names.QUEUE_UPLOADS, names.QUEUE_NOTIFICATIONS)


@dataclass(frozen=True)
class TaskMessage:
    """What a Celery worker reads from a message: the task's name and id, and its arguments."""

    queue: str
    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]


def decode(queue: str, raw: bytes) -> TaskMessage:
    """A message as kombu's Redis transport stores it (protocol 2, JSON body). Anything else fails the test: a worker
    would refuse it."""
    envelope = json.loads(raw)
    assert envelope["content-type"] == "application/json", envelope["content-type"]
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    headers = envelope["headers"]
    return TaskMessage(queue, headers["task"], headers["id"], args, kwargs)


class BurstWorker:
    """Runs queued tasks of the api's Redis in this process (see the module docstring). Close it after use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery = create_celery(settings)
        self.runtime = open_runtime(settings, self.celery)
        self.redis: redis.Redis = self.runtime.redis
        #: Every message run so far, in order.
        self.ran: list[TaskMessage] = []
        assert tasks.send_notification.name in celery_app.tasks  # the worker's tasks are registered

    def close(self) -> None:
        self.runtime.close()
        self.celery.close()

    def pending(self, queues: tuple[str, ...] = JOB_QUEUES) -> int:
        """How many messages wait in ``queues``."""
        return sum(int(self.redis.llen(queue)) for queue in queues)

    def pop(self, queues: tuple[str, ...] = JOB_QUEUES) -> TaskMessage | None:
        """The oldest message of the first of ``queues`` that has one (producers ``LPUSH``, workers take from the
        right end), or ``None``."""
        for queue in queues:
            raw = self.redis.rpop(queue)
            if raw is not None:
                assert isinstance(raw, bytes)
                return decode(queue, raw)
        return None

    def run(self, message: TaskMessage) -> None:
        """Run one task as a worker process would (exceptions propagate, as they would fail the task)."""
        task = celery_app.tasks[message.task]
        previous = worker.runtime._runtime
        worker.runtime._runtime = self.runtime
        try:
            task.run(*message.args, **message.kwargs)
        finally:
            worker.runtime._runtime = previous
        self.ran.append(message)

    def drain(self, queues: tuple[str, ...] = JOB_QUEUES, limit: int = 1000) -> list[str]:
        """Run every task waiting in ``queues``, and those they queue, until none is left; returns the job ids they
        ran (a job task's id; each job of a bundle, ``notifications.send_many``), in order. Fails after ``limit``
        tasks (a task that queues itself forever)."""
        ran: list[str] = []
        tasks = 0
        while (message := self.pop(queues)) is not None:
            assert tasks < limit, f"still draining after {limit} tasks"
            tasks += 1
            self.run(message)
            ran.extend(message.args[0] if message.task == names.TASK_SEND_NOTIFICATIONS else [message.task_id])
        return ran

    async def drain_async(self, queues: tuple[str, ...] = JOB_QUEUES) -> list[str]:
        """:meth:`drain` in a worker thread, so that an in-process api on the event loop serves meanwhile."""
        return await anyio.to_thread.run_sync(self.drain, queues)
