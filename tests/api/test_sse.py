"""``GET /events``: Server-Sent Events with the same filters and resume rule as ``/ws``."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Stack
from tests.events_support import FINISHED, publish, sse, submit


def test_a_jobs_history_then_live_with_id_lines(stack: Stack) -> None:
    job_id = submit(stack.base_url, headers=stack.headers)
    with sse(stack.base_url, f"/events?job_id={job_id}", stack.headers) as reader:
        got = []
        while True:
            event_id, data = reader.next_data()
            assert event_id == data["event_id"] and data["job_id"] == job_id
            got.append(data["type"])
            if data["type"] in FINISHED:
                break
    assert got == ["job.queued", "job.started", "job.succeeded"]


def test_last_event_id_header_wins_over_the_parameter(stack: Stack) -> None:
    ids = publish(stack.redis_url, 4, topic="sse-resume")
    headers = {**stack.headers, "Last-Event-ID": ids[1]}
    with sse(stack.base_url, f"/events?topic=sse-resume&last_event_id={ids[0]}", headers) as reader:
        assert [reader.next_data()[0] for _ in ids[2:]] == ids[2:]
        live = publish(stack.redis_url, 1, topic="sse-resume")
        event_id, data = reader.next_data()
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
def test_refusals_are_json(stack: Stack, path: str, headers: dict[str, str], status: int, words: str) -> None:
    response = httpx.get(f"{stack.base_url}{path}", headers={**stack.headers, **headers}, timeout=10)
    assert response.status_code == status
    assert words in response.json()["detail"]
