"""The job store (PostgreSQL) goes away mid-run and comes back: the api answers 503 meanwhile (never 500), workers
wait and carry on, and every job completes with its side effect once.

The outage is real: every process reaches PostgreSQL through a TCP proxy that the test cuts (the port refuses
connections and open connections are closed, as during a server restart) and restores. PostgreSQL is
``CONVEYOR_TEST_POSTGRES_URL``'s (tests/postgres.py: skipped only with no server listening, and never in CI).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from conveyor import webhooks
from conveyor.names import QUEUE_NOTIFICATIONS
from conveyor.store import db
from tests.receivers import Reply, http_receiver
from tests.system.faults import FaultStack, accepted_ids, submit_many
from tests.system.tcp_proxy import tcp_proxy

#: Longer than the global 120 s: 60 s to start, then up to 60 + 90 s of waiting, and the outage.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

JOBS = 40
OUTAGE_SECONDS = 5.0


def test_postgres_outage_is_503_at_the_api_and_loses_no_job(
    tmp_path: Path, postgres_schema: tuple[sa.URL, str]
) -> None:
    url, schema = postgres_schema
    options = {"options": f"-csearch_path={schema}"}
    secret = webhooks.new_secret()
    with tcp_proxy((url.host or "127.0.0.1", url.port or 5432)) as proxy, http_receiver() as receiver:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port, query=options)
        stack = FaultStack(
            tmp_path,
            env={
                "CONVEYOR_DATABASE_URL": through_proxy.render_as_string(hide_password=False),
                "CONVEYOR_WEBHOOK_SECRET": secret,
                "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true",
            },
            store_url=url.set(query=options).render_as_string(hide_password=False),
        )
        hook = receiver.script("/paid", Reply(200, hang=0.2))
        try:
            stack.start_redis()
            stack.start("api", ["api"])
            stack.worker("worker", QUEUE_NOTIFICATIONS)
            stack.worker("housekeeping", "housekeeping", concurrency=1)
            stack.start("beat", ["beat"])
            stack.wait_ready(["worker", "housekeeping"])

            bodies = [{"channel": "webhook", "url": hook, "data": {"n": n}} for n in range(JOBS)]
            job_ids = accepted_ids(submit_many(stack.base_url, bodies, threads=4, headers=stack.headers))
            stack.wait_for(lambda: stack.statuses(job_ids)["succeeded"] >= 8, 60, "a few jobs done")

            proxy.cut()
            cut_at = time.monotonic()
            with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=30) as client:
                answers = {
                    "health": client.get("/health"),
                    "submit": client.post("/notifications", json={"channel": "log", "message": "x"}),
                    "list": client.get("/jobs"),
                    "job": client.get(f"/jobs/{job_ids[0]}"),
                    "attempts": client.get(f"/jobs/{job_ids[0]}/attempts"),
                }
            for name, answer in answers.items():
                assert answer.status_code == 503, (name, answer.status_code, answer.text)
                assert answer.json()["detail"], name
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
            proxy.restore()
            print(f"job store down for {time.monotonic() - cut_at:.1f}s")

            took = stack.wait_finished(job_ids, 90)
            print(f"all {JOBS} jobs done {took:.1f}s after the job store came back")
            assert httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 200
            again = httpx.post(
                f"{stack.base_url}/notifications",
                json={"channel": "log", "message": "y"},
                headers=stack.headers,
                timeout=10,
            )
            assert again.status_code == 202, again.text
            with stack.engine.connect() as connection:
                effects = Counter(
                    connection.execute(
                        sa.select(db.effects.c.job_id).where(db.effects.c.effect == "notification.webhook")
                    ).scalars()
                )
        finally:
            stack.stop_all()
    assert effects == Counter(job_ids)
    by_id = Counter(request.headers["webhook-id"] for request in receiver.requests("/paid"))
    assert set(by_id) == {f"msg_{job_id}" for job_id in job_ids}
    assert max(by_id.values()) == 1, f"webhooks repeated: {[k for k, v in by_id.items() if v > 1]}"
