"""Scale out: two ``conveyor api`` processes, two notification workers and two upload workers share one PostgreSQL
job store and one Redis. Jobs submitted through either api all complete, each side effect once; a client following
events on one api sees every job, whichever api took it, and resumes on the other api without gap or repeat; a
worker SIGKILLed mid-run is taken over.

PostgreSQL is ``CONVEYOR_TEST_POSTGRES_URL``'s, in a schema of this test's own (tests/postgres.py: skipped only with
no server listening, and never in CI).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from websockets.sync.client import ClientConnection, connect

from conveyor import webhooks
from conveyor.names import QUEUE_HOUSEKEEPING, QUEUE_NOTIFICATIONS, QUEUE_UPLOADS
from conveyor.ops.redis_server import free_port
from conveyor.store import db
from tests.events_support import FINISHED, job_events_after, recv, stream_events, subscribed
from tests.postgres import schema_url
from tests.receivers import Reply, http_receiver
from tests.support import wait_until_healthy
from tests.system.faults import FaultStack, finished_at

#: Longer than the global 120 s: starting eight processes, 500 jobs on a loaded machine, a takeover (~20 s).
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(480)]

WEBHOOKS = 300
LOGS = 100
UPLOADS = 100
JOBS = WEBHOOKS + LOGS + UPLOADS
#: Events a client follows on api A before it disconnects and resumes on api B.
EVENTS_ON_A = 400
#: Seconds the webhook receiver takes to answer: the runs a kill must catch mid-flight.
HANG = 0.5


class Follower:
    """A WebSocket client of every job event of its key: first on api A, then, after a disconnect, resumed on api B
    from the last event it saw. Runs in a thread; :attr:`events` is everything received, in order."""

    def __init__(self, ws_a: str, ws_b: str, headers: dict[str, str], job_ids: set[str]) -> None:
        self.ws_a, self.ws_b, self.headers = ws_a, ws_b, headers
        self.job_ids = job_ids  # filled in by the test as submissions are accepted
        self.events: list[dict[str, Any]] = []
        self.on_a = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30), "the follower did not subscribe on api A"

    def _job_events(self, ws: ClientConnection, until: int | None) -> None:
        while until is None or len(self.events) < until:
            event = recv(ws, timeout=120)
            if event.get("job_id"):
                self.events.append(event)
            if until is None and self._all_finished():
                return

    def _all_finished(self) -> bool:
        finished = {e["job_id"] for e in self.events if e["type"] in FINISHED}
        return len(self.job_ids) == JOBS and self.job_ids <= finished

    def _run(self) -> None:
        try:
            with connect(f"{self.ws_a}/ws", open_timeout=30, additional_headers=self.headers) as ws:
                subscribed(ws)
                self.ready.set()
                self._job_events(ws, EVENTS_ON_A)
            self.on_a = len(self.events)
            last = self.events[-1]["event_id"]
            time.sleep(1.0)  # disconnected while jobs go on
            with connect(
                f"{self.ws_b}/ws?last_event_id={last}", open_timeout=30, additional_headers=self.headers
            ) as ws:
                self._job_events(ws, None)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
def pg_store(postgres_schema: tuple[sa.URL, str]) -> Iterator[str]:
    """The job store's URL in this test's own schema."""
    yield schema_url(*postgres_schema)


def _submit_all(bases: list[str], headers: dict[str, str], hook: str, accepted: set[str]) -> list[tuple[str, str, str]]:
    """Submit every job, round-robin between the apis (a few at a time); returns (job id, kind, api) in order."""

    def one(i: int, n: int) -> tuple[str, str, str]:
        base = bases[i % len(bases)]
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            if n < WEBHOOKS:
                kind, response = (
                    "webhook",
                    client.post("/notifications", json={"channel": "webhook", "url": hook, "data": {"n": n}}),
                )
            elif n < WEBHOOKS + LOGS:
                kind, response = "log", client.post("/notifications", json={"channel": "log", "message": f"m{n}"})
            else:
                content = f"file {n}\n".encode() * 100
                kind, response = "upload", client.post("/uploads", files={"file": (f"f{n}.txt", content)})
        assert response.status_code == 202, (base, response.status_code, response.text)
        job_id = str(response.json()["job_id"])
        accepted.add(job_id)
        return job_id, kind, base

    # Kinds interleaved over time; the api alternates from one submission to the next.
    order = [n for start in range(3) for n in range(start, JOBS, 3)]
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda item: one(*item), enumerate(order)))


def running_on(redis_url: str, worker: str, within: float) -> int:
    """Jobs whose latest event is a ``job.started`` naming a worker whose node name starts with ``worker``, published
    less than ``within`` seconds ago: its runs in flight that will still be in flight for a while (a webhook to the
    test's receiver takes ``HANG`` seconds)."""
    client = redis.Redis.from_url(redis_url)
    try:
        latest = {event.job_id: event for event in stream_events(client) if event.job_id}
    finally:
        client.close()
    since = time.time() - within
    return sum(
        1
        for e in latest.values()
        if e.type.value == "job.started" and (e.worker or "").startswith(worker) and e.ts >= since
    )


def test_two_apis_and_pairs_of_workers_on_postgres_run_every_job_once(tmp_path: Path, pg_store: str) -> None:
    port_b = free_port()
    stack = FaultStack(
        tmp_path,
        env={
            "CONVEYOR_DATABASE_URL": pg_store,
            "CONVEYOR_WEBHOOK_SECRET": webhooks.new_secret(),
            "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
            "CONVEYOR_RATE_LIMIT_PER_SECOND": "100000",
            "CONVEYOR_RATE_LIMIT_BURST": "100000",
            "CONVEYOR_NOTIFICATION_THREADS": "6",
        },
        store_url=pg_store,
    )
    base_b = f"http://127.0.0.1:{port_b}"
    with http_receiver() as receiver:
        hook = receiver.script("/hook", Reply(200, hang=HANG))  # a slow receiver: a kill catches runs mid-flight
        try:
            stack.start_redis()
            stack.start("api-a", ["api"])
            stack.start("api-b", ["api", "--port", str(port_b)])
            for name, queue in [
                ("notify-doomed", QUEUE_NOTIFICATIONS),
                ("notify-survivor", QUEUE_NOTIFICATIONS),
                ("uploads-1", QUEUE_UPLOADS),
                ("uploads-2", QUEUE_UPLOADS),
                ("housekeeping", QUEUE_HOUSEKEEPING),
            ]:
                stack.start(name, ["worker", "--queues", queue, "--hostname", f"{name}@%h"])
            stack.start("beat", ["beat"])
            stack.wait_ready(["notify-doomed", "notify-survivor", "uploads-1", "uploads-2", "housekeeping"], 90)
            wait_until_healthy(base_b, 60, list(stack.processes.values()))

            accepted: set[str] = set()
            follower = Follower(stack.ws_url, base_b.replace("http://", "ws://"), stack.headers, accepted)
            follower.start()
            started = time.monotonic()
            with ThreadPoolExecutor(1) as submitter:
                submitting = submitter.submit(_submit_all, [stack.base_url, base_b], stack.headers, hook, accepted)
                # Mid-way through the submissions, while the doomed worker has runs in flight that started a moment
                # ago (so that they are still in flight when the kill lands, a few tens of milliseconds later): kill it.
                stack.wait_for(
                    lambda: (
                        len(accepted) >= JOBS // 3
                        and running_on(stack.redis_url, "notify-doomed@", within=HANG / 2) >= 2
                    ),
                    120,
                    f"{JOBS // 3} jobs accepted and 2 runs just started on the doomed worker",
                )
                killed_at = stack.kill("notify-doomed")
                submitted = submitting.result()
            took_submit = time.monotonic() - started
            job_ids = [job_id for job_id, _, _ in submitted]
            assert len(set(job_ids)) == JOBS
            stack.wait_finished(job_ids, 180)
            took_all = time.monotonic() - started
            assert follower.done.wait(60), "the follower did not see every job finish"
            rows = stack.rows(job_ids)
            with stack.engine.connect() as connection:
                effects = Counter(
                    (effect, job_id)
                    for job_id, effect in connection.execute(sa.select(db.effects.c.job_id, db.effects.c.effect))
                )
                logged = Counter(connection.execute(sa.select(db.notification_log.c.job_id)).scalars())
            in_stream = job_events_after(stack.redis_url, "0-0", owner="tests")
        finally:
            stack.stop_all()
        received = receiver.requests("/hook")

    print(f"{JOBS} jobs submitted through 2 apis in {took_submit:.1f}s; all done after {took_all:.1f}s")
    kinds = {job_id: kind for job_id, kind, _ in submitted}

    # Each job once in effect: one effect row per job, of its kind; one log row per log job; one webhook per job at
    # the receiver (by webhook-id, the same on every attempt; a re-send only for a run the kill cut short).
    expected = Counter(
        ({"webhook": "notification.webhook", "log": "notification.log", "upload": "upload.stored"}[kind], job_id)
        for job_id, kind in kinds.items()
    )
    assert effects == expected, f"effects differ: {(effects - expected) + (expected - effects)}"
    assert logged == Counter(job_id for job_id, kind in kinds.items() if kind == "log")
    by_id = Counter(request.headers["webhook-id"] for request in received)
    assert set(by_id) == {f"msg_{job_id}" for job_id, kind in kinds.items() if kind == "webhook"}
    crashed = {row["id"] for row in rows if row["crashes"]}
    resent = {key for key, count in by_id.items() if count > 1}
    assert resent <= {f"msg_{job_id}" for job_id in crashed}, f"webhooks repeated without a crash: {resent}"

    # The kill caught the doomed worker mid-run, and its jobs were taken over.
    assert crashed, "the kill caught no run mid-flight"
    recovery = max(finished_at(row) for row in rows if row["id"] in crashed) - killed_at
    print(f"notification worker SIGKILLed: {len(crashed)} job(s) taken over, done {recovery:.1f}s after the kill")

    # The follower saw every job, whichever api took it, and on api B resumed with exactly what the stream holds
    # after its last event on api A: the sequence is the stream's, with no gap and no repeat. (It stops at the event
    # that finishes the last job; the stream may hold more after that: reap_stale announcing, a while after the
    # kill, outcomes of the killed worker it had not noted as published.)
    assert follower.error is None, repr(follower.error)
    got = [str(e["event_id"]) for e in follower.events]
    assert len(got) == len(set(got)), "an event was repeated"
    assert got == in_stream[: len(got)], "the events received differ from the stream's"
    assert 0 < follower.on_a < len(got)
    through_b = {job_id for job_id, _, base in submitted if base == base_b}
    assert len(through_b) == JOBS // 2
    assert through_b & {e["job_id"] for e in follower.events[: follower.on_a]}, "api A's client saw none of B's jobs"
    for job_id in job_ids:
        types = [e["type"] for e in follower.events if e["job_id"] == job_id]
        assert types[0] == "job.queued" and types[-1] == "job.succeeded", (job_id, types)
