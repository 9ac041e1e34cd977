"""Conveyor's own task messages are what ``Celery.send_task`` pushes (against a real Redis)."""

from __future__ import annotations

import base64
import json
import secrets

import redis

from conveyor.names import QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATION
from conveyor.queue.app import create_celery
from conveyor.queue.messages import task_message
from conveyor.settings import Settings

VARYING = {"delivery_tag", "reply_to"}


def test_the_message_matches_what_send_task_pushes(redis_url: str) -> None:
    redis_url = redis_url.rsplit("/", 1)[0] + "/5"  # a database no worker of the session consumes from
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))  # type: ignore[call-arg]
    client = redis.Redis.from_url(redis_url)
    job_id = secrets.token_hex(8)
    queue = QUEUE_NOTIFICATIONS
    try:
        client.delete(queue)
        app.send_task(TASK_SEND_NOTIFICATION, args=[job_id], queue=queue, task_id=job_id)
        theirs = json.loads(client.rpop(queue))  # type: ignore[arg-type]
        ours = json.loads(task_message(app, TASK_SEND_NOTIFICATION, job_id, queue))
    finally:
        client.delete(queue)
        client.close()
        app.close()
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert {k: v for k, v in ours.items() if k not in ("body", "properties", "headers")} == {
        k: v for k, v in theirs.items() if k not in ("body", "properties", "headers")
    }
    assert ours["headers"] == theirs["headers"] | {"origin": ours["headers"]["origin"]}
    assert {k: v for k, v in ours["properties"].items() if k not in VARYING} == {
        k: v for k, v in theirs["properties"].items() if k not in VARYING
    }
