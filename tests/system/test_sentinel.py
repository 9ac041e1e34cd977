"""Redis managed by Sentinel: the master redis-server is SIGKILLed, the Sentinels promote its replica, and
submissions, workers and event streams carry on through the failover with no accepted job lost.

Every process is given ``CONVEYOR_REDIS_URL=sentinel://…?master=…`` (the api's Redis clients, the event hub, the
workers' Celery broker through kombu's Sentinel transport); none is told the master's address.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from websockets.sync.client import connect

from conveyor.names import QUEUE_HOUSEKEEPING, QUEUE_NOTIFICATIONS
from conveyor.ops.redis_server import free_port
from conveyor.store import db
from tests.events_support import FINISHED, recv, subscribed
from tests.sentinels import sentinel_group
from tests.support import wait_for_workers, wait_until_healthy
from tests.system.faults import FaultStack

#: Longer than the global 120 s: six servers and five processes to start, a failover, and the jobs.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(360)]

JOBS = 150
FLOWER = "sentinel-test-flower"


class Submitter:
    """Submits log notifications one after another, in a thread, through the failover; a refusal (503 while Redis
    changes master) is tried again, and only a 202 counts as accepted. :attr:`accepted` holds (job id, when)."""

    def __init__(self, base_url: str, headers: dict[str, str], count: int) -> None:
        self.base_url, self.headers, self.count = base_url, headers, count
        self.accepted: list[tuple[str, float]] = []
        self.refused = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
                for n in range(self.count):
                    while True:
                        response = client.post("/notifications", json={"channel": "log", "message": f"m {n}"})
                        if response.status_code == 202:
                            self.accepted.append((str(response.json()["job_id"]), time.monotonic()))
                            break
                        assert response.status_code == 503, response.text
                        self.refused += 1
                        time.sleep(0.2)
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def ids(self) -> list[str]:
        return [job_id for job_id, _ in self.accepted]


class Follower:
    """A WebSocket client of every job event, reconnecting (with its last event id) when the api closes it."""

    def __init__(self, ws_url: str, headers: dict[str, str]) -> None:
        self.ws_url, self.headers = ws_url, headers
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    def _run(self) -> None:
        last: str | None = None
        while not self.stop.is_set():
            query = f"?last_event_id={last}" if last else ""
            try:
                with connect(f"{self.ws_url}/ws{query}", open_timeout=10, additional_headers=self.headers) as ws:
                    if last is None:
                        subscribed(ws)
                        self.ready.set()
                    while not self.stop.is_set():
                        try:
                            event = recv(ws, timeout=1)
                        except TimeoutError:
                            continue
                        if event.get("job_id"):
                            self.events.append(event)
                            last = str(event["event_id"])
            except Exception:  # closed by the api (Redis changing master) or refused meanwhile: resume
                self.reconnects += 1
                time.sleep(0.5)

    def finished(self) -> set[str]:
        return {e["job_id"] for e in self.events if e["type"] in FINISHED}


def test_master_killed_sentinel_promotes_and_nothing_accepted_is_lost(tmp_path: Path) -> None:
    with sentinel_group(tmp_path / "redis") as group:
        stack = FaultStack(tmp_path)
        stack.env["CONVEYOR_REDIS_URL"] = group.url
        try:
            stack.start("api", ["api"])
            for name, queue in [("notify-1", QUEUE_NOTIFICATIONS), ("notify-2", QUEUE_NOTIFICATIONS)]:
                stack.start(name, ["worker", "--queues", queue, "--hostname", f"{name}@%h"])
            stack.start("housekeeping", ["worker", "--queues", QUEUE_HOUSEKEEPING, "--hostname", "housekeeping@%h"])
            stack.start("beat", ["beat"])
            flower_port = free_port()
            stack.start("flower", ["flower"], CONVEYOR_FLOWER_PORT=str(flower_port), CONVEYOR_FLOWER_PASSWORD=FLOWER)
            wait_until_healthy(stack.base_url, 60, list(stack.processes.values()))
            wait_for_workers(group.url, ["notify-1", "notify-2", "housekeeping"], 60)

            follower = Follower(stack.ws_url, stack.headers)
            submitter = Submitter(stack.base_url, stack.headers, JOBS)
            stack.wait_for(lambda: len(submitter.accepted) >= JOBS // 3, 60, "a third of the jobs accepted")

            old_master = group.master_port
            killed_at = group.kill_master()
            group.wait_until(lambda: group.master_port_now() == group.replica_port, 60, "the replica promoted")
            promoted_at = time.monotonic()
            submitter.thread.join(120)
            assert submitter.error is None, repr(submitter.error)

            job_ids = submitter.ids()
            after = [job_id for job_id, when in submitter.accepted if when > promoted_at]
            assert len(after) >= JOBS // 3, f"only {len(after)} submissions after the failover"
            stack.wait_finished(job_ids, 120)
            stack.wait_for(
                lambda: set(after) <= follower.finished(), 60, "the follower saw the jobs after the failover"
            )
            follower.stop.set()
            with stack.engine.connect() as connection:
                effects = Counter(
                    connection.execute(
                        sa.select(db.effects.c.job_id).where(db.effects.c.effect == "notification.log")
                    ).scalars()
                )
                logged = Counter(connection.execute(sa.select(db.notification_log.c.job_id)).scalars())
            health = httpx.get(f"{stack.base_url}/health", timeout=10)
            # Flower's Broker page reads the queues through the Sentinels too, on the promoted master.
            depths = httpx.get(
                f"http://127.0.0.1:{flower_port}/api/queues/length", auth=("conveyor", FLOWER), timeout=30
            )
        finally:
            stack.stop_all()

    during = [when for _, when in submitter.accepted if killed_at < when]
    print(
        f"master :{old_master} SIGKILLed; replica :{group.replica_port} promoted after {promoted_at - killed_at:.1f}s;"
        f" first submission accepted {during[0] - killed_at:.1f}s after the kill ({submitter.refused} refusals "
        f"meanwhile); the event follower reconnected {follower.reconnects} time(s)"
    )
    assert health.status_code == 200, health.text
    assert depths.status_code == 200, depths.text
    assert {queue["name"] for queue in depths.json()["active_queues"]} >= {"notifications", "housekeeping"}
    assert len(job_ids) == JOBS
    assert effects == Counter(job_ids), "an accepted job was lost or ran twice"
    assert logged == Counter(job_ids)
    # Events of jobs accepted after the failover reached the follower, over the promoted master.
    for job_id in after:
        types = [e["type"] for e in follower.events if e["job_id"] == job_id]
        assert types[0] == "job.queued" and types[-1] == "job.succeeded", (job_id, types)
