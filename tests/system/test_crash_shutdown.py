"""Stopping is not crashing: SIGTERM to a worker finishes what it holds and exits, and stopping ``conveyor run``
loses nothing that was queued (started again on the same ``var/``, the queued jobs complete)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conveyor import webhooks
from conveyor.names import QUEUE_NOTIFICATIONS
from conveyor.ops.redis_server import free_port
from tests.receivers import Reply, http_receiver
from tests.support import Process, base_env, bearer, conveyor, wait_until_healthy
from tests.system.faults import FaultStack, accepted_ids, submit_many

#: Longer than the global 120 s: 60 s to start, then up to 30 + 15 + 60 s (or more steps) of waiting.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]

SECRET = webhooks.new_secret()
HOOKS = {"CONVEYOR_WEBHOOK_SECRET": SECRET, "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true"}


def test_sigterm_to_a_worker_finishes_its_running_jobs_and_leaves_the_rest_queued(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, env=dict(HOOKS))
    with http_receiver() as receiver:
        url = receiver.script("/slow", Reply(200, hang=1.5))
        try:
            stack.start_redis()
            stack.start("api", ["api"])
            first = stack.worker("first", QUEUE_NOTIFICATIONS)
            stack.wait_ready(["first"])
            job_ids = accepted_ids(
                submit_many(stack.base_url, [{"channel": "webhook", "url": url}] * 6, headers=stack.headers)
            )
            stack.wait_for(lambda: stack.statuses(job_ids)["started"] == 2, 30, "two jobs running")

            first.popen.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            status = first.popen.wait(15)
            took = time.monotonic() - stopped
            print(f"worker stopped {took:.1f}s after SIGTERM, having finished its running jobs")
            assert status == 0, first.output()[-3000:]
            assert stack.statuses(job_ids) == Counter({"succeeded": 2, "queued": 4}), stack.output()

            stack.worker("second", QUEUE_NOTIFICATIONS)
            stack.wait_finished(job_ids, 60)
            assert all(row["crashes"] == 0 and row["attempts"] == 1 for row in stack.rows(job_ids))
        finally:
            stack.stop_all()
        by_id = Counter(request.headers["webhook-id"] for request in receiver.requests("/slow"))
    assert by_id == Counter({f"msg_{job_id}": 1 for job_id in job_ids})


def test_stopping_conveyor_run_loses_nothing_that_was_queued(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    ports = {name: str(free_port()) for name in ("API", "FLOWER", "REDIS")}
    env = base_env(
        data_dir,
        **{f"CONVEYOR_{name}_PORT": port for name, port in ports.items()},
        CONVEYOR_FLOWER_PASSWORD="flower-test-secret",
        CONVEYOR_HEARTBEAT_SECONDS="1",
        # Fewer threads than jobs, so that stopping finds some running and the rest still queued.
        CONVEYOR_NOTIFICATION_THREADS="4",
        **HOOKS,
    )
    base_url = f"http://127.0.0.1:{ports['API']}"
    stack = FaultStack(tmp_path / "reader")
    stack.data_dir = data_dir

    def run(name: str) -> Process:
        process = conveyor(name, ["run"], env, tmp_path / "logs")
        wait_until_healthy(base_url, 60, [process])
        return process

    def stop(process: Process) -> float:
        process.popen.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert process.popen.wait(15) == 0, process.output()[-3000:]
        return time.monotonic() - started

    with http_receiver() as receiver:
        url = receiver.script("/slow", Reply(200, hang=0.5))
        first = run("run-1")
        try:
            bodies = [{"channel": "webhook", "url": url, "data": {"n": n}} for n in range(20)]
            # ``conveyor run`` (development) made a key on its first start and keeps it in the data directory.
            headers = bearer((data_dir / "dev-api-key").read_text().strip())
            job_ids = accepted_ids(submit_many(base_url, bodies, threads=4, headers=headers))
            stack.wait_for(lambda: stack.statuses(job_ids)["succeeded"] >= 2, 30, "a few jobs done")
        finally:
            took = stop(first)
        left = stack.statuses(job_ids)
        print(f"conveyor run stopped in {took:.1f}s with {dict(left)}")
        assert left["queued"] > 0, "nothing was left queued: the test proves nothing"

        second = run("run-2")
        try:
            stack.wait_for(
                lambda: stack.statuses(job_ids)["succeeded"] == len(job_ids),
                60,
                f"every job done after the restart {dict(stack.statuses(job_ids))}\n{second.output()[-3000:]}",
            )
        finally:
            stop(second)
            stack.stop_all()
        by_id = Counter(request.headers["webhook-id"] for request in receiver.requests("/slow"))
    assert set(by_id) == {f"msg_{job_id}" for job_id in job_ids}
