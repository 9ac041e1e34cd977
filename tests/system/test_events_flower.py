"""An upload's progress reaches Flower from the job event stream (workers send no Celery task events): a 50 MB
upload watched through Flower's API shows at least two distinct percentages before SUCCESS, only ones the worker
reported while it runs; Flower folds every one of them, and the task ends SUCCESS with the job's result.

The worker reports at least every 10 percent however fast it goes (worker/runner.py) and Flower folds each report;
the test lets the worker run one event at a time so that its looks at Flower's API fall inside the job.
tests/system/test_flower_feed.py shows two values one after the other through events published straight to the
stream."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from conveyor.names import EVENTS_STREAM
from conveyor.ops.flower_feed import GATHER_SECONDS
from conveyor.ops.redis_server import free_port, wait_for_port
from tests.conftest import Stack
from tests.support import Process, base_env, conveyor

#: Longer than the global 120 s: Flower's start (30 s), a 50 MB upload (120 s), then 60 s of progress.
pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

AUTH = ("conveyor", "flower-" + uuid.uuid4().hex[:12])
#: Lets a paused worker run until its next event of a job; returns that event (``None``: none came in time).
Step = Callable[[], "dict[str, Any] | None"]


@pytest.fixture(scope="module")
def flower(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``conveyor flower`` on the session stack's Redis; yields its URL."""
    data_dir = tmp_path_factory.mktemp("events-flower")
    port = free_port()
    env = base_env(
        data_dir, CONVEYOR_REDIS_URL=stack.redis_url, CONVEYOR_FLOWER_PORT=str(port), CONVEYOR_FLOWER_PASSWORD=AUTH[1]
    )
    process = conveyor("flower", ["flower"], env, data_dir / "logs")
    try:
        wait_for_port(port, 30, process.popen)
        deadline = time.monotonic() + 30
        while 'event="flower feed started"' not in process.output():  # it first hears the workers' heartbeats
            assert time.monotonic() < deadline, process.output()[-3000:]
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def progress_events(redis_url: str, job_id: str) -> list[float]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(EVENTS_STREAM)
        events = [json.loads(fields[b"e"]) for _id, fields in entries]
    finally:
        client.close()
    return [e["progress"] for e in events if e.get("job_id") == job_id and e["type"] == "job.progress"]


def folded_progress(flower: str) -> float:
    """How many ``task-progress`` events of uploads Flower has folded (its own Prometheus counter)."""
    metrics = httpx.get(f"{flower}/metrics", auth=AUTH, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("flower_events_total{") and 'type="task-progress"' in line and "uploads.ingest" in line
    )


@contextlib.contextmanager
def paused(
    process: Process, redis_url: str, job_id: Callable[[], str]
) -> Iterator[Callable[[], dict[str, Any] | None]]:
    """The worker ``process`` (its whole process group: the pool's children too) stopped with SIGSTOP; yields a
    function that lets it run until it publishes the next event of the job ``job_id()`` names (or 10 s went by),
    then stops it again, and returns that event. Continued on exit, whatever happens.

    The worker reports progress at most every 0.25 s or 10 percent, and it has been stopped for longer than that
    whenever it is let go again: so each step is one report, and a look at Flower between two steps sees it."""
    group = os.getpgid(process.pid)
    client = redis.Redis.from_url(redis_url)
    newest: Any = client.xrevrange(EVENTS_STREAM, count=1)
    last = [newest[0][0] if newest else b"0-0"]

    def step() -> dict[str, Any] | None:
        deadline = time.monotonic() + 10
        os.killpg(group, signal.SIGCONT)
        try:
            while (left := deadline - time.monotonic()) > 0:
                read: Any = client.xread({EVENTS_STREAM: last[0]}, count=100, block=max(1, int(left * 1000)))
                for entry_id, fields in read[0][1] if read else []:
                    last[0] = entry_id
                    event: dict[str, Any] = json.loads(fields[b"e"])
                    if event.get("job_id") == job_id():
                        return event
            return None
        finally:
            os.killpg(group, signal.SIGSTOP)

    os.killpg(group, signal.SIGSTOP)
    try:
        yield step
    finally:
        os.killpg(group, signal.SIGCONT)
        client.close()


def settled(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """Flower's task info once the feed caught up: the same answer twice, further apart than the feed's reads (so
    that a read came between them, with nothing new to fold)."""
    previous: Any = ()
    while True:
        reply = client.get(f"/api/task/info/{job_id}")
        info: dict[str, Any] | None = reply.json() if reply.status_code == 200 else None
        if info == previous:
            return info
        previous = info
        time.sleep(GATHER_SECONDS + 0.1)


def test_a_50mb_upload_shows_its_progress_in_flower_before_success(stack: Stack, flower: str) -> None:
    """Hashing 50 MB takes this machine a fifth of a second, less than a look at Flower, so the uploads worker is
    paused (SIGSTOP) and let run until its next event of the job, with a look at Flower's API between: what a
    person refreshing the task page of a long upload sees, compressed."""
    before = folded_progress(flower)
    body = os.urandom(50 << 20)
    shown: list[float] = []
    final = None
    submitted: list[str] = []
    with paused(stack.processes["uploads"], stack.redis_url, lambda: submitted[0]) as step:
        response = httpx.post(
            f"{stack.base_url}/uploads", files={"file": ("50MB.bin", body)}, headers=stack.headers, timeout=120
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        submitted.append(job_id)
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=flower, auth=AUTH, timeout=5) as client:
            while time.monotonic() < deadline:
                step()
                info = settled(client, job_id)
                if info is None:
                    continue
                if info["state"] == "STARTED" and info["progress"] not in (None, *shown[-1:]):
                    shown.append(info["progress"])
                    assert json.loads(info["result"]) == {"progress": info["progress"]}
                if info["state"] in ("SUCCESS", "FAILURE"):
                    final = info
                    break
    assert final is not None and final["state"] == "SUCCESS", final
    job = httpx.get(f"{stack.base_url}/jobs/{job_id}", headers=stack.headers).json()
    assert json.loads(final["result"]) == job["result"]
    assert final["name"] == "uploads.ingest" and re.match(r"uploads-\d+@", final["worker"])
    reported = progress_events(stack.redis_url, job_id)
    assert reported, "the worker reported no progress"
    assert set(shown) <= {0.0, *reported}, f"Flower showed {shown}, the worker reported {reported}"
    moving = {percent for percent in shown if percent > 0}  # beyond the 0 of job.started
    assert len(moving) >= 2, f"Flower showed {shown} before SUCCESS; the worker reported {reported}"
    assert folded_progress(flower) - before == len(reported)
    print(f"Flower showed {shown}; the worker reported {reported}")
