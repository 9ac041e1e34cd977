"""The tutorial stack: the FastAPI + Celery pattern that tutorials teach, written the way they write it.

One module holds both halves, as the tutorials' ``main.py`` and ``worker.py`` do: a Celery app on Redis (broker
and result backend, Celery's defaults otherwise), a task that logs the notification, and a FastAPI app whose
``POST /tasks`` calls ``.delay()`` and returns the task id, and whose ``GET /tasks/{task_id}`` reads
``AsyncResult`` for the client to poll. Endpoints are plain ``def`` (FastAPI runs them in its thread pool), as in
the tutorials. The benchmarks run it as tutorials do, with two changes that only make it faster (no access log,
log level WARNING):

- ``uvicorn bench.tutorial_stack:app`` (one process);
- ``celery -A bench.tutorial_stack.celery worker -E`` (prefork, task events on so that Flower can show tasks).

What it lacks is what Conveyor adds: a durable job record, authentication, rate limits, events pushed to clients,
effects at most once, crash recovery. The ratios measure what those cost, and what pushing instead of polling
gains.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from fastapi import FastAPI
from pydantic import BaseModel

TASK = "tutorial.send_notification"
log = logging.getLogger("tutorial")

celery = Celery(
    __name__,
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"),
    backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"),
    set_as_current=False,
)
celery.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@celery.task(name=TASK)  # type: ignore[untyped-decorator]
def send_notification(channel: str, message: str) -> dict[str, str]:
    """Log the notification (the tutorial's stand-in for real work) and return a summary."""
    log.info("notification channel=%s message=%s", channel, message)
    return {"channel": channel, "status": "sent"}


class Notification(BaseModel):
    channel: str
    message: str


app = FastAPI()


@app.post("/tasks", status_code=202)
def create_task(notification: Notification) -> dict[str, str]:
    task = send_notification.delay(notification.channel, notification.message)
    return {"task_id": task.id}


@app.get("/tasks/{task_id}")
def get_status(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery)
    return {"task_id": task_id, "task_status": result.status, "task_result": result.result if result.ready() else None}
