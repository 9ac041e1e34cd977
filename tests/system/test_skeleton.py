"""The walking skeleton, end to end with real processes: HTTP in, Celery worker, events out over WebSocket."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.support import bearer, conveyor, peak_rss_kib, processes_with_env, run_env, wait_until_healthy

#: Longer than the global 120 s: `conveyor run`'s start (60 s), then up to 30 + 60 + 20 + 15 s of waiting.
pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def receive_until(
    ws_url: str, path: str, done: set[str], timeout: float = 30, *, headers: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Events from ``path`` until one of type in ``done`` arrives."""
    events: list[dict[str, Any]] = []
    with connect(ws_url + path, open_timeout=10, additional_headers=headers) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            events.append(event)
            if event["type"] in done:
                return events
    raise AssertionError(f"no {done} event within {timeout}s: {events}")


def test_notification_runs_on_a_worker_and_events_arrive(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.base_url}/notifications", json={"channel": "log", "message": "hello"}, headers=stack.headers
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["status"] == "queued"

    events = receive_until(stack.ws_url, f"/ws?job_id={job_id}", {"job.succeeded", "job.failed"}, headers=stack.headers)
    types = [event["type"] for event in events]
    assert types == ["job.queued", "job.started", "job.succeeded"], events
    assert all(event["job_id"] == job_id for event in events)
    ids = [event["event_id"] for event in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

    job = httpx.get(f"{stack.base_url}/jobs/{job_id}", headers=stack.headers).json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert job["result"]["channel"] == "log"


def multipart_body(path: Path, boundary: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A multipart/form-data body with one ``file`` part, streamed from disk."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with path.open("rb") as handle:
        while data := handle.read(chunk):
            yield data
    yield f"\r\n--{boundary}--\r\n".encode()


def test_50mb_upload_is_streamed_stored_and_verified(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "50MB.bin"
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for _ in range(50):
            block = os.urandom(1 << 20)
            digest.update(block)
            handle.write(block)
    api_pid = stack.processes["api"].pid
    peak_before = peak_rss_kib(api_pid)

    boundary = "conveyor-test-boundary"
    started = time.monotonic()
    response = httpx.post(
        f"{stack.base_url}/uploads",
        content=multipart_body(source, boundary),
        headers={**stack.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    growth_mib = (peak_rss_kib(api_pid) - peak_before) / 1024
    print(f"50 MiB upload answered in {elapsed:.2f}s; api peak RSS grew by {growth_mib:.1f} MiB")
    assert growth_mib < 16, f"api peak RSS grew by {growth_mib:.1f} MiB for a 50 MiB upload"

    events = receive_until(
        stack.ws_url, f"/ws?job_id={job_id}", {"job.succeeded", "job.failed"}, timeout=60, headers=stack.headers
    )
    assert events[-1]["type"] == "job.succeeded", events
    result = events[-1]["result"]
    assert result["sha256"] == digest.hexdigest()
    assert result["size"] == 50 << 20
    assert result["filename"] == "50MB.bin"

    stored = stack.data_dir / "storage" / result["storage_key"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.hexdigest()
    assert not any((stack.data_dir / "spool").iterdir()), "spool file left behind"
    job = httpx.get(f"{stack.base_url}/jobs/{job_id}", headers=stack.headers).json()
    assert job["status"] == "succeeded"


def test_conveyor_run_starts_everything_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """Acceptance 1 through ``conveyor run`` itself: embedded Redis, api, workers, beat, Flower; then Ctrl-C."""
    data_dir = tmp_path / "var"
    env, api_port, flower_port = run_env(data_dir, CONVEYOR_FLOWER_PASSWORD="flower-test-secret")
    run = conveyor("run", ["run"], env, tmp_path)
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        started = time.monotonic()
        wait_until_healthy(base_url, 60, [run])
        print(f"conveyor run healthy after {time.monotonic() - started:.1f}s")
        # In development, ``conveyor run`` makes a key on its first start and keeps it here (and prints it).
        assert (data_dir / "dev-api-key").stat().st_mode & 0o077 == 0  # the owner's alone
        headers = bearer((data_dir / "dev-api-key").read_text().strip())
        flower = f"http://127.0.0.1:{flower_port}"
        auth = ("conveyor", "flower-test-secret")

        def flower_answers() -> bool:
            try:
                return httpx.get(f"{flower}/api/tasks", auth=auth, timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        def flower_tasks() -> dict[str, Any]:
            try:
                reply = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=5)
            except httpx.TransportError:
                return {}
            return reply.json() if reply.status_code == 200 else {}

        # Flower is up and locked; its tasks come from the job event stream, not from Celery task events.
        deadline = time.monotonic() + 30
        while not flower_answers():
            assert time.monotonic() < deadline, f"Flower did not answer\n{run.output()[-3000:]}"
            time.sleep(0.5)
        assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
        assert httpx.get(f"{flower}/api/tasks", auth=("conveyor", "wrong"), timeout=5).status_code == 401

        response = httpx.post(
            f"{base_url}/notifications", json={"channel": "log", "message": "from run"}, headers=headers
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        ws_url = base_url.replace("http", "ws")
        events = receive_until(ws_url, f"/ws?job_id={job_id}", {"job.succeeded"}, 60, headers=headers)
        assert [e["type"] for e in events][-2:] == ["job.started", "job.succeeded"]
        assert httpx.get(f"{base_url}/jobs/{job_id}", headers=headers).json()["status"] == "succeeded"

        deadline = time.monotonic() + 20
        while job_id not in (tasks := flower_tasks()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job_id in tasks, f"Flower does not list {job_id}\n{run.output()[-3000:]}"
        assert tasks[job_id]["name"] == "notifications.send"
        assert tasks[job_id]["state"] == "SUCCESS"
        assert re.match(r"notifications-\d+@", tasks[job_id]["worker"])
        # Beat's housekeeping ran meanwhile (dispatch-pending every 5 s), but only user jobs are Flower's tasks.
        assert {task["name"] for task in tasks.values()} == {"notifications.send"}
    finally:
        run.popen.send_signal(signal.SIGINT)
        stop_started = time.monotonic()
        status = run.popen.wait(15)
        stop_seconds = time.monotonic() - stop_started
    marker = f"CONVEYOR_DATA_DIR={data_dir}"
    deadline = time.monotonic() + 2
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(marker) == [], run.output()[-3000:]
    assert stop_seconds < 10, f"stopping took {stop_seconds:.1f}s"
    assert status == 0, run.output()[-3000:]
