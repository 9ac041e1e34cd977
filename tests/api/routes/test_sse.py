"""``GET /events`` on the in-process api: Server-Sent Events with the same filters and resume rule as ``/ws``."""

from __future__ import annotations

import pytest

from tests.burst import BurstWorker
from tests.events_support import FINISHED, publish
from tests.inprocess import Api

pytestmark = pytest.mark.anyio


async def test_a_jobs_history_then_live_with_id_lines(api: Api, burst_worker: BurstWorker) -> None:
    response = await api.client.post("/notifications", json={"channel": "log", "message": "hello"})
    job_id = response.json()["job_id"]
    async with api.events(f"/events?job_id={job_id}") as reader:
        event_id, data = await reader.next_data()
        assert event_id == data["event_id"] and data["job_id"] == job_id and data["type"] == "job.queued"
        await burst_worker.drain_async()
        got = [data["type"]]
        while data["type"] not in FINISHED:
            event_id, data = await reader.next_data()
            assert event_id == data["event_id"] and data["job_id"] == job_id
            got.append(data["type"])
    assert got == ["job.queued", "job.started", "job.succeeded"]


async def test_last_event_id_header_wins_over_the_parameter(api: Api) -> None:
    redis_url = api.settings.effective_redis_url
    ids = publish(redis_url, 4, topic="sse-resume")
    async with api.events(f"/events?topic=sse-resume&last_event_id={ids[0]}", {"Last-Event-ID": ids[1]}) as reader:
        assert [(await reader.next_data())[0] for _ in ids[2:]] == ids[2:]
        live = publish(redis_url, 1, topic="sse-resume")
        event_id, data = await reader.next_data()
        assert event_id == live[0] and data["type"] == "topic.message"


@pytest.mark.parametrize(
    ("path", "headers", "status", "words"),
    [
        ("/events?last_event_id=yesterday", {}, 400, "not an event id"),
        ("/events", {"Last-Event-ID": "nope"}, 400, "not an event id"),
        ("/events?job_id=01a207a2-fb69-7023-9247-baa030751cb3", {}, 404, "no job"),
        ("/events?topic=" + "t" * 201, {}, 400, "topic"),
    ],
)
async def test_refusals_are_json(api: Api, path: str, headers: dict[str, str], status: int, words: str) -> None:
    response = await api.client.get(path, headers=headers)
    assert response.status_code == status
    assert words in response.json()["detail"]
