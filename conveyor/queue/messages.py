"""Celery task messages, built by Conveyor and pushed in the same Redis round trip as the job's event.

``Celery.send_task`` costs the api about a millisecond per job (producer pool, publish bookkeeping, a separate
round trip). A Conveyor task has one argument, the job id, and goes to a known queue, so its message is built here
with Celery's own ``as_task_v2`` (protocol 2 headers and body) and wrapped the way kombu's Redis transport stores
messages (a JSON envelope, the body base64-encoded, pushed with ``LPUSH`` onto the queue's list). Workers consume it
exactly as one sent by ``send_task``; ``tests/contracts/test_celery.py`` compares the two.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import orjson
from celery import Celery
from kombu.serialization import dumps

_PLAIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Stands for the job id while a message is built once per task and queue.
_JOB = "00000000-0000-7000-8000-000000000000"
_TAG = "11111111-1111-4111-8111-111111111111"
_BODY = "22222222"


class _Template:
    """The message of one task on one queue with the job id (and the delivery tag, and the body) left open: built by
    Celery once, filled in per job (a job id is the task's only argument and its id)."""

    def __init__(self, app: Celery, task_name: str, queue: str) -> None:
        built = app.amqp.as_task_v2(_JOB, task_name, args=[_JOB], kwargs={}, ignore_result=None)
        content_type, encoding, payload = dumps(built.body, serializer="json")  # type: ignore[no-untyped-call]
        self.body = payload.encode() if isinstance(payload, str) else bytes(payload)
        properties: dict[str, Any] = {
            **built.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": _TAG,
        }
        envelope = {
            "body": _BODY,
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": built.headers,
            "properties": properties,
        }
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
