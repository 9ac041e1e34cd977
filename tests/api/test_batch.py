"""``POST /notifications:batch`` against the real stack: all or nothing, in order, idempotent, events for each."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.events_support import FINISHED, recv

pytestmark = pytest.mark.system


def log(message: str) -> dict[str, str]:
    return {"channel": "log", "message": message}


def test_a_batch_is_recorded_in_order_and_every_job_runs(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    with stack.client() as client, connect(f"{stack.ws_url}/ws", additional_headers=stack.headers) as ws:
        ws.send(json.dumps({"op": "subscribe", "topic": "batch-warmup"}))
        assert recv(ws)["type"] == "subscribed"
        response = client.post("/notifications:batch", json={"notifications": [log(f"{tag}-{i}") for i in range(5)]})
        assert response.status_code == 202, response.text
        jobs = response.json()["jobs"]
        assert len(jobs) == 5 and all(job["status"] == "queued" for job in jobs)
        pending = {job["job_id"] for job in jobs}
        while pending:
            event = recv(ws)
            if event["type"] in FINISHED:
                assert event["type"] == "job.succeeded"
                pending.discard(event["job_id"])
        for i, job in enumerate(jobs):
            assert client.get(f"/jobs/{job['job_id']}").json()["request"]["message"] == f"{tag}-{i}"


def test_one_bad_item_refuses_the_whole_batch_naming_it(stack: Stack) -> None:
    with stack.client() as client:
        before = [job["job_id"] for job in client.get("/jobs", params={"limit": 1}).json()["jobs"]]
        bad = {"notifications": [log("fine"), {"channel": "log"}, log("also fine")]}
        response = client.post("/notifications:batch", json=bad)
        assert response.status_code == 422
        assert any(item["loc"][:3] == ["body", "notifications", 1] for item in response.json()["detail"])
        webhook = {"channel": "webhook", "url": "http://127.0.0.1:9/x", "secret": "whsec_" + "A" * 32}
        refused = client.post("/notifications:batch", json={"notifications": [log("fine"), webhook]})
        assert refused.status_code == 422 and refused.json()["detail"].startswith("notifications[1]:")
        after = [job["job_id"] for job in client.get("/jobs", params={"limit": 1}).json()["jobs"]]
        assert after == before  # nothing was recorded
        too_many = client.post("/notifications:batch", json={"notifications": [log("x")] * 101})
        assert too_many.status_code == 422
        assert client.post("/notifications:batch", json={"notifications": []}).status_code == 422


def test_one_idempotency_key_covers_the_batch(stack: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"notifications": [log("once-a"), log("once-b")]}
    with stack.client() as client:
        first = client.post("/notifications:batch", json=body, headers=key)
        again = client.post("/notifications:batch", json=body, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert [j["job_id"] for j in again.json()["jobs"]] == [j["job_id"] for j in first.json()["jobs"]]
        before = [job["job_id"] for job in client.get("/jobs", params={"limit": 1}).json()["jobs"]]
        for other in ([log("other")], [log("once-a"), log("once-b"), log("once-c")], [log("once-b"), log("once-a")]):
            response = client.post("/notifications:batch", json={"notifications": other}, headers=key)
            assert response.status_code == 422, other
        after = [job["job_id"] for job in client.get("/jobs", params={"limit": 1}).json()["jobs"]]
        assert after == before  # none of them recorded a job


def test_a_batch_needs_a_key(stack: Stack) -> None:
    response = httpx.post(f"{stack.base_url}/notifications:batch", json={"notifications": [log("x")]}, timeout=10)
    assert response.status_code == 401
