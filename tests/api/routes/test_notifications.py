"""``POST /notifications`` and ``POST /notifications:batch`` on the in-process api: validation, idempotency, all or
nothing; the jobs run by the burst worker."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.burst import BurstWorker
from tests.events_support import FINISHED
from tests.inprocess import Api
from tests.support import bearer

pytestmark = pytest.mark.anyio


def log(message: str) -> dict[str, str]:
    return {"channel": "log", "message": message}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"channel": "carrier-pigeon", "message": "x"},
        {"channel": "log"},
        {"channel": "log", "message": ""},
        {"channel": "log", "message": "x", "surprise": 1},
        {"channel": "log", "message": "x" * 70_000},
    ],
)
async def test_bad_notification_is_422_naming_the_problem(api: Api, body: dict[str, object]) -> None:
    response = await api.client.post("/notifications", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail and all("loc" in item and "msg" in item for item in detail)


async def test_not_json_is_422(api: Api) -> None:
    response = await api.client.post(
        "/notifications", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_a_notification_is_accepted_queued_and_runs(api: Api, burst_worker: BurstWorker) -> None:
    response = await api.client.post("/notifications", json=log("hello"))
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert await burst_worker.drain_async() == [accepted["job_id"]]
    job = (await api.client.get(f"/jobs/{accepted['job_id']}")).json()
    assert job["status"] == "succeeded" and job["result"]["channel"] == "log" and job["attempts"] == 1


async def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    body = log("once")
    key = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = await api.client.post("/notifications", json=body, headers=key)
    second = await api.client.post("/notifications", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    different = await api.client.post("/notifications", json=log("other"), headers=key)
    assert different.status_code == 422
    assert "Idempotency-Key" in different.json()["detail"]


@pytest.mark.parametrize("path", ["/notifications", "/notifications:batch", "/uploads"])
async def test_an_idempotency_key_is_the_owners_own(api: Api, path: str) -> None:
    """The same ``Idempotency-Key`` from two owners makes two jobs: each owner's repeat replays its own job, and
    the other owner's use of the key neither replays nor conflicts with it."""
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}

    async def post(client: httpx.AsyncClient, text: str) -> httpx.Response:
        if path == "/uploads":
            return await client.post(path, files={"file": ("a.txt", text.encode(), "text/plain")}, headers=key)
        body = log(text) if path == "/notifications" else {"notifications": [log(text)]}
        return await client.post(path, json=body, headers=key)

    def job_ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 202, response.text
        data = response.json()
        return [job["job_id"] for job in data["jobs"]] if "jobs" in data else [data["job_id"]]

    def client(owner: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=api.app)
        return httpx.AsyncClient(transport=transport, base_url=api.client.base_url, headers=bearer(api.new_key(owner)))

    async with client("bob") as bob, client("carol") as carol:
        alices = await post(api.client, "same")
        bobs = await post(bob, "same")  # the same request: not alice's job replayed
        carols = await post(carol, "different")  # another request: not a conflict with alice's
        for response in (alices, bobs, carols):
            assert "idempotent-replayed" not in response.headers
        assert len({*job_ids(alices), *job_ids(bobs), *job_ids(carols)}) == 3 * len(job_ids(alices))
        for owner, first, text in ((api.client, alices, "same"), (bob, bobs, "same"), (carol, carols, "different")):
            again = await post(owner, text)
            assert again.headers["idempotent-replayed"] == "true" and job_ids(again) == job_ids(first)
        for job_id in job_ids(alices):
            assert (await bob.get(f"/jobs/{job_id}")).status_code == 404


async def test_a_batch_is_recorded_in_order_and_every_job_runs(api: Api, burst_worker: BurstWorker) -> None:
    tag = uuid.uuid4().hex
    async with api.websocket("/ws") as ws:
        await ws.send_text('{"op": "subscribe", "topic": "batch-warmup"}')
        assert (await ws.receive_json())["type"] == "subscribed"
        response = await api.client.post(
            "/notifications:batch", json={"notifications": [log(f"{tag}-{i}") for i in range(5)]}
        )
        assert response.status_code == 202, response.text
        jobs = response.json()["jobs"]
        assert len(jobs) == 5 and all(job["status"] == "queued" for job in jobs)
        assert await burst_worker.drain_async() == [job["job_id"] for job in jobs]
        pending = {job["job_id"] for job in jobs}
        while pending:
            event = await ws.receive_json()
            if event["type"] in FINISHED:
                assert event["type"] == "job.succeeded"
                pending.discard(event["job_id"])
    for i, job in enumerate(jobs):
        assert (await api.client.get(f"/jobs/{job['job_id']}")).json()["request"]["message"] == f"{tag}-{i}"


async def newest(api: Api) -> list[str]:
    return [job["job_id"] for job in (await api.client.get("/jobs", params={"limit": 1})).json()["jobs"]]


async def test_one_bad_item_refuses_the_whole_batch_naming_it(api: Api) -> None:
    await api.client.post("/notifications", json=log("before"))
    before = await newest(api)
    bad = {"notifications": [log("fine"), {"channel": "log"}, log("also fine")]}
    response = await api.client.post("/notifications:batch", json=bad)
    assert response.status_code == 422
    assert any(item["loc"][:3] == ["body", "notifications", 1] for item in response.json()["detail"])
    webhook = {"channel": "webhook", "url": "http://127.0.0.1:9/x", "secret": "whsec_" + "A" * 32}
    refused = await api.client.post("/notifications:batch", json={"notifications": [log("fine"), webhook]})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("notifications[1]:")
    assert await newest(api) == before  # nothing was recorded
    too_many = await api.client.post("/notifications:batch", json={"notifications": [log("x")] * 101})
    assert too_many.status_code == 422
    assert (await api.client.post("/notifications:batch", json={"notifications": []})).status_code == 422


async def test_one_idempotency_key_covers_the_batch(api: Api) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"notifications": [log("once-a"), log("once-b")]}
    first = await api.client.post("/notifications:batch", json=body, headers=key)
    again = await api.client.post("/notifications:batch", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert [j["job_id"] for j in again.json()["jobs"]] == [j["job_id"] for j in first.json()["jobs"]]
    before = await newest(api)
    for other in ([log("other")], [log("once-a"), log("once-b"), log("once-c")], [log("once-b"), log("once-a")]):
        response = await api.client.post("/notifications:batch", json={"notifications": other}, headers=key)
        assert response.status_code == 422, other
    assert await newest(api) == before  # none of them recorded a job


async def test_a_batch_needs_a_key(api: Api) -> None:
    async with api.anonymous() as anonymous:
        response = await anonymous.post("/notifications:batch", json={"notifications": [log("x")]})
    assert response.status_code == 401


async def test_an_integer_beyond_64_bits_in_a_message_is_422(api: Api) -> None:
    body = {"channel": "websocket", "topic": "t", "message": {"n": 2**64}}
    response = await api.client.post("/notifications", json=body)
    assert response.status_code == 422
