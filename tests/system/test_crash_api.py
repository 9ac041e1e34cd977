"""The api SIGKILLed after it committed a submission's row and before its Redis pipeline (the ``job.queued`` event and
the task message) was answered: the row is its own outbox, so beat's dispatcher sends the job, and it runs once.

The moment is made, not hoped for: redis-server is stopped (SIGSTOP), so the api's group submitter commits the row
and then waits on Redis; the test sees the row in the job store (SQLite, read directly), SIGKILLs the api, and lets
Redis go on (SIGCONT). Whatever the api had written to its Redis socket may still be executed then — a second
delivery, which the worker's claim drops.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conveyor import webhooks
from conveyor.names import QUEUE_NOTIFICATIONS
from conveyor.store import db
from tests.receivers import http_receiver
from tests.system.faults import FaultStack

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_an_api_killed_between_commit_and_redis_runs_the_job_once(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        hook = receiver.script("/once")
        stack = FaultStack(
            tmp_path,
            env={
                "CONVEYOR_WEBHOOK_SECRET": webhooks.new_secret(),
                "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
                "CONVEYOR_DISPATCH_INTERVAL_SECONDS": "1",
                "CONVEYOR_DISPATCH_GRACE_SECONDS": "1",
                # A lease of 10,000 tokens: a request made right after the warm-up needs no Redis for its rate limit
                # (without it the limiter waits for its Redis timeout and lets the request through: slower, the same).
                "CONVEYOR_RATE_LIMIT_BURST": "100000",
            },
        )
        redis_server = stack.start_redis()
        stack.start("api", ["api"])
        outcome: list[object] = []
        try:
            stack.wait_ready()
            headers = stack.headers
            with httpx.Client(base_url=stack.base_url, headers=headers, timeout=120) as client:
                assert client.get("/jobs").status_code == 200
                os.kill(redis_server.pid, signal.SIGSTOP)

                def submit() -> None:
                    try:
                        outcome.append(client.post("/notifications", json={"channel": "webhook", "url": hook}))
                    except httpx.HTTPError as exc:
                        outcome.append(exc)

                poster = threading.Thread(target=submit)
                poster.start()
                stack.wait_for(lambda: len(stack.rows()) == 1, 60, "the submission's row committed")
                (row,) = stack.rows()
                assert row["status"] == "queued" and row["dispatched_at"] is None, row
                stack.kill("api")
                os.kill(redis_server.pid, signal.SIGCONT)
                poster.join(30)
            assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError), outcome  # no answer came
            job_id = row["id"]

            stack.worker("worker", QUEUE_NOTIFICATIONS)
            stack.worker("housekeeping", "housekeeping", concurrency=1)
            stack.start("beat", ["beat"])
            stack.wait_finished([job_id], 90)
            (done,) = stack.rows([job_id])
            with stack.engine.connect() as connection:
                effects = Counter(connection.execute(sa.select(db.effects.c.job_id, db.effects.c.effect)).all())
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
            stack.stop_all()
        deliveries = receiver.requests("/once")
    assert done["dispatched_at"] is not None, "the dispatcher did not note the job sent"
    assert (done["attempts"], done["crashes"]) == (1, 0), done
    assert effects == Counter({(job_id, "notification.webhook"): 1}), effects
    assert [request.headers["webhook-id"] for request in deliveries] == [f"msg_{job_id}"]
    assert "dispatched late" in stack.processes["housekeeping"].output()
