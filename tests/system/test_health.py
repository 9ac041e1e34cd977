"""``/health`` under load and with parts down, on real processes: 300 calls at once all answer 200 while user traffic
holds the shared Redis pool; a required queue without a worker, or Redis stopped, makes every call 503 ``degraded``,
never 500."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.ops.redis_server import free_port, redis_command, wait_for_port
from tests.support import Process, base_env, bearer, conveyor, create_key, start_process, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(180)]

CALLS = 300


async def _burst(base_url: str, calls: int, extra: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=calls + len(extra), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        health = [client.get("/health") for _ in range(calls)]
        others = [client.get(path, headers=headers) for path, headers in extra]
        answers = await asyncio.gather(*health, *others)
    return list(answers[:calls])


def health_burst(base_url: str, calls: int = CALLS, extra: list[tuple[str, dict[str, str]]] = ()) -> Counter[int]:  # type: ignore[assignment]
    """``calls`` concurrent ``GET /health`` (beside the ``extra`` requests); their status codes, counted. Each 503
    must be the ``degraded`` JSON answer."""
    answers = asyncio.run(_burst(base_url, calls, list(extra)))
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["status"] == "degraded", answer.text
    return Counter(answer.status_code for answer in answers)


def wait_for_health(base_url: str, check: Any, timeout: float, processes: list[Process]) -> dict[str, Any]:
    """Poll ``/health`` until ``check(status, body)`` holds; returns the body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/health", timeout=5)
            body: dict[str, Any] = response.json()
            if check(response.status_code, body):
                return body
            last = (response.status_code, body)
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in processes)
    raise AssertionError(f"/health never matched in {timeout}s (last: {last})\n{logs}")


def test_health_answers_every_caller_and_says_which_part_is_down(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    env = base_env(
        tmp_path / "var",
        CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_HEALTH_QUEUES="notifications",
        CONVEYOR_RATE_LIMIT_BURST="5000",
        CONVEYOR_RATE_LIMIT_PER_SECOND="5000",
    )
    logs = tmp_path / "logs"
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = start_process("redis", redis_command(redis_port, redis_dir), os.environ, logs)
    processes = [redis]
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        wait_for_port(redis_port, 10, redis.popen)
        headers = bearer(create_key(env, "tests"))
        processes.append(conveyor("api", ["api"], env, logs))
        worker = conveyor("worker", ["worker", "--queues", "notifications", "--concurrency", "1"], env, logs)
        processes.append(worker)
        wait_until_healthy(base_url, 60, processes)
        body = httpx.get(f"{base_url}/health", timeout=5).json()
        assert body["events"] == "ok" and body["redis"] == "ok" and body["database"] == "ok", body
        assert body["workers"]["notifications"] == 1 and body["workers"]["uploads"] == 0, body

        # 300 at once, while 300 authenticated requests use the shared Redis pool (100 connections) beside them.
        user_traffic = [("/jobs?limit=1", headers)] * 300
        codes = health_burst(base_url, extra=user_traffic)
        print(f"{CALLS} concurrent /health beside {len(user_traffic)} user requests: {dict(codes)}")
        assert codes == Counter({200: CALLS})

        # A required queue loses its only worker (stopped cleanly: it withdraws at once).
        worker.stop(signal.SIGTERM)
        body = wait_for_health(base_url, lambda status, _body: status == 503, 30, processes)
        assert body["status"] == "degraded" and body["workers"]["notifications"] == 0, body
        assert "no live worker for queue notifications" in body["detail"], body
        assert body["redis"] == "ok" and body["database"] == "ok" and body["events"] == "ok", body

        # Redis goes away: every caller hears 503 degraded, none 500.
        redis.stop()
        body = wait_for_health(base_url, lambda status, body: status == 503 and body["redis"] != "ok", 30, processes)
        assert body["redis"].startswith("unavailable") and body["workers"] is None, body
        codes = health_burst(base_url)
        print(f"{CALLS} concurrent /health with Redis stopped: {dict(codes)}")
        assert codes == Counter({503: CALLS})
        body = wait_for_health(base_url, lambda _status, body: body["events"] != "ok", 30, processes)
        assert body["events"].startswith("stale"), body
    finally:
        for process in reversed(processes):
            process.stop()
