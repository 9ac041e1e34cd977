"""A worker killed mid-task: its jobs run again on the live worker within a minute, and each side effect happens
once. Default heartbeat settings, so the recovery time printed is the one a deployment gets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from conveyor import webhooks
from conveyor.store import db
from tests.receivers import Reply, http_receiver
from tests.system.faults import FaultStack, accepted_ids, finished_at, submit_many

#: Longer than the global 120 s: 60 s to start, then up to 60 + 90 s of waiting for jobs.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]

JOBS = 100
SECRET = webhooks.new_secret()


def test_sigkill_of_a_worker_mid_task_loses_nothing_and_repeats_no_effect(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, env={"CONVEYOR_WEBHOOK_SECRET": SECRET, "CONVEYOR_WEBHOOK_ALLOW_PRIVATE": "true"})
    with http_receiver() as receiver:
        url = receiver.script("/orders", Reply(200, hang=0.4))  # a slow receiver: each job takes about 0.4 s
        try:
            stack.start_redis()
            stack.start("api", ["api"])
            stack.worker("doomed", "notifications")
            stack.worker("survivor", "notifications")
            stack.worker("housekeeping", "housekeeping", concurrency=1)
            stack.start("beat", ["beat"])
            stack.wait_ready(["doomed", "survivor", "housekeeping"])

            bodies = [{"channel": "webhook", "url": url, "data": {"order": n}} for n in range(JOBS)]
            job_ids = accepted_ids(submit_many(stack.base_url, bodies, headers=stack.headers))
            stack.wait_for(lambda: stack.statuses(job_ids)["succeeded"] >= 20, 60, "20 jobs done")
            killed_at = stack.kill("doomed")
            stack.wait_finished(job_ids, 90)
            rows = stack.rows(job_ids)
        finally:
            stack.stop_all()
        received = receiver.requests("/orders")

    crashed = [row for row in rows if row["crashes"]]
    assert 1 <= len(crashed) <= 2, f"the kill should have caught the doomed worker mid-task: {len(crashed)} crashed"
    recovery = max(finished_at(row) for row in crashed) - killed_at
    print(f"worker SIGKILLed mid-task: {len(crashed)} job(s) taken over; all done {recovery:.1f}s after the kill")
    assert recovery < 60, f"recovery took {recovery:.1f}s"

    # Each side effect once: one recorded delivery per job, and receivers (which de-duplicate by webhook-id, the
    # same on every attempt) saw each job exactly once. A re-send happens only for a job whose worker died after the
    # receiver got the request and before the delivery was recorded.
    with stack.engine.connect() as connection:
        effects = Counter(
            connection.execute(sa.select(db.effects.c.job_id).where(db.effects.c.effect == "notification.webhook"))
            .scalars()
            .all()
        )
        delivered = Counter(
            connection.execute(
                sa.select(db.delivery_attempts.c.job_id).where(db.delivery_attempts.c.outcome == "delivered")
            )
            .scalars()
            .all()
        )
    assert effects == Counter(job_ids) and delivered == Counter(job_ids)
    by_id = Counter(request.headers["webhook-id"] for request in received)
    assert set(by_id) == {f"msg_{job_id}" for job_id in job_ids}, "a job's webhook never arrived"
    resent = {key for key, count in by_id.items() if count > 1}
    assert resent <= {f"msg_{row['id']}" for row in crashed}, f"a webhook was repeated without a crash: {resent}"
    print(f"lost=0 duplicated_effects=0 (receiver-side re-sends de-duplicated by webhook-id: {len(resent)})")
