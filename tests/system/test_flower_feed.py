"""Flower fed from the job event stream: a real ``conveyor flower`` over its HTTP API (with basic auth), next to a
real api, real workers, a real webhook receiver and a real redis-server; and no worker publishing any Celery task
event (watched on the ``celeryev`` pub/sub channels kombu uses for Celery's event exchange)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conveyor import webhooks
from conveyor.events import EventLog
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port, wait_for_port
from conveyor.queue.app import create_celery
from conveyor.schemas import Event, EventType, JobStatus
from conveyor.settings import Settings
from tests.events_support import wait_finished
from tests.receivers import HttpReceiver, Reply, http_receiver
from tests.support import Process, base_env, bearer, conveyor, create_key, redis_server, wait_until_healthy
from tests.system.faults import FaultStack

pytestmark = pytest.mark.system

PASSWORD = "flower-feed-" + uuid.uuid4().hex[:12]
AUTH = ("conveyor", PASSWORD)
SECRET = webhooks.new_secret()


@dataclass
class FlowerOn:
    """A ``conveyor flower`` (its URL) and the Redis it reads."""

    flower: str
    redis_url: str
    processes: dict[str, Process]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())


@dataclass
class FeedStack(FlowerOn):
    """An api, one worker per job queue and ``conveyor flower``, on their own Redis."""

    api: str
    receiver: HttpReceiver
    env: dict[str, str]
    log_dir: Path
    headers: dict[str, str]

    def start_flower(self) -> None:
        port = int(self.flower.rsplit(":", 1)[1])
        self.processes["flower"] = process = conveyor("flower", ["flower"], self.env, self.log_dir)
        wait_for_port(port, 30, process.popen)

    def restart_flower(self) -> None:
        assert self.processes["flower"].stop() == 0, self.processes["flower"].output()[-3000:]
        self.start_flower()


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedStack]:
    root = tmp_path_factory.mktemp("flower-feed")
    with redis_server(root / "redis") as redis_url, http_receiver() as receiver:
        api_port, flower_port = free_port(), free_port()
        env = base_env(
            root / "var",
            CONVEYOR_REDIS_URL=redis_url,
            CONVEYOR_API_PORT=str(api_port),
            CONVEYOR_FLOWER_PORT=str(flower_port),
            CONVEYOR_FLOWER_PASSWORD=PASSWORD,
            CONVEYOR_WEBHOOK_SECRET=SECRET,
            CONVEYOR_WEBHOOK_ALLOW_PRIVATE="true",
            CONVEYOR_WEBHOOK_TIMEOUT="1",
            CONVEYOR_RETRY_BACKOFF_BASE="0.05",
            CONVEYOR_RETRY_BACKOFF_CAP="60",
            CONVEYOR_MAX_ATTEMPTS="3",
        )
        log_dir = root / "logs"
        stack = FeedStack(
            f"http://127.0.0.1:{flower_port}",
            redis_url,
            {},
            f"http://127.0.0.1:{api_port}",
            receiver,
            env,
            log_dir,
            bearer(create_key(env, "tests")),
        )
        stack.processes["api"] = conveyor("api", ["api"], env, log_dir)
        for queue in ("uploads", "notifications"):
            stack.processes[queue] = conveyor(queue, ["worker", "--queues", queue, "--concurrency", "1"], env, log_dir)
        try:
            wait_until_healthy(stack.api, 60, list(stack.processes.values()))
            stack.start_flower()
            yield stack
        finally:
            for process in stack.processes.values():
                process.stop()


def task_info(stack: FlowerOn, job_id: str) -> dict[str, Any] | None:
    """Flower's ``/api/task/info`` for the job, or ``None`` while Flower does not know it."""
    try:
        response = httpx.get(f"{stack.flower}/api/task/info/{job_id}", auth=AUTH, timeout=5)
    except httpx.TransportError:
        return None
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


def wait_task(
    stack: FlowerOn, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = task_info(stack, job_id)
        if info is not None and done(info):
            return info
        time.sleep(0.05)
    raise AssertionError(f"Flower's task {job_id} is {info}\n{stack.logs()}")


def job(stack: FeedStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.api}/jobs/{job_id}", headers=stack.headers, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(stack: FeedStack, body: dict[str, Any]) -> str:
    response = httpx.post(f"{stack.api}/notifications", json=body, headers=stack.headers, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def webhook(url: str) -> dict[str, Any]:
    return {"channel": "webhook", "url": url, "type": "order.paid", "data": {"order": 7}}


def run_failing_job(stack: FeedStack) -> str:
    """A webhook job whose receiver always answers 500: failed after 3 attempts (2 retries)."""
    job_id = submit(stack, webhook(stack.receiver.script(f"/down-{uuid.uuid4().hex}", Reply(500))))
    wait_finished(stack.api, [job_id], headers=stack.headers)
    return job_id


def run_cancelled_job(stack: FeedStack, while_retrying: Callable[[str], None] | None = None) -> str:
    """A webhook job told to come back in 60 s (``Retry-After``), cancelled while it waits (after
    ``while_retrying(job_id)``)."""
    url = stack.receiver.script(f"/busy-{uuid.uuid4().hex}", Reply(503, {"Retry-After": "60"}))
    job_id = submit(stack, webhook(url))
    deadline = time.monotonic() + 30
    while job(stack, job_id)["status"] != "retrying" and time.monotonic() < deadline:
        time.sleep(0.05)
    if while_retrying is not None:
        while_retrying(job_id)
    assert httpx.delete(f"{stack.api}/jobs/{job_id}", headers=stack.headers, timeout=10).status_code == 202
    return job_id


def run_log_job(stack: FeedStack) -> str:
    job_id = submit(stack, {"channel": "log", "message": "to flower"})
    wait_finished(stack.api, [job_id], headers=stack.headers)
    return job_id


def publish(stack: FlowerOn, job_id: str, type_: EventType, status: JobStatus, **fields: Any) -> None:
    """Append one job event of an upload straight to the stream, as a worker would."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        EventLog(client, max_len=100_000).publish(
            Event(type=type_, job_id=job_id, kind="upload", status=status, ts=time.time(), owner="tests", **fields)
        )
    finally:
        client.close()


def progress_is(percent: float) -> Callable[[dict[str, Any]], bool]:
    return lambda info: bool(info["progress"] == percent)


def test_progress_shows_on_the_task_page_the_tasks_list_and_the_api_while_the_job_runs(feed: FeedStack) -> None:
    job_id = f"feed-progress-{uuid.uuid4().hex}"
    publish(feed, job_id, EventType.QUEUED, JobStatus.QUEUED, progress=0)
    received = wait_task(feed, job_id, lambda info: info["state"] == "RECEIVED")
    assert received["name"] == "uploads.ingest" and received["args"] == repr([job_id])
    publish(feed, job_id, EventType.STARTED, JobStatus.STARTED, progress=0, attempt=1)
    wait_task(feed, job_id, lambda info: info["state"] == "STARTED")

    seen = []
    for percent in (25.0, 75.5):
        publish(feed, job_id, EventType.PROGRESS, JobStatus.STARTED, progress=percent)
        info = wait_task(feed, job_id, progress_is(percent))
        assert info["state"] == "STARTED"
        assert json.loads(info["result"]) == {"progress": percent}
        seen.append(info["progress"])

        # The task page, as a browser gets it: the state and the percentage are in the HTML.
        page = httpx.get(f"{feed.flower}/task/{job_id}", auth=AUTH, timeout=5)
        assert page.status_code == 200
        assert ">STARTED<" in page.text
        assert f"{{&quot;progress&quot;:{percent}}}" in page.text  # the Result row, HTML-escaped JSON
        assert "<dt>Progress</dt>" in page.text and f"{percent}" in page.text

        # The Tasks list: the page has a Result column, and the rows it loads carry the progress in it.
        assert '<th data-column="result">Result</th>' in httpx.get(f"{feed.flower}/tasks", auth=AUTH).text
        rows = httpx.get(
            f"{feed.flower}/tasks/datatable",
            params={
                "draw": 1,
                "start": 0,
                "length": 10,
                "search[value]": job_id,
                "order[0][column]": 0,
                "order[0][dir]": "desc",
                "columns[0][data]": "received",
            },
            auth=AUTH,
            timeout=5,
        ).json()["data"]
        assert [(row["uuid"], row["state"], json.loads(row["result"])) for row in rows] == [
            (job_id, "STARTED", {"progress": percent})
        ]
        listed = httpx.get(f"{feed.flower}/api/tasks", params={"state": "STARTED"}, auth=AUTH, timeout=5).json()
        assert listed[job_id]["progress"] == percent

    result = {"sha256": "ab" * 32, "size": 7, "filename": "x.bin"}
    publish(feed, job_id, EventType.SUCCEEDED, JobStatus.SUCCEEDED, progress=100, attempt=1, result=result)
    done = wait_task(feed, job_id, lambda info: info["state"] == "SUCCESS")
    assert len(set(seen)) == 2
    assert json.loads(done["result"]) == result and done["progress"] == 100
    assert done["runtime"] is not None and done["runtime"] >= 0


def test_a_failed_job_is_failure_with_its_error_and_its_retries(feed: FeedStack) -> None:
    job_id = run_failing_job(feed)
    stored = job(feed, job_id)
    assert stored["status"] == "failed" and stored["attempts"] == 3
    info = wait_task(feed, job_id, lambda info: info["state"] == "FAILURE")
    assert info["exception"] == stored["error"]
    assert "500" in info["exception"]
    assert info["retries"] == 2 and info["retried"] is not None
    assert info["name"] == "notifications.send"
    assert re.match(r"notifications-\d+@", info["worker"])
    metrics = httpx.get(f"{feed.flower}/metrics", auth=AUTH, timeout=5).text
    assert 'type="task-retried"' in metrics and 'type="task-failed"' in metrics


def test_a_retry_is_visible_and_a_cancelled_job_is_revoked(feed: FeedStack) -> None:
    def retry_shown(job_id: str) -> None:
        info = wait_task(feed, job_id, lambda info: info["state"] == "RETRY")
        assert info["retries"] == 1 and info["retried"] is not None
        assert info["exception"] == job(feed, job_id)["error"] and "503" in info["exception"]

    job_id = run_cancelled_job(feed, while_retrying=retry_shown)
    stored = job(feed, job_id)
    assert stored["status"] == "cancelled"
    info = wait_task(feed, job_id, lambda info: info["state"] == "REVOKED")
    assert info["revoked"] is not None and info["exception"] == stored["error"]


def test_workers_are_listed_with_the_counts_of_their_jobs(feed: FeedStack) -> None:
    job_id = run_log_job(feed)
    wait_task(feed, job_id, lambda info: info["state"] == "SUCCESS")
    workers = httpx.get(f"{feed.flower}/workers", params={"json": 1}, auth=AUTH, timeout=5).json()["data"]
    by_name = {re.sub(r"-\d+@.*", "", worker["hostname"]): worker for worker in workers}
    assert set(by_name) == {"uploads", "notifications"}, workers
    assert all(worker["status"] for worker in workers)
    assert by_name["notifications"]["task-succeeded"] >= 1
    listed = httpx.get(f"{feed.flower}/api/tasks", auth=AUTH, timeout=5).json()
    assert {task["name"] for task in listed.values()} <= {"uploads.ingest", "notifications.send"}


def test_after_a_flower_restart_jobs_from_before_keep_their_final_state(feed: FeedStack) -> None:
    failed, cancelled, succeeded = run_failing_job(feed), run_cancelled_job(feed), run_log_job(feed)
    wait_task(feed, succeeded, lambda info: info["state"] == "SUCCESS")
    feed.restart_flower()
    info = wait_task(feed, failed, lambda info: info["state"] == "FAILURE")
    assert info["exception"] == job(feed, failed)["error"] and info["retries"] == 2
    assert wait_task(feed, cancelled, lambda info: True)["state"] == "REVOKED"
    info = wait_task(feed, succeeded, lambda info: True)
    assert info["state"] == "SUCCESS"
    assert json.loads(info["result"]) == job(feed, succeeded)["result"]
    assert re.match(r"notifications-\d+@", info["worker"])


def test_no_worker_publishes_a_celery_task_event_even_when_asked_to(feed: FeedStack) -> None:
    """Celery's event exchange (``celeryev``) is a fanout: on Redis, kombu publishes each event to the pub/sub
    channel ``/<db>.celeryev/<routing key>`` (``task.succeeded``, ``worker.heartbeat``…)."""
    client = redis.Redis.from_url(feed.redis_url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("*celeryev*")
    channels: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                channels.append(message["channel"].decode())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    app = create_celery(Settings(_env_file=None, redis_url=feed.redis_url))  # type: ignore[call-arg]
    try:
        # What Flower itself used to broadcast every 5 s: the workers must still send no task events.
        app.control.enable_events()
        upload = httpx.post(
            f"{feed.api}/uploads", files={"file": ("p.bin", b"p" * 300_000)}, headers=feed.headers, timeout=30
        )
        assert upload.status_code == 202, upload.text
        jobs = [upload.json()["job_id"], run_log_job(feed), run_failing_job(feed)]
        wait_finished(feed.api, jobs, headers=feed.headers)
        mark = len(channels)
        deadline = time.monotonic() + 30
        while sum(c.endswith("celeryev/worker.heartbeat") for c in channels[mark:]) < 3:  # workers went on beating
            assert time.monotonic() < deadline, channels[mark:]
            time.sleep(0.05)
    finally:
        stop.set()
        listener.join(5)
        pubsub.close()
        client.close()
        app.close()
    assert any(channel.endswith("celeryev/worker.heartbeat") for channel in channels), channels
    assert [channel for channel in channels if "/task." in channel] == []
    for job_id in jobs:
        assert wait_task(feed, job_id, lambda info: info["state"] in ("SUCCESS", "FAILURE"))["state"]


def test_a_bad_stream_entry_is_skipped_and_the_feed_goes_on(tmp_path: Path) -> None:
    """On a Redis of its own: the api's stream reader is not under test here."""
    with redis_server(tmp_path / "redis") as redis_url:
        port = free_port()
        env = base_env(
            tmp_path / "var",
            CONVEYOR_REDIS_URL=redis_url,
            CONVEYOR_FLOWER_PORT=str(port),
            CONVEYOR_FLOWER_PASSWORD=PASSWORD,
        )
        client = redis.Redis.from_url(redis_url)
        try:
            client.xadd(EVENTS_STREAM, {b"e": b"{not json"})
            client.xadd(EVENTS_STREAM, {b"other": b"1"})
            client.xadd(EVENTS_STREAM, {b"e": b'{"v": 1, "type": "job.queued", "job_id": "x"}'})  # no ts
        finally:
            client.close()
        flower = conveyor("flower", ["flower"], env, tmp_path / "logs")
        try:
            wait_for_port(port, 30, flower.popen)
            lone = FlowerOn(f"http://127.0.0.1:{port}", redis_url, {"flower": flower})
            job_id = f"feed-after-bad-{uuid.uuid4().hex}"
            publish(lone, job_id, EventType.QUEUED, JobStatus.QUEUED, progress=0)
            wait_task(lone, job_id, lambda info: info["state"] == "RECEIVED")
            assert flower.alive()
        finally:
            flower.stop()
    assert flower.output().count('event="bad stream entry skipped"') == 3, flower.output()[-3000:]


def test_the_feed_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """Redis killed and started again from its append-only file: the feed reconnects and goes on from where it was."""
    port = free_port()
    stack = FaultStack(tmp_path, env={"CONVEYOR_FLOWER_PORT": str(port), "CONVEYOR_FLOWER_PASSWORD": PASSWORD})
    try:
        stack.start_redis()
        flower = stack.start("flower", ["flower"])
        wait_for_port(port, 30, flower.popen)
        view = FlowerOn(f"http://127.0.0.1:{port}", stack.redis_url, stack.processes)
        before, after = f"feed-before-{uuid.uuid4().hex}", f"feed-after-{uuid.uuid4().hex}"
        publish(view, before, EventType.QUEUED, JobStatus.QUEUED, progress=0)
        wait_task(view, before, lambda info: info["state"] == "RECEIVED")
        stack.kill("redis")
        time.sleep(2)
        stack.start_redis()
        publish(view, after, EventType.QUEUED, JobStatus.QUEUED, progress=0)
        publish(view, before, EventType.CANCELLED, JobStatus.CANCELLED, progress=0)
        wait_task(view, after, lambda info: info["state"] == "RECEIVED")
        assert wait_task(view, before, lambda info: info["state"] == "REVOKED")
        assert flower.alive()
    finally:
        stack.stop_all()
