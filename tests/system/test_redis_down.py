"""With Redis down the api says so on /health, still records submissions, and they run once Redis is back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conveyor.ops.redis_server import free_port, redis_command, wait_for_port
from tests.support import base_env, bearer, conveyor, create_key, start_process
from tests.system.faults import FaultStack
from tests.system.test_skeleton import receive_until

#: Longer than the global 120 s: 30 s for the api, then 30 + 60 s of waiting.
pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def test_submission_while_redis_is_down_runs_when_it_returns(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    env = base_env(
        tmp_path / "var",
        CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_DISPATCH_INTERVAL_SECONDS="1",
        CONVEYOR_DISPATCH_GRACE_SECONDS="0",
    )
    logs = tmp_path / "logs"
    headers = bearer(create_key(env, "tests"))
    api = conveyor("api", ["api"], env, logs)
    started = []
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base_url}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None, api.output()
        assert health.status_code == 503
        assert health.json()["redis"].startswith("unavailable") and "redis" in health.json()["detail"]

        response = httpx.post(
            f"{base_url}/notifications", json={"channel": "log", "message": "while down"}, headers=headers, timeout=30
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        assert httpx.get(f"{base_url}/jobs/{job_id}", headers=headers).json()["status"] == "queued"

        redis_dir = tmp_path / "redis"
        redis_dir.mkdir()
        redis = start_process("redis", redis_command(redis_port, redis_dir), os.environ, logs)
        started.append(redis)
        wait_for_port(redis_port, 10, redis.popen)
        for queue in ("notifications", "housekeeping"):
            started.append(conveyor(queue, ["worker", "--queues", queue, "--concurrency", "1"], env, logs))
        started.append(conveyor("beat", ["beat"], env, logs))

        ws_url = base_url.replace("http", "ws")
        events = receive_until(ws_url, f"/ws?job_id={job_id}", {"job.succeeded"}, 60, headers=headers)
        assert [e["type"] for e in events][-2:] == ["job.started", "job.succeeded"]
        assert httpx.get(f"{base_url}/health").status_code == 200
    finally:
        for process in [api, *reversed(started)]:
            process.stop()


def test_a_websocket_logging_in_while_redis_is_stopped_is_closed_at_once(tmp_path: Path) -> None:
    """The native ``/ws``, Redis stopped while a client logs in with a ticket (which lives in Redis) or follows a
    job (whose history is in Redis): each gets an ``error`` message and a close — 1011 for the stream that failed,
    1013 ("try again later") for the ticket that could not be read — well within the ping interval, never a hang."""
    ping = 5.0
    stack = FaultStack(tmp_path, env={"CONVEYOR_WS_PING_INTERVAL": str(ping), "CONVEYOR_WS_PING_TIMEOUT": str(ping)})
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        stack.wait_ready()
        with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=30) as client:
            ticket = client.post("/ws-tickets").json()["ticket"]
            job_id = client.post("/notifications", json={"channel": "log", "message": "m"}).json()["job_id"]
        stack.processes["redis"].stop()
        for query, headers, codes in (
            (f"?ticket={ticket}", {}, {1011, 1013}),
            (f"?job_id={job_id}", stack.headers, {1011}),
        ):
            started = time.monotonic()
            with connect(f"{stack.ws_url}/ws{query}", additional_headers=headers, open_timeout=ping) as ws:
                error = json.loads(ws.recv(timeout=ping))
                assert error["type"] == "error", error
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=ping)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in codes, (query, closed.value)
            assert time.monotonic() - started < ping, query
    finally:
        stack.stop_all()
