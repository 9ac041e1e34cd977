"""Celery task messages, built by Conveyor and pushed in the same Redis round trip as the job's event.

``Celery.send_task`` costs the api about a millisecond per job (producer pool, publish bookkeeping, a separate
round trip). A Conveyor task has one argument, the job id, and goes to a known queue, so its message is built here
with Celery's own ``as_task_v2`` (protocol 2 headers and body) and wrapped the way kombu's Redis transport stores
messages (a JSON envelope, the body base64-encoded, pushed with ``LPUSH`` onto the queue's list). Workers consume it
exactly as one sent by ``send_task``; ``tests/contracts/test_celery.py`` compares the two.

**Bundles.** A job whose work is itself a job-store write (a ``log`` notification: :func:`bundled`) costs a worker
less to run than Celery's handling of its message (receive, request, pool hand-off, ack). The jobs of that kind that
one submission group records are sent together, up to :data:`BUNDLE_MAX` per message (``CONVEYOR_BUNDLE_MAX``), as one
``notifications.send_many`` task whose one argument is the list of their ids (:func:`messages_for`); the worker
runs them in one transaction. A lone such job, and every other job, gets its own message. The bundle is a Celery
task like any other (acknowledged after its transaction commits, redelivered if its worker dies), and each job in
it is claimed, run and recorded exactly as if it had come alone.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from celery import Celery
from kombu.serialization import dumps

from conveyor.names import KIND_NOTIFICATION, QUEUE_NOTIFICATIONS, TASK_FOR_KIND, TASK_SEND_NOTIFICATIONS
from conveyor.schemas import Job

_PLAIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Stands for the job id while a message is built once per task and queue.
_JOB = "00000000-0000-7000-8000-000000000000"
_TAG = "11111111-1111-4111-8111-111111111111"
_BODY = "22222222"
#: Most jobs one bundle message carries, by default (``CONVEYOR_BUNDLE_MAX``).
BUNDLE_MAX = 50


def _envelope(built: Any, queue: str) -> tuple[bytes, dict[str, Any]]:
    """Celery's message ``built`` (``as_task_v2``) as kombu's Redis transport stores it on ``queue``: its body,
    JSON-serialized, and the envelope to put it in (base64, as ``body``; delivery tag :data:`_TAG`)."""
    content_type, encoding, payload = dumps(built.body, serializer="json")  # type: ignore[no-untyped-call]
    properties: dict[str, Any] = {
        **built.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": _TAG,
    }
    envelope = {
        "body": None,
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": built.headers,
        "properties": properties,
    }
    return (payload.encode() if isinstance(payload, str) else bytes(payload)), envelope


class _Template:
    """The message of one task on one queue with the job id (and the delivery tag, and the body) left open: built by
    Celery once, filled in per job (a job id is the task's only argument and its id)."""

    def __init__(self, app: Celery, task_name: str, queue: str) -> None:
        built = app.amqp.as_task_v2(_JOB, task_name, args=[_JOB], kwargs={}, ignore_result=None)
        self.body, envelope = _envelope(built, queue)
        envelope["body"] = _BODY
        self.envelope = orjson.dumps(envelope)

    def render(self, job_id: str) -> bytes:
        ident = job_id.encode()
        body = base64.b64encode(self.body.replace(_JOB.encode(), ident))
        message = self.envelope.replace(_JOB.encode(), ident).replace(_TAG.encode(), str(uuid.uuid4()).encode())
        return message.replace(b'"' + _BODY.encode() + b'"', b'"' + body + b'"', 1)


def task_message(app: Celery, task_name: str, job_id: str, queue: str) -> bytes:
    """The message ``app.send_task(task_name, args=[job_id], queue=queue, task_id=job_id)`` would push (with its
    own delivery tag). Celery builds it once per task and queue in each process; each job fills in its id."""
    if not _PLAIN.match(job_id):
        raise ValueError("a job id is letters, digits and dashes")
    templates: dict[tuple[str, str], _Template] = app.__dict__.setdefault("_conveyor_message_templates", {})
    template = templates.get((task_name, queue))
    if template is None:
        template = templates[(task_name, queue)] = _Template(app, task_name, queue)
    return template.render(job_id)


def bundled(job: Job) -> bool:
    """Whether ``job`` may travel in a bundle: a notification whose work is a job-store write (``log``)."""
    return job.kind == KIND_NOTIFICATION and job.request.get("channel") == "log"


def bundle_message(app: Celery, job_ids: Sequence[str], queue: str = QUEUE_NOTIFICATIONS) -> bytes:
    """The message ``app.send_task(TASK_SEND_NOTIFICATIONS, args=[job_ids], queue=queue)`` would push (its task id
    a new UUID, its own delivery tag)."""
    if not all(_PLAIN.match(job_id) for job_id in job_ids):
        raise ValueError("a job id is letters, digits and dashes")
    ids = list(job_ids)
    built = app.amqp.as_task_v2(str(uuid.uuid4()), TASK_SEND_NOTIFICATIONS, args=[ids], kwargs={}, ignore_result=None)
    body, envelope = _envelope(built, queue)
    envelope["body"] = base64.b64encode(body).decode()
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    return orjson.dumps(envelope)


def messages_for(app: Celery, jobs: Sequence[Job], bundle_max: int = BUNDLE_MAX) -> list[tuple[str, bytes]]:
    """The ``(queue, message)`` pairs that send the tasks of ``jobs``: the :func:`bundled` ones, when there are two
    or more, in bundles of up to ``bundle_max`` (a lone leftover alone); every other job one message, in order."""

    def alone(job: Job) -> tuple[str, bytes]:
        task_name, queue = TASK_FOR_KIND[job.kind]
        return queue, task_message(app, task_name, job.job_id, queue)

    together = [job for job in jobs if bundled(job)]
    if len(together) < 2 or bundle_max < 2:
        together = []
    messages = [alone(job) for job in jobs if not (together and bundled(job))]
    for start in range(0, len(together), bundle_max):
        chunk = together[start : start + bundle_max]
        ids = [job.job_id for job in chunk]
        messages.append(alone(chunk[0]) if len(chunk) == 1 else (QUEUE_NOTIFICATIONS, bundle_message(app, ids)))
    return messages
