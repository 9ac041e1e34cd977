"""Notifications for real, end to end: two api processes and a notifications worker on their own Redis, a real
HTTP receiver and a real SMTP server (aiosmtpd). Retries are made fast through the backoff settings."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from conveyor import webhooks
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port
from tests.conftest import Stack
from tests.events_support import stream_entries
from tests.receivers import HttpReceiver, Mailbox, Reply, http_receiver, smtp_server
from tests.support import (
    Process,
    base_env,
    bearer,
    conveyor,
    create_key,
    redis_server,
    wait_for_workers,
    wait_until_healthy,
)

pytestmark = pytest.mark.system

SECRET = webhooks.new_secret()
FINAL = {"job.succeeded", "job.failed", "job.cancelled"}
JSON = {"content-type": "application/json"}


@dataclass
class NotifyStack:
    apis: list[str]
    redis_url: str
    receiver: HttpReceiver
    mailbox: Mailbox
    processes: dict[str, Process]
    #: The header of an API key (owner ``tests``) for every request.
    headers: dict[str, str]

    @property
    def api(self) -> str:
        return self.apis[0]

    def ws(self, index: int, query: str) -> ClientConnection:
        url = self.apis[index].replace("http://", "ws://") + "/ws?" + query
        return connect(url, open_timeout=10, additional_headers=self.headers)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyStack]:
    """Two ``conveyor api`` processes and one notifications worker, with fast retries and short timeouts."""
    root = tmp_path_factory.mktemp("notify")
    with redis_server(root / "redis") as redis_url, http_receiver() as receiver, smtp_server() as (mailbox, smtp_port):
        env = base_env(
            root / "var",
            CONVEYOR_REDIS_URL=redis_url,
            CONVEYOR_WEBHOOK_SECRET=SECRET,
            CONVEYOR_WEBHOOK_ALLOW_PRIVATE="true",
            CONVEYOR_WEBHOOK_TIMEOUT="1",
            CONVEYOR_SMTP_HOST="127.0.0.1",
            CONVEYOR_SMTP_PORT=str(smtp_port),
            CONVEYOR_SMTP_FROM="alerts@conveyor.example",
            CONVEYOR_RETRY_BACKOFF_BASE="0.05",
            CONVEYOR_RETRY_BACKOFF_CAP="2",
            CONVEYOR_MAX_ATTEMPTS="3",
        )
        ports = [free_port(), free_port()]
        logs = root / "logs"
        headers = bearer(create_key(env, "tests"))
        processes = {
            f"api{i}": conveyor(f"api{i}", ["api", "--port", str(port)], env, logs) for i, port in enumerate(ports)
        }
        processes["worker"] = conveyor(
            "worker", ["worker", "--queues", "notifications", "--concurrency", "2"], env, logs
        )
        apis = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for api in apis:
                wait_until_healthy(api, 60, list(processes.values()))
            wait_for_workers(redis_url, ["notifications"], 60)
            yield NotifyStack(apis, redis_url, receiver, mailbox, processes, headers)
        finally:
            for process in processes.values():
                process.stop()


def post(stack: NotifyStack, body: dict[str, Any], api: int = 0, **headers: str) -> httpx.Response:
    return httpx.post(f"{stack.apis[api]}/notifications", json=body, headers={**stack.headers, **headers}, timeout=10)


def submit(stack: NotifyStack, body: dict[str, Any]) -> str:
    response = post(stack, body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job_events(stack: NotifyStack, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The job's events from its ``job.queued`` to its final one."""
    events: list[dict[str, Any]] = []
    with stack.ws(0, f"job_id={job_id}") as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            events.append(event)
            if event["type"] in FINAL:
                return events
    raise AssertionError(f"job {job_id} did not finish within {timeout}s: {events}\n{stack.logs()}")


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def attempts(stack: NotifyStack, job_id: str) -> list[tuple[str, int | None]]:
    body = httpx.get(f"{stack.api}/jobs/{job_id}/attempts", headers=stack.headers, timeout=10).json()
    return [(a["outcome"], a["status_code"]) for a in body["attempts"]]


def webhook(path: str, **extra: Any) -> dict[str, Any]:
    return {"channel": "webhook", "url": path, "type": "order.paid", "data": {"order": 7}} | extra


def test_webhook_500_500_200_is_one_delivery_after_two_retries(notify: NotifyStack) -> None:
    url = notify.receiver.script("/flaky", Reply(500), Reply(500), Reply(200))
    job_id = submit(notify, webhook(url))
    events = job_events(notify, job_id)
    assert types(events) == [
        "job.queued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.retrying",
        "job.started",
        "job.succeeded",
    ], events
    retrying = [e for e in events if e["type"] == "job.retrying"]
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert all(e["error"] == "webhook answered 500 Internal Server Error" for e in retrying)
    assert all(e["ts"] <= e["next_attempt_at"] <= e["ts"] + 2.5 for e in retrying)

    requests = notify.receiver.requests("/flaky")
    assert len(requests) == 3
    for request in requests:
        webhooks.verify(SECRET, request.headers, request.body)
    assert {r.headers["webhook-id"] for r in requests} == {f"msg_{job_id}"}
    assert json.loads(requests[-1].body) == json.loads(requests[0].body)
    assert json.loads(requests[0].body)["data"] == {"order": 7}
    assert attempts(notify, job_id) == [("transient", 500), ("transient", 500), ("delivered", 200)]
    job = httpx.get(f"{notify.api}/jobs/{job_id}", headers=notify.headers).json()
    assert job["status"] == "succeeded" and job["attempts"] == 3 and job["result"]["status_code"] == 200


def test_a_404_fails_at_once_shows_in_the_dead_letter_view_and_can_be_retried(notify: NotifyStack) -> None:
    url = notify.receiver.script("/gone", Reply(404), Reply(200))
    job_id = submit(notify, webhook(url))
    events = job_events(notify, job_id)
    assert types(events) == ["job.queued", "job.started", "job.failed"], events
    assert events[-1]["error"] == "webhook answered 404 Not Found"
    assert len(notify.receiver.requests("/gone")) == 1
    assert attempts(notify, job_id) == [("permanent", 404)]
    dead = httpx.get(
        f"{notify.api}/jobs", params={"status": "failed", "kind": "notification"}, headers=notify.headers
    ).json()
    assert job_id in [job["job_id"] for job in dead["jobs"]]

    retried = httpx.post(f"{notify.apis[1]}/jobs/{job_id}/retry", headers=notify.headers)
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued" and retried.json()["error"] is None
    assert types(job_events(notify, job_id)) == ["job.queued", "job.started", "job.succeeded"]
    assert len(notify.receiver.requests("/gone")) == 2
    assert attempts(notify, job_id) == [("permanent", 404), ("delivered", 200)]

    again = httpx.post(f"{notify.api}/jobs/{job_id}/retry", headers=notify.headers)
    assert again.status_code == 409 and "succeeded" in again.json()["detail"]
    unknown = httpx.post(f"{notify.api}/jobs/01a207a2-fb69-7023-9247-baa030751cb3/retry", headers=notify.headers)
    assert unknown.status_code == 404 and "no job" in unknown.json()["detail"]


def test_a_receiver_that_never_answers_times_out_and_is_retried(notify: NotifyStack) -> None:
    url = notify.receiver.script("/slow", Reply(hang=10), Reply(200))
    job_id = submit(notify, webhook(url))
    events = job_events(notify, job_id)
    assert types(events)[-3:] == ["job.retrying", "job.started", "job.succeeded"], events
    assert "timed out" in events[2]["error"]
    assert len(notify.receiver.requests("/slow")) == 2
    assert attempts(notify, job_id)[0] == ("transient", None)


def test_retry_after_is_honoured(notify: NotifyStack) -> None:
    url = notify.receiver.script("/busy", Reply(503, {"Retry-After": "1"}), Reply(200))
    job_id = submit(notify, webhook(url))
    events = job_events(notify, job_id)
    retrying = next(e for e in events if e["type"] == "job.retrying")
    assert retrying["next_attempt_at"] - retrying["ts"] == pytest.approx(1, abs=0.2)
    first, second = notify.receiver.requests("/busy")
    assert second.at - first.at >= 0.9


def test_a_secret_in_the_request_signs_it_and_is_never_shown(notify: NotifyStack) -> None:
    own = webhooks.new_secret()
    job_id = submit(notify, webhook(notify.receiver.script("/own"), secret=own))
    assert job_events(notify, job_id)[-1]["type"] == "job.succeeded"
    (request,) = notify.receiver.requests("/own")
    webhooks.verify(own, request.headers, request.body)
    job = httpx.get(f"{notify.api}/jobs/{job_id}", headers=notify.headers).json()
    assert job["request"]["secret"] == "**********"
    listed = httpx.get(f"{notify.api}/jobs", params={"kind": "notification"}, headers=notify.headers).text
    assert own not in listed


def test_the_same_idempotency_key_twice_is_one_job_and_one_delivery(notify: NotifyStack) -> None:
    url = notify.receiver.script("/once")
    body, key = webhook(url), f"order-7-{uuid.uuid4()}"
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda api: post(notify, body, api, **{"Idempotency-Key": key}), (0, 1))
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["job_id"] == second.json()["job_id"]
    assert {first.headers.get("idempotent-replayed"), second.headers.get("idempotent-replayed")} == {None, "true"}
    job_id = first.json()["job_id"]
    assert job_events(notify, job_id)[-1]["type"] == "job.succeeded"
    again = post(notify, body, 0, **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["job_id"] == job_id
    other = post(notify, webhook(url, data={"order": 8}), 0, **{"Idempotency-Key": key})
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert len(notify.receiver.requests("/once")) == 1  # delivered before the job succeeded; no other job exists


def email(to: list[str], **extra: Any) -> dict[str, Any]:
    return {"channel": "email", "to": to, "subject": "Order 7 shipped", "text": "On its way."} | extra


def test_email_arrives_with_the_right_headers_and_body(notify: NotifyStack) -> None:
    to = [f"a-{uuid.uuid4().hex[:6]}@example.com", f"b-{uuid.uuid4().hex[:6]}@example.com"]
    job_id = submit(notify, email(to, html="<p>On its way.</p>"))
    assert job_events(notify, job_id)[-1]["type"] == "job.succeeded"
    ((envelope, message),) = notify.mailbox.messages_to(to[0])
    assert envelope.rcpt_tos == to and envelope.mail_from == "alerts@conveyor.example"
    assert message["Subject"] == "Order 7 shipped" and message["To"] == ", ".join(to)
    assert message["Message-ID"] == f"<{job_id}@conveyor.example>" and message["X-Conveyor-Job-Id"] == job_id
    assert message.get_body(("plain",)).get_content().strip() == "On its way."  # type: ignore[union-attr]
    assert message.get_body(("html",)).get_content().strip() == "<p>On its way.</p>"  # type: ignore[union-attr]
    assert attempts(notify, job_id) == [("delivered", 250)]


def test_email_4xx_is_retried_and_5xx_fails(notify: NotifyStack) -> None:
    later = notify.mailbox.script(f"later-{uuid.uuid4().hex[:6]}@example.com", "451 4.3.0 try later", "250 OK")
    job_id = submit(notify, email([later]))
    events = job_events(notify, job_id)
    assert types(events)[1:] == ["job.started", "job.retrying", "job.started", "job.succeeded"], events
    assert "451" in events[2]["error"]
    assert len(notify.mailbox.messages_to(later)) == 1
    assert attempts(notify, job_id) == [("transient", 451), ("delivered", 250)]

    never = notify.mailbox.script(f"never-{uuid.uuid4().hex[:6]}@example.com", "550 5.1.1 no such user")
    job_id = submit(notify, email([never]))
    events = job_events(notify, job_id)
    assert types(events) == ["job.queued", "job.started", "job.failed"], events
    assert "550" in events[-1]["error"] and notify.mailbox.messages_to(never) == []


def drain(ws: ClientConnection, until: Any, timeout: float = 20) -> list[dict[str, Any]]:
    """Messages until one satisfies ``until``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        if until(got[-1]):
            return got
    raise AssertionError(f"condition not met within {timeout}s: {got}")


def test_websocket_reaches_topic_subscribers_on_both_api_processes_and_no_one_else(notify: NotifyStack) -> None:
    topic, other = f"deploys-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(notify.redis_url)
    newest = stream_entries(client.xrevrange(EVENTS_STREAM, count=1))
    client.close()
    since = f"&last_event_id={newest[0][0].decode()}" if newest else ""
    # Each connection resumes from the stream's newest id, so none can miss what is published after.
    with (
        notify.ws(0, f"topic={topic}{since}") as a,
        notify.ws(1, f"topic={topic}{since}") as b,
        notify.ws(0, f"topic={other}{since}") as c,
        notify.ws(1, since.lstrip("&")) as d,
    ):
        message = {"text": "deploy 42 finished", "ok": True}
        job_id = submit(notify, {"channel": "websocket", "topic": topic, "message": message})
        for ws in (a, b):
            event = json.loads(ws.recv(timeout=20))
            assert event["type"] == "topic.message" and event["topic"] == topic and event["message"] == message
        sentinel = submit(notify, {"channel": "websocket", "topic": other, "message": "sentinel"})
        (event,) = drain(c, lambda e: True)
        assert event["topic"] == other and event["message"] == "sentinel", "a message for another topic arrived"
        seen = drain(d, lambda e: e.get("job_id") == sentinel and e["type"] == "job.succeeded")
        assert "topic.message" not in types(seen), "a client without ?topic= got a topic message"
        assert {e["job_id"] for e in seen} >= {job_id, sentinel}
        for ws in (a, b):
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.3)


@pytest.mark.parametrize(
    "body",
    [
        {"channel": "webhook", "url": "not a url"},
        {"channel": "webhook", "url": "ftp://example.com/x"},
        {"channel": "webhook", "url": "https://example.com/", "secret": "plain-text"},
        {"channel": "email", "to": [], "subject": "s", "text": "t"},
        {"channel": "email", "to": ["no-at-sign"], "subject": "s", "text": "t"},
        {"channel": "email", "to": ["a@example.com"], "subject": "two\r\nlines", "text": "t"},
        {"channel": "websocket", "topic": "has space", "message": "x"},
        {"channel": "websocket", "topic": "t", "message": None},
        {"channel": "websocket", "topic": "t"},
    ],
)
def test_bad_channel_bodies_are_422(stack: Stack, body: dict[str, Any]) -> None:
    response = httpx.post(f"{stack.base_url}/notifications", json=body, headers=stack.headers, timeout=10)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_by_default_webhooks_need_a_secret_and_a_public_address(stack: Stack) -> None:
    """The session stack runs with default settings: no server secret, private addresses refused."""
    url = f"{stack.base_url}/notifications"
    no_secret = httpx.post(
        url, json={"channel": "webhook", "url": "https://example.com/hook"}, headers=stack.headers, timeout=10
    )
    assert no_secret.status_code == 422 and "secret" in no_secret.json()["detail"]
    for host in ("127.0.0.1", "10.0.0.8", "169.254.169.254", "localhost", "[::1]"):
        body = {"channel": "webhook", "url": f"http://{host}/hook", "secret": SECRET}
        refused = httpx.post(url, json=body, headers=stack.headers, timeout=10)
        assert refused.status_code == 422 and "CONVEYOR_WEBHOOK_ALLOW_PRIVATE" in refused.json()["detail"], host


def test_the_log_files_name_no_secret(notify: NotifyStack) -> None:
    logs = notify.logs()
    assert SECRET not in logs and SECRET.removeprefix("whsec_") not in logs


def test_http_get_records_the_parsed_json_in_the_result(notify: NotifyStack) -> None:
    url = notify.receiver.script("/http-menu", Reply(200, JSON, b'{"dishes":["soup","pizza"]}'))
    job_id = submit(notify, {"channel": "http", "method": "GET", "url": url, "headers": {"X-Token": "t0k"}})
    assert types(job_events(notify, job_id)) == ["job.queued", "job.started", "job.succeeded"]
    job = httpx.get(f"{notify.api}/jobs/{job_id}", headers=notify.headers).json()
    assert job["result"]["status_code"] == 200 and job["result"]["body"] == {"dishes": ["soup", "pizza"]}
    assert job["request"]["headers"] == {"X-Token": "**********"}
    (request,) = notify.receiver.requests("/http-menu")
    assert request.headers["x-token"] == "t0k" and request.body == b""


def test_http_503_then_200_retries_once_and_succeeds(notify: NotifyStack) -> None:
    url = notify.receiver.script("/http-busy", Reply(503), Reply(200, JSON, b"{}"))
    job_id = submit(notify, {"channel": "http", "method": "POST", "url": url, "json": {"refund": 7}})
    assert types(job_events(notify, job_id)) == [
        "job.queued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.succeeded",
    ]
    assert attempts(notify, job_id) == [("transient", 503), ("delivered", 200)]
    assert [json.loads(r.body) for r in notify.receiver.requests("/http-busy")] == [{"refund": 7}, {"refund": 7}]


def test_http_404_fails_at_once(notify: NotifyStack) -> None:
    url = notify.receiver.script("/http-nothing", Reply(404), Reply(200))
    job_id = submit(notify, {"channel": "http", "url": url})
    events = job_events(notify, job_id)
    assert types(events) == ["job.queued", "job.started", "job.failed"], events
    assert "404" in events[-1]["error"] and len(notify.receiver.requests("/http-nothing")) == 1


def test_http_to_a_private_address_is_refused_at_submission_by_default(stack: Stack) -> None:
    body = {"channel": "http", "method": "GET", "url": "http://127.0.0.1:9/status"}
    with stack.client() as client:
        refused = client.post("/notifications", json=body)
    assert refused.status_code == 422 and "CONVEYOR_WEBHOOK_ALLOW_PRIVATE" in refused.json()["detail"]
