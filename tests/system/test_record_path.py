"""The record path under load: job-store transactions per job, and a worker killed while its group commit holds runs
or while a bundle of jobs waits for its commit.

Real processes (redis-server, ``conveyor api``, ``conveyor worker`` on its threads pool, beat), real HTTP clients,
a real webhook receiver; outcomes are read from the job store's SQLite file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from conveyor import webhooks
from conveyor.names import QUEUE_NOTIFICATIONS
from conveyor.ops.redis_server import free_port
from conveyor.store import db
from tests.system.faults import FaultStack, accepted_ids, submit_many

pytestmark = [pytest.mark.system, pytest.mark.slow]

SECRET = webhooks.new_secret()


def read_stats(path: Path) -> dict[str, dict[str, Any]]:
    """The job-store counts each process wrote at exit, by process name."""
    return {line["name"]: line for line in map(json.loads, path.read_text().splitlines())}


@pytest.mark.timeout(240)
def test_transactions_per_job_stay_within_budget_under_concurrent_load(tmp_path: Path) -> None:
    """200 ``log`` jobs from 32 concurrent clients: the api commits at most one transaction per job, the worker at
    most two per job (each run's claim, effect and outcome go in one; concurrent runs share commits)."""
    stats = tmp_path / "stats.jsonl"
    stack = FaultStack(tmp_path, env={"CONVEYOR_STATS_FILE": str(stats), "CONVEYOR_RATE_LIMIT_BURST": "10000"})
    jobs = 200
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        stack.start("worker", ["worker", "--queues", "notifications"])
        stack.wait_ready()
        bodies = [{"channel": "log", "message": f"job {n}"} for n in range(jobs)]
        job_ids = accepted_ids(submit_many(stack.base_url, bodies, threads=32, headers=stack.headers))
        stack.wait_finished(job_ids, 120)
        assert stack.statuses(job_ids) == Counter({"succeeded": jobs})
    finally:
        for name in ("api", "worker"):
            if name in stack.processes:
                stack.processes[name].stop()  # SIGTERM: each writes its counts at exit
        stack.stop_all()
    counts = read_stats(stats)
    api, worker = counts["api"], counts["worker"]
    print(
        f"{jobs} jobs: api {api['transactions']} transactions ({api['transactions'] / jobs:.2f}/job), "
        f"worker {worker['transactions']} ({worker['transactions'] / jobs:.2f}/job); write lock held "
        f"{1000 * (api['write_lock_held_s'] + worker['write_lock_held_s']) / jobs:.2f} ms/job, of which "
        f"{1000 * (api['write_lock_cpu_s'] + worker['write_lock_cpu_s']) / jobs:.2f} ms on CPU"
    )
    assert api["transactions"] <= jobs, api
    assert worker["transactions"] <= 2 * jobs, worker


class _GatedReceiver:
    """A webhook receiver that holds every request until ``gate`` is set, then answers 200; counts the requests it
    got and the answers it finished writing."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Condition()
        self.ids: list[str] = []
        self.answered = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.ids.append(self.headers["webhook-id"])
                    receiver.lock.notify_all()
                receiver.gate.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                self.wfile.flush()
                with receiver.lock:
                    receiver.answered += 1
                    receiver.lock.notify_all()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, what: str, done: Any, timeout: float = 60) -> None:
        with self.lock:
            if not self.lock.wait_for(done, timeout):
                raise AssertionError(f"{what}: not within {timeout}s (got {len(self.ids)}, answered {self.answered})")


@contextlib.contextmanager
def write_lock_held(data_dir: Path) -> Iterator[None]:
    """Hold the job store's write lock (the ``flock`` every writer of the SQLite file takes): no process can commit."""
    with (data_dir / "conveyor.db.write.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.mark.timeout(240)
def test_a_worker_killed_while_its_group_commit_holds_20_runs_repeats_no_effect(tmp_path: Path) -> None:
    """20 webhook runs have their receiver's answer but cannot commit (the test holds the write lock) when their
    worker is SIGKILLed: another worker takes each job over once its heartbeat is stale, and every job ends succeeded
    with its delivery recorded exactly once (the receiver sees each ``webhook-id`` at most twice: once before the
    kill, once after)."""
    receiver = _GatedReceiver()
    stack = FaultStack(
        tmp_path,
        env={
            "CONVEYOR_WEBHOOK_SECRET": SECRET,
            "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
            "CONVEYOR_HEARTBEAT_SECONDS": "1",
            "CONVEYOR_NOTIFICATION_THREADS": "20",
            "CONVEYOR_DISPATCH_INTERVAL_SECONDS": "1",
        },
    )
    jobs = 20
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        stack.start("doomed", ["worker", "--queues", "notifications"])
        stack.start("housekeeping", ["worker", "--queues", "housekeeping"])
        stack.start("beat", ["beat"])
        stack.wait_ready()
        bodies = [{"channel": "webhook", "url": receiver.url, "data": {"n": n}} for n in range(jobs)]
        job_ids = accepted_ids(submit_many(stack.base_url, bodies, headers=stack.headers))
        receiver.wait("every job claimed and sent", lambda: len(receiver.ids) >= jobs)
        with write_lock_held(stack.data_dir):
            receiver.gate.set()
            receiver.wait("every answer written", lambda: receiver.answered >= jobs)
            assert stack.statuses(job_ids) == Counter({"started": jobs}), "an outcome committed past the lock"
            killed_at = stack.kill("doomed")
        stack.start("survivor", ["worker", "--queues", "notifications"])
        stack.wait_finished(job_ids, 120)
        rows = stack.rows(job_ids)
    finally:
        stack.stop_all()
        receiver.server.shutdown()
        receiver.server.server_close()
    assert {row["status"] for row in rows} == {"succeeded"}
    assert all(row["crashes"] == 1 for row in rows), [row["crashes"] for row in rows]
    with stack.engine.connect() as connection:
        effects = Counter(
            connection.execute(sa.select(db.effects.c.job_id).where(db.effects.c.effect == "notification.webhook"))
            .scalars()
            .all()
        )
    assert effects == Counter(job_ids), "a delivery was recorded twice, or never"
    seen = Counter(receiver.ids)
    assert set(seen) == {f"msg_{job_id}" for job_id in job_ids} and max(seen.values()) <= 2, seen
    print(f"20 runs killed inside a held group commit: all done {time.time() - killed_at:.1f}s after the kill")


@pytest.mark.timeout(240)
def test_a_worker_killed_while_a_bundle_waits_for_its_commit_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """A batch of 20 ``log`` notifications travels as one bundle message. Its worker is SIGKILLed while the bundle's
    transaction waits for the write lock (the test holds it): nothing of it was written, the message comes back after
    the visibility timeout, another worker runs the bundle, and every job ends succeeded once, with one log entry and
    one delivery attempt."""
    stack = FaultStack(tmp_path, env={"CONVEYOR_VISIBILITY_TIMEOUT": "10"})
    jobs = 20
    bodies = [{"channel": "log", "message": f"job {n}"} for n in range(jobs)]
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        stack.wait_ready()
        answer = httpx.post(
            f"{stack.base_url}/notifications:batch", json={"notifications": bodies}, headers=stack.headers, timeout=30
        )
        assert answer.status_code == 202, answer.text
        job_ids = [str(job["job_id"]) for job in answer.json()["jobs"]]
        broker = redis.Redis.from_url(stack.redis_url)
        assert broker.llen(QUEUE_NOTIFICATIONS) == 1, "the batch should travel as one bundle message"
        with write_lock_held(stack.data_dir):
            stack.start("doomed", ["worker", "--queues", "notifications"])
            stack.wait_for(lambda: broker.hlen("unacked") == 1, 60, "the bundle taken by the doomed worker")
            time.sleep(1.0)  # the behaviour under test: the bundle's transaction is waiting for the lock
            assert stack.statuses(job_ids) == Counter({"queued": jobs})
            stack.kill("doomed")
        stack.start("survivor", ["worker", "--queues", "notifications"])
        stack.wait_finished(job_ids, 120)
        rows = stack.rows(job_ids)
    finally:
        stack.stop_all()
    assert {(row["status"], row["attempts"], row["crashes"]) for row in rows} == {("succeeded", 1, 0)}
    with stack.engine.connect() as connection:
        logged = Counter(connection.execute(sa.select(db.notification_log.c.job_id)).scalars().all())
        attempts = Counter(connection.execute(sa.select(db.delivery_attempts.c.job_id)).scalars().all())
    assert logged == Counter(job_ids) and attempts == Counter(job_ids)
