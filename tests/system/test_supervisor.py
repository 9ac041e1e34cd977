"""``conveyor run`` is never down for one broken part: it restarts what dies (the embedded Redis, a worker's main
process; Celery replaces a pool process itself), refuses to start on a port in use, gives up on a part that keeps
crashing, and prints its ready banner only once ``/health`` answers 200. Real processes throughout."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa

from conveyor import webhooks
from conveyor.store import db
from conveyor.store.db import create_engine
from tests.receivers import Reply, http_receiver
from tests.support import Process, base_env, bearer, conveyor, processes_with_env, run_env, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.slow]

SECRET = webhooks.new_secret()
JOBS_PER_KILL = 200
#: How soon after each kill /health must answer 200 again.
RECOVERY_SECONDS = 15


def wait_for(condition: Callable[[], bool], timeout: float, what: str, run: Process) -> float:
    """Poll ``condition`` until it holds; returns the seconds waited, or fails with the run's output."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s\n{run.output()[-6000:]}")
        time.sleep(0.1)
    return time.monotonic() - started


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def part(run: Process, *words: str) -> psutil.Process:
    """The child of ``conveyor run`` whose command line holds every one of ``words``."""
    for child in psutil.Process(run.pid).children():
        command = " ".join(child.cmdline())
        if all(word in command for word in words):
            return child
    raise AssertionError(f"no child of conveyor run runs {words}")


def stop_run(run: Process, data_dir: Path) -> int:
    """Ctrl-C to ``conveyor run``; returns its status once it and everything it started are gone."""
    run.popen.send_signal(signal.SIGINT)
    status = run.popen.wait(15)
    marker = f"CONVEYOR_DATA_DIR={data_dir}"
    deadline = time.monotonic() + 5
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env(marker) == [], run.output()[-3000:]
    return status


@pytest.mark.timeout(420)
def test_kills_of_redis_a_worker_and_a_pool_process_under_load_cost_no_job(tmp_path: Path) -> None:
    """Acceptance: under ``conveyor run``, SIGKILL the embedded Redis, then the notifications worker's process, then
    an uploads pool process, each while 200 webhook jobs are in flight. The stack never exits, ``/health`` is 200
    again within 15 s of each kill, every accepted job succeeds, and no webhook is sent more than twice."""
    data_dir = tmp_path / "var"
    env, api_port, _flower = run_env(
        data_dir,
        CONVEYOR_FLOWER_PASSWORD="flower-test-secret",
        CONVEYOR_WEBHOOK_SECRET=SECRET,
        CONVEYOR_WEBHOOK_ALLOW_PRIVATE="true",
        CONVEYOR_RATE_LIMIT_BURST="5000",
    )
    base_url = f"http://127.0.0.1:{api_port}"
    kills: list[tuple[str, int, float]] = []
    job_ids: list[str] = []
    with http_receiver() as receiver:
        run = conveyor("run", ["run"], env, tmp_path / "logs")
        try:
            wait_until_healthy(base_url, 120, [run])
            client = httpx.Client(base_url=base_url, timeout=60)
            client.headers.update(bearer((data_dir / "dev-api-key").read_text().strip()))
            victims: list[tuple[str, Callable[[], psutil.Process]]] = [
                ("redis", lambda: part(run, "redis-server")),
                ("worker-notifications", lambda: part(run, "worker", "notifications")),
                ("uploads pool process", lambda: part(run, "worker", "uploads").children()[0]),
            ]
            for phase, (name, victim) in enumerate(victims):
                path = f"/phase{phase}"
                url = receiver.script(path, Reply(200, hang=0.1))  # each delivery takes 0.1 s: 200 take seconds
                for first in range(0, JOBS_PER_KILL, 100):
                    bodies = [{"channel": "webhook", "url": url, "data": {"n": first + n}} for n in range(100)]
                    answer = client.post("/notifications:batch", json={"notifications": bodies})
                    assert answer.status_code == 202, answer.text
                    job_ids += [job["job_id"] for job in answer.json()["jobs"]]
                if name.startswith("uploads"):
                    for n in range(5):
                        answer = client.post("/uploads", files={"file": (f"f{n}.bin", os.urandom(1 << 20))})
                        assert answer.status_code == 202, answer.text
                        job_ids.append(answer.json()["job_id"])
                wait_for(lambda p=path: len(receiver.requests(p)) >= 10, 60, f"deliveries of {path} begin", run)  # type: ignore[misc]
                target = victim()
                target.kill()
                killed_at = time.monotonic()
                kills.append((name, target.pid, killed_at))
                back = wait_for(lambda: healthy(base_url), RECOVERY_SECONDS + 30, f"/health after killing {name}", run)
                print(f"killed {name} (pid {target.pid}): /health 200 again {back:.1f}s after the kill")
                assert back <= RECOVERY_SECONDS, f"/health took {back:.1f}s to answer 200 after killing {name}"
                assert run.alive(), run.output()[-6000:]

            engine = create_engine(f"sqlite:///{data_dir / 'conveyor.db'}")
            try:

                def statuses() -> Counter[str]:
                    query = sa.select(db.jobs.c.status).where(db.jobs.c.id.in_(job_ids))
                    with engine.connect() as connection:
                        return Counter(connection.execute(query).scalars().all())

                took = wait_for(lambda: statuses()["succeeded"] == len(job_ids), 240, "every job succeeds", run)
                print(f"all {len(job_ids)} jobs succeeded {took:.1f}s after the last kill: {dict(statuses())}")
            finally:
                engine.dispose()
            assert run.alive(), run.output()[-6000:]
            client.close()
        finally:
            status = stop_run(run, data_dir)
        received = [request for request in receiver.received if request.path.startswith("/phase")]

    output = run.output()
    assert status == 0, output[-3000:]
    assert "redis exited (killed by SIGKILL)" in output and "worker-notifications exited (killed by SIGKILL)" in output
    assert "giving up" not in output
    sends = Counter(request.headers["webhook-id"] for request in received)
    assert len(sends) == JOBS_PER_KILL * len(kills), f"{len(sends)} distinct webhooks received"
    print(f"webhooks sent twice: {sum(1 for count in sends.values() if count == 2)}")
    assert max(sends.values()) <= 2, sends.most_common(3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("busy", ["api", "flower", "redis"])
def test_a_port_in_use_is_named_in_one_line_before_anything_starts(tmp_path: Path, busy: str) -> None:
    data_dir = tmp_path / "var"
    env, _api, _flower = run_env(data_dir, CONVEYOR_FLOWER_PASSWORD="x" * 12)
    variable = f"CONVEYOR_{busy.upper()}_PORT"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = conveyor("run", ["run"], {**env, variable: str(port)}, tmp_path / "logs")
        status = run.popen.wait(45)
    output = run.output()
    assert status == 1, output
    lines = [line for line in output.splitlines() if "in use" in line]
    assert len(lines) == 1 and str(port) in lines[0] and variable in lines[0], output
    assert "Traceback" not in output, output
    assert not data_dir.exists(), "something started before the ports were checked"


@pytest.mark.timeout(120)
def test_a_part_that_keeps_crashing_is_given_up_on_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    # A Flower user with ':' cannot be used for basic auth: Flower exits at once, every time.
    env, _api, _flower = run_env(data_dir, CONVEYOR_FLOWER_PASSWORD="x" * 12, CONVEYOR_FLOWER_USER="bad:user")
    run = conveyor("run", ["run"], env, tmp_path / "logs")
    try:
        status = run.popen.wait(100)
    finally:
        run.stop()
    output = run.output()
    assert status == 1, output[-3000:]
    lines = [line for line in output.splitlines() if "giving up" in line]
    assert len(lines) == 1 and "giving up on flower" in lines[0], output[-3000:]
    assert output.count("flower exited") == 4, output[-3000:]  # four restarts, then the fifth crash ends it
    assert processes_with_env(f"CONVEYOR_DATA_DIR={data_dir}") == []


@pytest.mark.timeout(120)
def test_the_ready_banner_comes_once_the_api_answers(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env, api_port, _flower = run_env(data_dir, CONVEYOR_FLOWER_PASSWORD="x" * 12)
    run = conveyor("run", ["run"], env, tmp_path / "logs")
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 90
        while "ready in" not in run.output():
            assert run.alive() and time.monotonic() < deadline, run.output()[-3000:]
            time.sleep(0.02)
        # Right after the banner: the api answers, healthy, and takes work.
        health = httpx.get(f"{base_url}/health", timeout=5)
        headers = bearer((data_dir / "dev-api-key").read_text().strip())
        submitted = httpx.post(
            f"{base_url}/notifications", json={"channel": "log", "message": "hi"}, headers=headers, timeout=10
        )
        assert health.status_code == 200, health.text
        assert submitted.status_code == 202, submitted.text
        banner = [line for line in run.output().splitlines() if line.startswith("conveyor ")]
        assert any(f"api     http://127.0.0.1:{api_port}" in line for line in banner), banner
    finally:
        assert stop_run(run, data_dir) == 0


@pytest.mark.timeout(60)
def test_an_api_whose_port_is_taken_exits_so_it_can_be_restarted(tmp_path: Path, redis_url: str) -> None:
    """uvicorn runs the app's lifespan, fails to bind, and shuts the lifespan down: that must end (it used to hang
    in "Waiting for application shutdown", a stack with no api that never exited and was never restarted)."""
    env = base_env(tmp_path / "var", CONVEYOR_REDIS_URL=redis_url)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        api = conveyor("api", ["api", "--port", str(port)], env, tmp_path / "logs")
        try:
            status = api.popen.wait(30)
        finally:
            api.stop()
    assert status != 0 and "address already in use" in api.output(), api.output()[-3000:]
