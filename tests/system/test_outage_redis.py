"""Redis killed with SIGKILL mid-run and started again from its append-only file: nothing is lost.

1,000 jobs queued; Redis dies while workers are busy with them; submissions meanwhile are accepted (never a 500)
and /health says 503; Redis comes back on the same port from its append-only file; every job completes, on the
same worker processes (none restarted), and a WebSocket client connected across the restart receives every event.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conveyor.names import QUEUE_NOTIFICATIONS
from tests.system.faults import FaultStack, accepted_ids, submit_many

#: Longer than the global 120 s: 60 s to start, then up to 60 + 40 + 30 s of waiting, and the outage.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]

JOBS = 1000
DURING_OUTAGE = 20


class Follower(threading.Thread):
    """A WebSocket client of ``/ws`` (every job's events) that resumes with ``last_event_id`` whenever its
    connection ends, as a real client would."""

    def __init__(self, ws_url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True, name="ws-follower")
        self.ws_url = ws_url
        self.headers = headers
        self.events: dict[str, list[str]] = defaultdict(list)
        self.last_id: str | None = None
        self.connections = 0
        self.notices: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            query = f"?last_event_id={self.last_id}" if self.last_id else ""
            try:
                with connect(f"{self.ws_url}/ws{query}", open_timeout=5, additional_headers=self.headers) as ws:
                    self.connections += 1
                    self.ready.set()
                    while not self.stopping.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if "event_id" in message and message.get("job_id"):
                            self.events[message["job_id"]].append(message["type"])
                            self.last_id = message["event_id"]
                        elif "event_id" not in message:
                            self.notices.append(message)
            except (OSError, ConnectionClosed, TimeoutError):
                time.sleep(0.2)

    def __repr__(self) -> str:
        return f"<{self.connections} connection(s), {len(self.events)} jobs seen, notices {self.notices[:3]}>"

    def missing(self, job_ids: list[str], types: tuple[str, ...]) -> dict[str, list[str]]:
        return {j: self.events.get(j, []) for j in job_ids if not all(t in self.events.get(j, ()) for t in types)}

    def have(self, job_ids: list[str], types: tuple[str, ...]) -> bool:
        return all(all(t in self.events.get(job_id, ()) for t in types) for job_id in job_ids)


def test_redis_sigkill_and_restart_from_its_aof_loses_nothing(tmp_path: Path) -> None:
    stack = FaultStack(
        tmp_path,
        env={
            "CONVEYOR_DISPATCH_INTERVAL_SECONDS": "1",
            "CONVEYOR_DISPATCH_GRACE_SECONDS": "1",
            "CONVEYOR_WS_SEND_QUEUE": "20000",
            # 1,000 submissions at once with one key: more than the default burst allows.
            "CONVEYOR_RATE_LIMIT_BURST": "10000",
        },
    )
    follower = Follower(stack.ws_url, stack.headers)
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        workers = [stack.worker(f"w{n}", QUEUE_NOTIFICATIONS) for n in (1, 2)]
        stack.worker("housekeeping", "housekeeping", concurrency=1)
        stack.start("beat", ["beat"])
        stack.wait_ready(["w1", "w2", "housekeeping"])
        pids = [worker.pid for worker in workers]
        follower.start()
        assert follower.ready.wait(10)

        bodies = [{"channel": "log", "message": f"job {n}"} for n in range(JOBS)]
        job_ids = accepted_ids(submit_many(stack.base_url, bodies, threads=16, headers=stack.headers))
        stack.wait_for(lambda: stack.statuses(job_ids)["succeeded"] >= JOBS // 5, 60, "a fifth of the jobs done")

        stack.kill("redis")
        done_at_kill = stack.statuses(job_ids)["succeeded"]
        down_since = time.monotonic()
        with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=30) as client:
            health = client.get("/health")
            assert health.status_code == 503 and "redis" in health.json()["detail"], health.text
            answers = [
                client.post("/notifications", json={"channel": "log", "message": f"down {n}"})
                for n in range(DURING_OUTAGE)
            ]
            assert [a.status_code for a in answers] == [202] * DURING_OUTAGE, [
                a.text for a in answers if a.status_code != 202
            ]
            late_ids = [str(a.json()["job_id"]) for a in answers]
            assert client.get(f"/jobs/{late_ids[0]}").json()["status"] == "queued"
            for path in ("/jobs", f"/jobs/{job_ids[0]}", f"/jobs/{late_ids[0]}/attempts", "/uploads"):
                assert client.get(path).status_code < 500, path
            time.sleep(max(0.0, 2 - (time.monotonic() - down_since)))
        print(f"Redis down for {time.monotonic() - down_since:.1f}s; {done_at_kill}/{JOBS} jobs had finished")

        stack.start_redis()
        back = time.monotonic()
        everything = job_ids + late_ids
        stack.wait_finished(everything, 40)
        print(f"all {len(everything)} jobs done {time.monotonic() - back:.1f}s after Redis came back")
        assert [worker.pid for worker in workers] == pids and all(worker.alive() for worker in workers)
        health = httpx.get(f"{stack.base_url}/health", timeout=10)
        assert health.status_code == 200, health.text

        kinds = ("job.queued", "job.started", "job.succeeded")
        try:
            stack.wait_for(lambda: follower.have(everything, kinds), 30, "every event over the WebSocket")
        except AssertionError as exc:
            missing = follower.missing(everything, kinds)
            example = list(missing.items())[:5]
            raise AssertionError(f"{follower}: {len(missing)} jobs missing events, e.g. {example}") from exc
        print(
            f"WebSocket client: {follower.connections} connection(s), {sum(map(len, follower.events.values()))} events"
        )
        assert not [n for n in follower.notices if n.get("type") == "resync"], follower.notices
    finally:
        follower.stopping.set()
        stack.stop_all()
