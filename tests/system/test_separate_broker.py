"""``CONVEYOR_BROKER_URL``: Celery's queues on a Redis of their own, the event stream (and everything else) on
``CONVEYOR_REDIS_URL``'s. Jobs run, events reach a WebSocket, and each server holds only its own keys."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import redis
from websockets.sync.client import connect

from conveyor.names import EVENTS_STREAM, QUEUE_HOUSEKEEPING, QUEUE_NOTIFICATIONS
from conveyor.redis_client import text
from tests.events_support import FINISHED, recv, submit, subscribed
from tests.support import redis_server, wait_for_workers, wait_until_healthy
from tests.system.faults import FaultStack

pytestmark = [pytest.mark.system, pytest.mark.slow]

JOBS = 30


def _keys(url: str) -> set[str]:
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        return {text(key) for key in client.keys("*")}


def test_queues_on_their_own_redis_and_the_event_stream_on_another(tmp_path: Path) -> None:
    with redis_server(tmp_path / "broker") as broker_url:
        stack = FaultStack(tmp_path / "stack", env={"CONVEYOR_BROKER_URL": broker_url})
        try:
            stack.start_redis()
            stack.start("api", ["api"])
            stack.start("worker", ["worker", "--queues", QUEUE_NOTIFICATIONS, "--hostname", "worker@%h"])
            stack.start("housekeeping", ["worker", "--queues", QUEUE_HOUSEKEEPING, "--hostname", "housekeeping@%h"])
            stack.start("beat", ["beat"])
            wait_until_healthy(stack.base_url, 60, list(stack.processes.values()))
            wait_for_workers(broker_url, ["worker", "housekeeping"], 60)
            with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
                subscribed(ws)
                job_ids = [submit(stack.base_url, f"m {n}", headers=stack.headers) for n in range(JOBS)]
                types: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
                while any(not seen or seen[-1] not in FINISHED for seen in types.values()):
                    event = recv(ws)
                    if event.get("job_id") in types:
                        types[str(event["job_id"])].append(str(event["type"]))
            stack.wait_finished(job_ids, 60)
            on_events, on_broker = _keys(stack.redis_url), _keys(broker_url)
        finally:
            stack.stop_all()

    assert all(seen == ["job.queued", "job.started", "job.succeeded"] for seen in types.values()), types
    assert EVENTS_STREAM in on_events and EVENTS_STREAM not in on_broker
    assert any(key.startswith("_kombu.binding.") for key in on_broker), on_broker
    assert not any(key.startswith("_kombu") or key in (QUEUE_NOTIFICATIONS, "unacked") for key in on_events), on_events
