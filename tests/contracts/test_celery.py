"""Celery's task message, as ``conveyor.queue.messages`` builds it without ``send_task`` (against a real Redis).

``conveyor/queue/messages.py`` builds a task's message itself, with Celery's ``app.amqp.as_task_v2`` (protocol 2
headers and body) wrapped in the JSON envelope kombu's Redis transport stores, and ``conveyor/queue/dispatch.py``
pushes it with ``LPUSH`` in the same round trip as the job's event. Workers must not be able to tell it from what
``app.send_task`` pushes.

When a test here fails, Celery or kombu changed the message or its envelope: make ``task_message`` build what
``send_task`` pushes now (the assertion's diff shows the field), or go back to ``send_task`` in
``conveyor/queue/dispatch.py``; then raise the upper bound of ``celery``/``kombu`` in pyproject.toml.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from conveyor.names import QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATION, TASK_SEND_NOTIFICATIONS
from conveyor.queue.app import create_celery
from conveyor.queue.messages import bundle_message, task_message
from conveyor.settings import Settings

VARYING = {"delivery_tag", "reply_to"}
#: A database no worker of the session consumes from.
DB = 5


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = create_celery(Settings(_env_file=None, redis_url=f"{redis_url.rsplit('/', 1)[0]}/{DB}"))  # type: ignore[call-arg]
    yield app
    app.close()


@pytest.fixture
def client(app: Celery) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(app.conf.broker_url)
    client.delete(QUEUE_NOTIFICATIONS)
    yield client
    client.delete(QUEUE_NOTIFICATIONS)
    client.close()


def test_the_message_matches_what_send_task_pushes(app: Celery, client: redis.Redis) -> None:
    job_id = secrets.token_hex(8)
    queue = QUEUE_NOTIFICATIONS
    app.send_task(TASK_SEND_NOTIFICATION, args=[job_id], queue=queue, task_id=job_id)
    theirs = json.loads(client.rpop(queue))  # type: ignore[arg-type]
    ours = json.loads(task_message(app, TASK_SEND_NOTIFICATION, job_id, queue))
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert {k: v for k, v in ours.items() if k not in ("body", "properties", "headers")} == {
        k: v for k, v in theirs.items() if k not in ("body", "properties", "headers")
    }
    assert ours["headers"] == theirs["headers"] | {"origin": ours["headers"]["origin"]}
    assert {k: v for k, v in ours["properties"].items() if k not in VARYING} == {
        k: v for k, v in theirs["properties"].items() if k not in VARYING
    }


def _received(app: Celery, queue: str) -> dict[str, Any]:
    """What a worker's kombu channel makes of the next message in ``queue``: headers, decoded body, properties."""
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(queue, no_ack=True)
        assert message is not None, f"nothing in {queue}"
        properties = {k: v for k, v in message.properties.items() if k not in VARYING}
        return {
            "headers": message.headers,
            "payload": message.decode(),
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "properties": properties,
            "routing_key": message.delivery_info.get("routing_key"),
        }


def test_a_worker_reads_our_message_as_it_reads_send_task_s(app: Celery, client: redis.Redis) -> None:
    """Both messages pass through the broker transport Conveyor's workers use and come out the same."""
    job_id = secrets.token_hex(8)
    queue = QUEUE_NOTIFICATIONS
    app.send_task(TASK_SEND_NOTIFICATION, args=[job_id], queue=queue, task_id=job_id)
    theirs = _received(app, queue)
    client.lpush(queue, task_message(app, TASK_SEND_NOTIFICATION, job_id, queue))
    ours = _received(app, queue)
    theirs["headers"]["origin"] = ours["headers"]["origin"]
    assert ours == theirs
    assert ours["headers"]["task"] == TASK_SEND_NOTIFICATION
    assert ours["headers"]["id"] == job_id
    assert ours["payload"][0] == [job_id]
    assert ours["routing_key"] == queue


def test_a_bundle_reads_as_send_task_s_message_of_the_bundle_task(app: Celery, client: redis.Redis) -> None:
    """A bundle of jobs (``bundle_message``) comes out of the worker's transport as ``send_task`` of
    ``notifications.send_many`` with the list of job ids as its one argument would (its task id aside)."""
    job_ids = [secrets.token_hex(8) for _ in range(3)]
    queue = QUEUE_NOTIFICATIONS
    app.send_task(TASK_SEND_NOTIFICATIONS, args=[job_ids], queue=queue, task_id="bundle")
    theirs = _received(app, queue)
    client.lpush(queue, bundle_message(app, job_ids, queue))
    ours = _received(app, queue)
    for received in (theirs, ours):
        for field in ("origin", "id", "root_id"):
            received["headers"].pop(field)
        received["properties"].pop("correlation_id")
    assert ours == theirs
    assert ours["headers"]["task"] == TASK_SEND_NOTIFICATIONS
    assert ours["payload"][0] == [job_ids]
