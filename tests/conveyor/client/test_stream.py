"""``EventReader``: SSE parsed into events, resumed after a dropped connection from the last id, each event once."""

from __future__ import annotations

import httpx
import pytest

from conveyor.client.http import Api, ApiError
from conveyor.client.stream import EventReader


def _api(handler: httpx.MockTransport) -> Api:
    api = Api("http://api.test", "cvk_test")
    api.http = httpx.Client(transport=handler, base_url="http://api.test", headers={"Authorization": "Bearer k"})
    return api


def test_events_are_parsed_and_a_dropped_stream_resumes_after_the_last_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conveyor.client.stream.time.sleep", lambda _seconds: None)
    asked: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params)
        if len(asked) == 1:
            body = (
                b"retry: 1000\n\n: keep-alive\n\n"
                b'id: 1-0\ndata: {"type":"job.queued","job_id":"j","status":"queued"}\n\n'
                b'id: 2-0\ndata: {"type":"job.started",\ndata: "job_id":"j","status":"started"}\n\n'
                b'data: {"type":"resync","after":"0-1"}\n\n'
            )
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        if len(asked) == 2:
            raise httpx.ReadError("connection reset")
        body = b'id: 3-0\ndata: {"type":"job.succeeded","job_id":"j","status":"succeeded"}\n\n'
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    reasons: list[str] = []
    reader = EventReader(_api(httpx.MockTransport(handler)), ["j"], reasons.append)
    events = []
    for event in reader:
        events.append(event)
        if event["type"] == "job.succeeded":
            break
    assert [event["type"] for event in events] == ["job.queued", "job.started", "resync", "job.succeeded"]
    assert asked[0].get_list("job_id") == ["j"] and "last_event_id" not in asked[0]
    assert asked[1]["last_event_id"] == "2-0" and asked[2]["last_event_id"] == "2-0"  # a resync moves no id
    assert reasons == ["the api closed the stream", "connection lost (ReadError)"]


def test_a_refusal_other_than_a_restart_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("conveyor.client.stream.time.sleep", lambda _seconds: None)
    answers = iter(
        [httpx.Response(503, json={"detail": "restarting"}), httpx.Response(404, json={"detail": "no job j"})]
    )
    reader = EventReader(_api(httpx.MockTransport(lambda _request: next(answers))), ["j"])
    with pytest.raises(ApiError) as refused:
        list(reader)
    assert (refused.value.status, str(refused.value)) == (404, "HTTP 404: no job j")
