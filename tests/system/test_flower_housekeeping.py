"""Housekeeping stays out of Flower: ``conveyor run`` (what ``make run`` starts) with beat's intervals shortened, so
that a few seconds hold as many housekeeping runs as minutes do by default; Flower's ``/api/tasks`` and its
workers' task counts stay empty while ``/metrics`` counts the runs (the housekeeping worker logs each: at INFO when
it did something, at DEBUG otherwise).

Why it holds however long the stack runs: workers send no Celery task events at all (``conveyor/queue/app.py``,
checked by test_flower_feed.py's ``test_no_worker_publishes_a_celery_task_event_even_when_asked_to``), and Flower's
task table is fed from the job event stream only, where housekeeping publishes nothing and the feed takes only jobs
of a user kind (``conveyor/ops/flower_feed.py``)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.ops.redis_server import wait_for_port
from tests.support import bearer, conveyor, run_env, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

AUTH = ("conveyor", "housekeeping-" + uuid.uuid4().hex[:12])
TOKEN = "metrics-" + uuid.uuid4().hex


def housekeeping_runs(api: str) -> dict[str, float]:
    response = httpx.get(f"{api}/metrics", headers=bearer(TOKEN), timeout=10)
    assert response.status_code == 200, response.text
    runs: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == "conveyor_housekeeping_runs":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    runs[sample.labels["task"]] = runs.get(sample.labels["task"], 0) + sample.value
    return runs


def test_housekeeping_never_reaches_flowers_tasks(tmp_path: Path) -> None:
    env, api_port, flower_port = run_env(
        tmp_path / "var",
        CONVEYOR_DISPATCH_INTERVAL_SECONDS="0.2",  # dispatch_pending: every 5 s by default
        CONVEYOR_HEARTBEAT_SECONDS="0.5",  # reap_stale runs every 2 heartbeats
        CONVEYOR_FLOWER_PASSWORD=AUTH[1],
        CONVEYOR_METRICS_TOKEN=TOKEN,
    )
    run = conveyor("run", ["run"], env, tmp_path / "logs")
    api, flower = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}"
    try:
        wait_until_healthy(api, 90, [run])
        wait_for_port(flower_port, 30, run.popen)
        deadline = time.monotonic() + 60
        # As many dispatch_pending runs as 5 minutes of `make run` make with the default interval (60).
        while (runs := housekeeping_runs(api)).get("dispatch_pending", 0) < 60:
            assert time.monotonic() < deadline, f"{runs}\n{run.output()[-4000:]}"
            time.sleep(0.5)
        assert runs.get("reap_stale", 0) >= 1 and runs.get("fire_schedules", 0) >= 1, runs

        with httpx.Client(base_url=flower, auth=AUTH, timeout=10) as client:
            assert client.get("/api/tasks").json() == {}
            assert client.get("/api/tasks", params={"state": "SUCCESS"}).json() == {}
            workers = client.get("/workers", params={"json": 1}).json()["data"]
            assert any(row["hostname"].startswith("housekeeping-") for row in workers), workers
            for row in workers:
                assert not any(row.get(f"task-{what}") for what in ("received", "started", "succeeded")), row
            metrics = client.get("/metrics").text
            assert "housekeeping." not in metrics
    finally:
        assert run.stop(timeout=30) == 0, run.output()[-4000:]
