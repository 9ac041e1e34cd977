"""Events are never lost: a client resumes after a disconnect with exactly what it missed, over WebSocket and
SSE; and every api process delivers every event to its own clients."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.events_support import FINISHED, api_process, job_events_after, recv, sse, submit, wait_finished

pytestmark = pytest.mark.system


def _first_then_missed(stack: Stack) -> tuple[str, list[str], list[str]]:
    """Read one job's events live, disconnect, let 50 jobs complete; returns (last id seen, the 50 jobs,
    the ids of every job event published since, from the stream itself)."""
    with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
        first = submit(stack.base_url, headers=stack.headers)
        while True:
            event = recv(ws)
            if event["job_id"] == first and event["type"] in FINISHED:
                last_seen = event["event_id"]
                break
    missed = [submit(stack.base_url, f"missed {i}", headers=stack.headers) for i in range(50)]
    wait_finished(stack.base_url, missed, headers=stack.headers)
    return last_seen, missed, job_events_after(stack.redis_url, last_seen)


def _check_resumed(got: list[dict[str, object]], expected: list[str], missed: list[str], live: str) -> None:
    ids = [str(e["event_id"]) for e in got]
    assert len(ids) == len(set(ids)), "an event was repeated"
    assert ids[: len(expected)] == expected, "the missed events differ from what the stream holds"
    for job_id in missed:
        types = [e["type"] for e in got if e["job_id"] == job_id]
        assert types == ["job.queued", "job.started", "job.succeeded"], (job_id, types)
    live_types = [e["type"] for e in got[len(expected) :] if e["job_id"] == live]
    assert live_types == ["job.queued", "job.started", "job.succeeded"]


def _read_until(next_event: Callable[[], dict[str, object]], expected: list[str], live_job: Callable[[], str]) -> tuple[
    list[dict[str, object]], str
]:  # fmt: skip
    got: list[dict[str, object]] = []
    while len(got) < len(expected):
        got.append(next_event())
    live = live_job()
    while True:
        event = next_event()
        got.append(event)
        if event["job_id"] == live and event["type"] in FINISHED:
            return got, live


def test_websocket_resume_gets_exactly_the_missed_events_then_live_ones(stack: Stack) -> None:
    last_seen, missed, expected = _first_then_missed(stack)
    assert len(expected) >= 150
    with connect(
        f"{stack.ws_url}/ws?last_event_id={last_seen}", open_timeout=10, additional_headers=stack.headers
    ) as ws:
        got, live = _read_until(
            lambda: recv(ws), expected, lambda: submit(stack.base_url, "live", headers=stack.headers)
        )
    _check_resumed(got, expected, missed, live)


def test_sse_resume_with_last_event_id_gets_exactly_the_missed_events_then_live_ones(stack: Stack) -> None:
    last_seen, missed, expected = _first_then_missed(stack)
    with sse(stack.base_url, "/events", {**stack.headers, "Last-Event-ID": last_seen}) as reader:

        def next_event() -> dict[str, object]:
            event_id, data = reader.next_data()
            assert event_id == data["event_id"]
            return data

        got, live = _read_until(next_event, expected, lambda: submit(stack.base_url, "live", headers=stack.headers))
    _check_resumed(got, expected, missed, live)


def test_a_job_submitted_on_one_api_is_seen_by_a_client_of_another(stack: Stack) -> None:
    with api_process("api-2", stack.redis_url, stack.data_dir, stack.database_url) as other:
        other_ws = other.replace("http://", "ws://")
        with (
            connect(f"{other_ws}/ws", open_timeout=10, additional_headers=stack.headers) as ws,
            sse(other, "/events", stack.headers) as reader,
        ):
            job_id = submit(stack.base_url, "across processes", headers=stack.headers)
            types: list[str] = []
            while not types or types[-1] not in FINISHED:
                event = recv(ws)
                if event["job_id"] == job_id:
                    types.append(event["type"])
            assert types == ["job.queued", "job.started", "job.succeeded"]
            sse_types: list[object] = []
            while not sse_types or sse_types[-1] not in FINISHED:
                _, data = reader.next_data()
                if data["job_id"] == job_id:
                    sse_types.append(data["type"])
            assert sse_types == types
        job_id = submit(other, "submitted on the other one", headers=stack.headers)
        with connect(f"{stack.ws_url}/ws?job_id={job_id}", open_timeout=10, additional_headers=stack.headers) as ws:
            assert recv(ws)["type"] == "job.queued"
