"""Celery task messages, built by Conveyor and pushed in the same Redis round trip as the job's event.

``Celery.send_task`` costs the api about a millisecond per job (producer pool, publish bookkeeping, a separate
round trip). A Conveyor task has one argument, the job id, and goes to a known queue, so its message is built here
with Celery's own ``as_task_v2`` (protocol 2 headers and body) and wrapped the way kombu's Redis transport stores
messages (a JSON envelope, the body base64-encoded, pushed with ``LPUSH`` onto the queue's list). Workers consume it
exactly as one sent by ``send_task``; ``tests/contracts/test_celery.py`` compares the two.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
from celery import Celery
from kombu.serialization import dumps


def task_message(app: Celery, task_name: str, job_id: str, queue: str) -> bytes:
    """The message ``app.send_task(task_name, args=[job_id], queue=queue, task_id=job_id)`` would push."""
    built = app.amqp.as_task_v2(job_id, task_name, args=[job_id], kwargs={}, ignore_result=None)
    content_type, encoding, payload = dumps(built.body, serializer="json")  # type: ignore[no-untyped-call]
    properties: dict[str, Any] = {
        **built.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    data = payload.encode() if isinstance(payload, str) else payload
    envelope = {
        "body": base64.b64encode(data).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": built.headers,
        "properties": properties,
    }
    return orjson.dumps(envelope)
