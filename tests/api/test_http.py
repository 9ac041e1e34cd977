"""The HTTP contract, against a real api process with real workers behind it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Stack


@pytest.fixture
def client(stack: Stack) -> httpx.Client:
    with stack.client() as client:
        yield client  # type: ignore[misc]


def wait_finished(stack: Stack, job_id: str) -> dict[str, object]:
    with connect(f"{stack.ws_url}/ws?job_id={job_id}", open_timeout=10, additional_headers=stack.headers) as ws:
        while True:
            event = json.loads(ws.recv(timeout=30))
            if event["type"] in ("job.succeeded", "job.failed", "job.cancelled"):
                return event  # type: ignore[no-any-return]


def test_health(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["redis"] == "ok" and body["database"] == "ok"


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
def test_bad_notification_is_422_naming_the_problem(client: httpx.Client, body: dict[str, object]) -> None:
    response = client.post("/notifications", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail and all("loc" in item and "msg" in item for item in detail)


def test_not_json_is_422(client: httpx.Client) -> None:
    response = client.post("/notifications", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "detail" in response.json()


def test_unknown_job_is_404(client: httpx.Client) -> None:
    response = client.get("/jobs/01a207a2-fb69-7023-9247-baa030751cb3")
    assert response.status_code == 404
    assert "no job" in response.json()["detail"]


def test_list_filters_and_paginates(client: httpx.Client, stack: Stack) -> None:
    ids = [client.post("/notifications", json={"channel": "log", "message": str(i)}).json()["job_id"] for i in range(5)]
    for job_id in ids:
        wait_finished(stack, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"kind": "notification", "status": "succeeded", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [job["job_id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None or set(ids) <= set(seen):
            break
    newest_first = [job_id for job_id in seen if job_id in ids]
    assert newest_first == ids[::-1]
    assert client.get("/jobs", params={"cursor": "garbage!"}).status_code == 400
    assert client.get("/jobs", params={"status": "exploded"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    body = {"channel": "log", "message": "once"}
    key = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = client.post("/notifications", json=body, headers=key)
    second = client.post("/notifications", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    different = client.post("/notifications", json={"channel": "log", "message": "other"}, headers=key)
    assert different.status_code == 422
    assert "Idempotency-Key" in different.json()["detail"]


def test_cancel_finished_job_is_409_and_unknown_is_404(client: httpx.Client, stack: Stack) -> None:
    job_id = client.post("/notifications", json={"channel": "log", "message": "x"}).json()["job_id"]
    wait_finished(stack, job_id)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]
    assert client.delete("/jobs/01a207a2-fb69-7023-9247-baa030751cb3").status_code == 404


def test_websocket_resumes_after_last_event_id_without_gap_or_repeat(client: httpx.Client, stack: Stack) -> None:
    with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        first = client.post("/notifications", json={"channel": "log", "message": "a"}).json()["job_id"]
        seen = []
        while True:
            event = json.loads(ws.recv(timeout=30))
            seen.append(event)
            if event["job_id"] == first and event["type"] == "job.succeeded":
                break
    resume_from = seen[-1]["event_id"]
    missed = [
        client.post("/notifications", json={"channel": "log", "message": str(i)}).json()["job_id"] for i in range(5)
    ]
    for job_id in missed:
        wait_finished(stack, job_id)
    with connect(
        f"{stack.ws_url}/ws?last_event_id={resume_from}", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        got = []
        done: set[str] = set()
        while done != set(missed):
            event = json.loads(ws.recv(timeout=30))
            got.append(event)
            if event["type"] == "job.succeeded" and event["job_id"] in missed:
                done.add(event["job_id"])
    ids = [event["event_id"] for event in got]
    assert len(ids) == len(set(ids)), "an event was repeated"
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    mine = [(e["job_id"], e["type"]) for e in got if e["job_id"] in missed]
    for job_id in missed:
        assert [t for j, t in mine if j == job_id] == ["job.queued", "job.started", "job.succeeded"]


def test_websocket_bad_resume_id_or_unknown_job_closes_1008(stack: Stack) -> None:
    for query in ("last_event_id=yesterday", "job_id=01a207a2-fb69-7023-9247-baa030751cb3"):
        with connect(f"{stack.ws_url}/ws?{query}", open_timeout=10, additional_headers=stack.headers) as ws:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "error"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
