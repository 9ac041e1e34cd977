"""Flower's Broker page, ``/api/queues/length`` and ``/api/workers`` on real processes: a locked Redis (password
required) reached as the embedded one (password read from the data directory) and through ``CONVEYOR_REDIS_URL``
(user and password in the URL), a real api, real workers and ``conveyor flower``."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.ops.redis_server import free_port, wait_for_port
from conveyor.private import read_secret
from tests.events_support import wait_finished
from tests.support import Process, base_env, bearer, conveyor, create_key, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

PASSWORD = "flower-broker-" + uuid.uuid4().hex[:12]
AUTH = ("conveyor", PASSWORD)


@dataclass
class BrokerStack:
    """A locked redis-server, an api and ``conveyor flower`` (no worker until a test starts some)."""

    api: str
    flower: str
    env: dict[str, str]
    log_dir: Path
    headers: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.flower}{path}", params=params, auth=AUTH, timeout=10)

    def depths(self) -> dict[str, int]:
        response = self.get("/api/queues/length")
        assert response.status_code == 200, response.text
        return {queue["name"]: queue["messages"] for queue in response.json()["active_queues"]}

    def wait(self, what: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["embedded", "redis-url"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerStack]:
    root = tmp_path_factory.mktemp(f"flower-broker-{request.param}")
    redis_port, api_port, flower_port = free_port(), free_port(), free_port()
    # `conveyor redis`: the embedded Redis, locked with a generated password kept under its data directory.
    redis_env = base_env(root / "redis-data", CONVEYOR_REDIS_PORT=str(redis_port))
    redis_process = conveyor("redis", ["redis"], redis_env, root / "logs")
    wait_for_port(redis_port, 15, redis_process.popen)
    if request.param == "embedded":
        extra = {"CONVEYOR_REDIS_PORT": str(redis_port)}
        data_dir = root / "redis-data"
    else:
        password = read_secret(root / "redis-data" / "redis-password")
        assert password
        extra = {"CONVEYOR_REDIS_URL": f"redis://default:{password}@127.0.0.1:{redis_port}/0"}
        data_dir = root / "var"
    env = base_env(
        data_dir,
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_FLOWER_PORT=str(flower_port),
        CONVEYOR_FLOWER_PASSWORD=PASSWORD,
        **extra,
    )
    stack = BrokerStack(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}", env, root / "logs")
    stack.processes["redis"] = redis_process
    stack.headers = bearer(create_key(env, "tests"))
    stack.processes["api"] = conveyor("api", ["api"], env, stack.log_dir)
    stack.processes["flower"] = conveyor("flower", ["flower"], env, stack.log_dir)
    try:
        wait_until_healthy(stack.api, 60, list(stack.processes.values()))
        wait_for_port(flower_port, 30, stack.processes["flower"].popen)
        yield stack
    finally:
        for name, process in reversed(stack.processes.items()):
            process.stop()
            assert "Inspect method" not in process.output(), f"{name}:\n{process.output()[-3000:]}"


def submit_logs(stack: BrokerStack, count: int) -> list[str]:
    jobs = []
    with httpx.Client(base_url=stack.api, headers=stack.headers, timeout=10) as client:
        for n in range(count):
            response = client.post("/notifications", json={"channel": "log", "message": f"queued {n}"})
            assert response.status_code == 202, response.text
            jobs.append(response.json()["job_id"])
    return jobs


def test_queue_depths_show_on_the_broker_page_and_the_api(broker: BrokerStack) -> None:
    assert broker.depths() == {"uploads": 0, "notifications": 0, "housekeeping": 0}
    submit_logs(broker, 50)  # no worker consumes notifications: every message waits in the queue
    broker.wait(lambda: broker.depths()["notifications"] == 50)
    assert broker.depths() == {"uploads": 0, "notifications": 50, "housekeeping": 0}

    page = broker.get("/broker")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    rows = dict(re.findall(r'<tr id="([a-z]+)">\s*<td>\1</td>\s*<td[^>]*>(\d+)</td>', page.text))
    assert rows == {"uploads": "0", "notifications": "50", "housekeeping": "0"}, page.text[-3000:]
    assert "redis://" in page.text and "Transport" not in page.text
    password = re.search(r"redis://[^@\s<]*:([^@\s<]*)@", page.text)
    assert password is not None and password.group(1) == "**", "the Redis password must not be shown"

    # The gate stays in front of the replaced handlers.
    for path in ("/broker", "/api/queues/length"):
        assert httpx.get(f"{broker.flower}{path}", timeout=10).status_code == 401
        assert httpx.get(f"{broker.flower}{path}", auth=("conveyor", "wrong"), timeout=10).status_code == 401


def test_two_workers_of_one_queue_are_two_workers_with_their_own_counts(broker: BrokerStack) -> None:
    names: dict[str, str] = {}
    for n in (1, 2):
        process = conveyor(f"uploads-{n}", ["worker", "--queues", "uploads", "--concurrency", "1"], broker.env,
                           broker.log_dir)  # fmt: skip
        broker.processes[f"uploads-{n}"] = process
        names[f"uploads-{process.pid}"] = f"uploads-{n}"

    def listed() -> set[str]:
        return {name.split("@")[0] for name in broker.get("/api/workers").json()}  # never ?refresh=1

    broker.wait(lambda: set(names) <= listed())
    workers = broker.get("/api/workers").json()
    assert len([name for name in workers if name.startswith("uploads-")]) == 2
    assert all(info["stats"]["pid"] == int(name.split("@")[0].rsplit("-", 1)[1]) for name, info in workers.items())

    jobs = []
    with httpx.Client(base_url=broker.api, headers=broker.headers, timeout=30) as client:
        for n in range(12):
            response = client.post("/uploads", files={"file": (f"{n}.bin", b"x" * 2_000_000 + bytes([n]))})
            assert response.status_code == 202, response.text
            jobs.append(response.json()["job_id"])
    wait_finished(broker.api, jobs, headers=broker.headers)

    def counts() -> dict[str, int]:
        rows = broker.get("/workers", json=1).json()["data"]
        return {row["hostname"].split("@")[0]: row.get("task-succeeded", 0) for row in rows}

    broker.wait(lambda: sum(counts().get(name, 0) for name in names) == len(jobs))
    shown = counts()
    assert all(shown[name] >= 1 for name in names), shown  # each worker's own jobs, not merged under one name
    for name in names:
        tasks = broker.get("/api/tasks", workername=next(w for w in workers if w.startswith(name + "@"))).json()
        assert len(tasks) == shown[name]
