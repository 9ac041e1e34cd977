"""Celery accepts JSON only: a pickled message pushed straight into a queue is refused, never executed."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path

import httpx
import pytest
from kombu.connection import Connection

from tests.conftest import Stack
from tests.system.test_skeleton import receive_until

pytestmark = pytest.mark.system


class Exploit:
    """Unpickling this creates a file: proof that the payload was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_task_message_is_never_executed(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((Exploit(marker),), {}, {"callbacks": None, "errbacks": None, "chain": None}))
    with Connection(stack.redis_url) as connection:  # type: ignore[no-untyped-call]
        producer = connection.Producer()
        producer.publish(
            body,
            routing_key="notifications",
            exchange="notifications",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": "notifications.send", "id": task_id, "argsrepr": "", "kwargsrepr": ""},
            declare=[],
        )
    # The worker must refuse it and stay healthy: a normal job after it still runs.
    response = httpx.post(
        f"{stack.base_url}/notifications", json={"channel": "log", "message": "after pickle"}, headers=stack.headers
    )
    assert response.status_code == 202
    receive_until(stack.ws_url, f"/ws?job_id={response.json()['job_id']}", {"job.succeeded"}, 30, headers=stack.headers)
    refusal = "Refusing to deserialize untrusted content of type pickle"
    deadline = time.monotonic() + 30
    while refusal not in (log := stack.processes["notifications"].output()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.05)
    assert not marker.exists(), "the pickled payload was executed"
