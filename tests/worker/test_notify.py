"""Delivering notifications through ``run_job``: retries with their next attempt time, the attempt log, the
effect ledger that keeps a delivered notification from going out twice, and the websocket and log channels."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from conveyor import webhooks
from conveyor.schemas import Event, JobStatus
from conveyor.store.attempts import AttemptLog, Outcome
from tests.events_support import stream_events
from tests.receivers import HttpReceiver, Reply, http_receiver, smtp_server
from tests.worker.conftest import make_job
from worker.notify import deliver
from worker.runner import Progress, Retryable, run_job
from worker.runtime import Runtime

SECRET = webhooks.new_secret()


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as receiver:
        yield receiver


@pytest.fixture
def wrt(rt: Runtime) -> Runtime:
    """A runtime whose webhooks may go to 127.0.0.1, quickly."""
    rt.settings = rt.settings.model_copy(
        update={"webhook_secret": SecretStr(SECRET), "webhook_allow_private": True, "webhook_timeout": 0.5}
    )
    return rt


def events_of(rt: Runtime, job_id: str | None = None, topic: str | None = None) -> list[Event]:
    events = stream_events(rt.redis)
    return [e for e in events if (job_id is None or e.job_id == job_id) and (topic is None or e.topic == topic)]


def webhook_job(rt: Runtime, url: str) -> str:
    return make_job(rt, {"channel": "webhook", "url": url, "type": "test", "data": {"n": 1}}).job_id


def test_a_transient_failure_retries_with_its_next_attempt_time_then_delivers_once(
    wrt: Runtime, receiver: HttpReceiver
) -> None:
    url = receiver.script("/flaky", Reply(500, body=b"boom"), Reply(200))
    job_id = webhook_job(wrt, url)
    with pytest.raises(Retryable) as caught:
        run_job(wrt, job_id, deliver)
    assert caught.value.countdown is not None and 0 <= caught.value.countdown <= 2 * wrt.settings.retry_backoff_base
    retrying = events_of(wrt, job_id)[-1]
    assert retrying.type == "job.retrying" and retrying.attempt == 1
    assert retrying.error == "webhook answered 500 Internal Server Error"
    assert retrying.next_attempt_at == pytest.approx(retrying.ts + caught.value.countdown, abs=0.5)

    done = run_job(wrt, job_id, deliver)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert done.result == {"channel": "webhook", "webhook_id": f"msg_{job_id}", "status_code": 200, "url": url}
    requests = receiver.requests("/flaky")
    assert len(requests) == 2 and {r.headers["webhook-id"] for r in requests} == {f"msg_{job_id}"}

    log = AttemptLog(wrt.ledger.engine).of(job_id)
    assert [(a.attempt, a.outcome, a.status_code) for a in log] == [
        (1, Outcome.TRANSIENT, 500),
        (2, Outcome.DELIVERED, 200),
    ]
    assert log[0].reply == "500 Internal Server Error: boom" and log[0].duration_ms is not None

    # A redelivery after the effect was recorded (say the worker died before marking the job) sends nothing.
    assert deliver(wrt, done, Progress(wrt, done)) == done.result
    assert len(receiver.requests("/flaky")) == 2


def test_retry_after_sets_the_countdown_up_to_the_cap(wrt: Runtime, receiver: HttpReceiver) -> None:
    job_id = webhook_job(wrt, receiver.script("/later", Reply(429, {"Retry-After": "3"})))
    with pytest.raises(Retryable) as caught:
        run_job(wrt, job_id, deliver)
    assert caught.value.countdown == 3.0
    retrying = events_of(wrt, job_id)[-1]
    assert retrying.next_attempt_at == pytest.approx(time.time() + 3, abs=1)

    wrt.settings = wrt.settings.model_copy(update={"retry_backoff_cap": 2.0})
    job_id = webhook_job(wrt, receiver.script("/much-later", Reply(503, {"Retry-After": "86400"})))
    with pytest.raises(Retryable) as caught:
        run_job(wrt, job_id, deliver)
    assert caught.value.countdown == 2.0


def test_a_permanent_failure_fails_at_once(wrt: Runtime, receiver: HttpReceiver) -> None:
    job_id = webhook_job(wrt, receiver.script("/gone", Reply(404)))
    failed = run_job(wrt, job_id, deliver)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error == "webhook answered 404 Not Found"
    assert [e.type for e in events_of(wrt, job_id)] == ["job.started", "job.failed"]
    (attempt,) = AttemptLog(wrt.ledger.engine).of(job_id)
    assert attempt.outcome is Outcome.PERMANENT and attempt.status_code == 404
    assert wrt.ledger.effect(job_id, "notification.webhook") is None


def test_the_last_transient_failure_fails_the_job_with_its_error(wrt: Runtime, receiver: HttpReceiver) -> None:
    wrt.settings = wrt.settings.model_copy(update={"max_attempts": 2})
    job_id = webhook_job(wrt, receiver.script("/down", Reply(502)))
    with pytest.raises(Retryable):
        run_job(wrt, job_id, deliver)
    failed = run_job(wrt, job_id, deliver)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == "webhook answered 502 Bad Gateway (after 2 attempts)"


def test_email_4xx_is_retried_and_the_message_goes_out_once(rt: Runtime) -> None:
    with smtp_server() as (mailbox, port):
        rt.settings = rt.settings.model_copy(update={"smtp_port": port, "smtp_from": "alerts@conveyor.example"})
        to = mailbox.script("retry@example.com", "451 busy", "250 OK")
        job_id = make_job(rt, {"channel": "email", "to": [to], "subject": "s", "text": "t"}).job_id
        with pytest.raises(Retryable, match="451 busy"):
            run_job(rt, job_id, deliver)
        done = run_job(rt, job_id, deliver)
        assert done is not None and done.status is JobStatus.SUCCEEDED and done.result is not None
        assert done.result["accepted"] == [to] and done.result["reply"].startswith("250")
        assert deliver(rt, done, Progress(rt, done)) == done.result
        assert mailbox.attempts_for(to) == 2 and len(mailbox.messages_to(to)) == 1
        outcomes = [(a.outcome, a.status_code) for a in AttemptLog(rt.ledger.engine).of(job_id)]
        assert outcomes == [(Outcome.TRANSIENT, 451), (Outcome.DELIVERED, 250)]


def test_websocket_publishes_one_topic_message_naming_no_job(rt: Runtime) -> None:
    message: dict[str, Any] = {"text": "deploy finished", "build": 42}
    topic = f"deploys-{uuid.uuid4().hex}"
    job = make_job(rt, {"channel": "websocket", "topic": topic, "message": message})
    done = run_job(rt, job.job_id, deliver)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result is not None
    (event,) = events_of(rt, topic=topic)
    assert event.type == "topic.message" and event.message == message and event.job_id is None
    assert done.result == {"channel": "websocket", "topic": topic, "event_id": event.event_id}
    deliver(rt, done, Progress(rt, done))
    assert len(events_of(rt, topic=topic)) == 1


def test_log_channel_still_logs_once_and_records_the_attempt(rt: Runtime) -> None:
    job = make_job(rt, {"channel": "log", "message": "hello", "level": "warning"})
    done = run_job(rt, job.job_id, deliver)
    assert done is not None and done.result is not None and done.result["level"] == "warning"
    assert rt.ledger.notification(job.job_id)["message"] == "hello"  # type: ignore[index]
    (attempt,) = AttemptLog(rt.ledger.engine).of(job.job_id)
    assert attempt.outcome is Outcome.DELIVERED and attempt.channel == "log"
