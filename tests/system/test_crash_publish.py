"""A worker SIGKILLed after it committed a job's outcome and before that outcome's event reached Redis: the row stays
marked unannounced, so beat's ``reap_stale`` publishes the job's ``job.succeeded`` (with its result), and a client
following the job gets it. Without that, the job would be finished in the job store and never on the stream.

The moment is made, not hoped for: the worker reaches Redis through a TCP proxy (tests/system/tcp_proxy.py) that the
test holds once the webhook is being delivered, so nothing the worker sends from then on arrives. The test sees the
outcome committed in the job store, SIGKILLs the worker (``conveyor worker``, its threads pool), and cuts the proxy,
which drops the held publish. Everything else (api, housekeeping, beat) talks to Redis directly.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import connect

from conveyor import webhooks
from conveyor.names import QUEUE_HOUSEKEEPING, QUEUE_NOTIFICATIONS
from tests.events_support import FINISHED, recv, stream_events
from tests.receivers import Reply, http_receiver
from tests.system.faults import FaultStack
from tests.system.tcp_proxy import tcp_proxy

pytestmark = [pytest.mark.system, pytest.mark.slow]


def submit_webhook(stack: FaultStack, hook: str) -> str:
    """One webhook notification to ``hook`` through the stack's api; its job id."""
    response = httpx.post(
        f"{stack.base_url}/notifications",
        json={"channel": "webhook", "url": hook, "data": {"n": 1}},
        headers=stack.headers,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


@pytest.mark.timeout(240)
def test_an_outcome_whose_worker_died_before_publishing_it_is_announced_by_beat(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        hook = receiver.script("/slow", Reply(200, hang=1.0))
        stack = FaultStack(
            tmp_path,
            env={
                "CONVEYOR_WEBHOOK_SECRET": webhooks.new_secret(),
                "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
                "CONVEYOR_HEARTBEAT_SECONDS": "1",  # reap_stale every 2 s
                "CONVEYOR_ANNOUNCE_GRACE_SECONDS": "3",
            },
        )
        stack.start_redis()
        with tcp_proxy(("127.0.0.1", stack.redis_port)) as proxy:
            try:
                stack.start("api", ["api"])
                stack.start(
                    "worker",
                    ["worker", "--queues", QUEUE_NOTIFICATIONS, "--hostname", "doomed@%h"],
                    CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
                )
                stack.start("housekeeping", ["worker", "--queues", QUEUE_HOUSEKEEPING, "--hostname", "hk@%h"])
                stack.start("beat", ["beat"])
                stack.wait_ready(["doomed", "hk"], 90)
                job_id = submit_webhook(stack, hook)
                stack.wait_for(lambda: len(receiver.requests("/slow")) == 1, 60, "the webhook being delivered")
                proxy.hold()  # from now on, nothing the worker sends reaches Redis
                stack.wait_finished([job_id], 30)  # the outcome is committed; the worker waits on its publish
                time.sleep(0.5)
                stack.kill("worker")
                proxy.cut()  # the held publish is dropped
                client = redis.Redis.from_url(stack.redis_url)
                try:
                    types = [e.type.value for e in stream_events(client) if e.job_id == job_id]
                finally:
                    client.close()
                assert types == ["job.queued", "job.started"], f"the outcome's event got out after all: {types}"

                # A client following the job (its history replayed, then live) gets the outcome from beat.
                started = time.monotonic()
                with connect(f"{stack.ws_url}/ws?job_id={job_id}", additional_headers=stack.headers) as ws:
                    seen: list[dict[str, Any]] = []
                    while not seen or seen[-1]["type"] not in FINISHED:
                        seen.append(recv(ws, timeout=60))
                took = time.monotonic() - started
                housekeeping = stack.processes["housekeeping"]  # it logs once the event is out and the mark cleared
                stack.wait_for(lambda: "announced late" in housekeeping.output(), 30, "beat's late announcement logged")
            finally:
                stack.stop_all()
    print(f"the outcome was announced by beat {took:.1f}s after the worker was killed")
    assert [e["type"] for e in seen] == ["job.queued", "job.started", "job.succeeded"], seen
    assert seen[-1]["status"] == "succeeded" and seen[-1]["result"]["status_code"] == 200, seen[-1]


@pytest.mark.timeout(120)
def test_a_worker_stopped_cleanly_notes_the_outcomes_it_announced(tmp_path: Path) -> None:
    """SIGTERM while a webhook is in flight: the warm shutdown lets the run finish and publish its outcome, and the
    worker notes it before it exits (``worker_shutdown``), instead of leaving it to be announced again by beat."""
    with http_receiver() as receiver:
        hook = receiver.script("/slow", Reply(200, hang=0.5))
        stack = FaultStack(
            tmp_path, env={"CONVEYOR_WEBHOOK_SECRET": webhooks.new_secret(), "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true"}
        )
        stack.start_redis()
        try:
            stack.start("api", ["api"])
            stack.start("worker", ["worker", "--queues", QUEUE_NOTIFICATIONS, "--hostname", "stopping@%h"])
            stack.wait_ready(["stopping"], 90)
            job_id = submit_webhook(stack, hook)
            stack.wait_for(lambda: len(receiver.requests("/slow")) == 1, 60, "the webhook being delivered")
            stack.kill("worker", signal.SIGTERM)  # returns once the worker exited
            (row,) = stack.rows([job_id])
        finally:
            stack.stop_all()
    assert row["status"] == "succeeded", row
    assert row["unannounced_since"] is None, "the worker exited without noting the outcome it published"
