"""Which messages a group of new jobs becomes: ``log`` notifications bundled, every other job alone."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
import pytest
from celery import Celery

from conveyor.names import QUEUE_NOTIFICATIONS, QUEUE_UPLOADS, TASK_SEND_NOTIFICATION, TASK_SEND_NOTIFICATIONS
from conveyor.queue.app import create_celery
from conveyor.queue.messages import BUNDLE_MAX, messages_for
from conveyor.schemas import Job, JobStatus
from conveyor.settings import Settings


@pytest.fixture(scope="module")
def app() -> Celery:
    return create_celery(Settings(_env_file=None))  # type: ignore[call-arg]


def job(kind: str = "notification", channel: str = "log") -> Job:
    return Job.model_construct(
        job_id=str(uuid.uuid4()), kind=kind, status=JobStatus.QUEUED, request={"channel": channel}
    )


def decoded(pairs: list[tuple[str, bytes]]) -> list[tuple[str, str, Any]]:
    """Each message's queue, task name and first argument."""
    out = []
    for queue, raw in pairs:
        envelope = orjson.loads(raw)
        body = orjson.loads(base64.b64decode(envelope["body"]))
        out.append((queue, envelope["headers"]["task"], body[0][0]))
    return out


def test_log_notifications_of_a_group_travel_together_and_the_rest_alone(app: Celery) -> None:
    logs = [job() for _ in range(3)]
    hook, upload = job(channel="webhook"), job(kind="upload", channel="")
    sent = decoded(messages_for(app, [logs[0], hook, logs[1], upload, logs[2]]))
    assert sent == [
        (QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATION, hook.job_id),
        (QUEUE_UPLOADS, "uploads.ingest", upload.job_id),
        (QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATIONS, [j.job_id for j in logs]),
    ]


def test_a_lone_log_notification_and_a_lone_leftover_go_as_single_tasks(app: Celery) -> None:
    alone = job()
    assert decoded(messages_for(app, [alone])) == [(QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATION, alone.job_id)]
    many = [job() for _ in range(2 * BUNDLE_MAX + 1)]
    sent = decoded(messages_for(app, many))
    assert [task for _, task, _ in sent] == [TASK_SEND_NOTIFICATIONS, TASK_SEND_NOTIFICATIONS, TASK_SEND_NOTIFICATION]
    assert sent[0][2] + sent[1][2] + [sent[2][2]] == [j.job_id for j in many]


def test_a_bundle_size_of_one_sends_every_job_alone(app: Celery) -> None:
    many = [job() for _ in range(4)]
    sent = decoded(messages_for(app, many, bundle_max=1))
    assert sent == [(QUEUE_NOTIFICATIONS, TASK_SEND_NOTIFICATION, j.job_id) for j in many]
