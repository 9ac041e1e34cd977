"""Secure by default, against real processes: keys, owners, WebSocket auth and tickets, origins, limits.

The session stack serves ``/ws`` natively; two more api processes on the same Redis and job store ("strict")
serve it natively and through the ASGI route, with tight limits, so that both WebSocket paths are checked and
the rate limit is seen to be shared between processes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.conftest import Stack
from tests.events_support import FINISHED, api_process, recv
from tests.support import bearer

pytestmark = pytest.mark.system

ORIGIN = "https://app.example"
STRICT = {
    "CONVEYOR_WS_TICKET_SECONDS": "1",
    "CONVEYOR_RATE_LIMIT_PER_SECOND": "0.5",
    "CONVEYOR_RATE_LIMIT_BURST": "6",
    "CONVEYOR_MAX_JSON_BYTES": "4096",
    "CONVEYOR_MAX_STREAMS_PER_KEY": "2",
    "CONVEYOR_REQUEST_TIMEOUT_SECONDS": "2",
    "CONVEYOR_ALLOWED_ORIGINS": ORIGIN,
    "CONVEYOR_SHARED_TOPICS": "news.*:editor",
}


@pytest.fixture(scope="module")
def strict(stack: Stack) -> Iterator[dict[str, str]]:
    """Base URLs of two strict api processes: ``native`` and ``asgi`` (``/ws`` through FastAPI)."""
    with ExitStack() as stacked:
        urls = {
            "native": stacked.enter_context(api_process("api-strict", stack.redis_url, stack.data_dir, **STRICT)),
            "asgi": stacked.enter_context(
                api_process("api-strict-asgi", stack.redis_url, stack.data_dir, CONVEYOR_WS_NATIVE="false", **STRICT)
            ),
        }
        yield urls


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


def closed_1008(ws: ClientConnection) -> str:
    """The error detail of a stream refused with 1008, checking that no event came before it."""
    message = recv(ws, 10)
    assert message["type"] == "error", f"an event came before the refusal: {message}"
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    detail: str = message["detail"]
    return detail


def submit_log(base_url: str, key: str, message: str = "hello") -> str:
    response = httpx.post(
        f"{base_url}/notifications", json={"channel": "log", "message": message}, headers=bearer(key), timeout=30
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def finished(base_url: str, key: str, job_id: str) -> dict[str, Any]:
    with connect(ws_url(base_url, f"job_id={job_id}"), additional_headers=bearer(key), open_timeout=10) as ws:
        while (event := recv(ws))["type"] not in FINISHED:
            pass
    return event


def concrete(path: str) -> str:
    return path.replace("{job_id}", "0190a0a0-0000-7000-8000-000000000000").replace("{upload_id}", "x")


# --- HTTP: every route needs a key


def test_every_route_but_the_public_ones_answers_401_without_a_key(stack: Stack) -> None:
    schema = httpx.get(f"{stack.base_url}/openapi.json", timeout=10)
    assert schema.status_code == 200
    public = {"/health"}
    checked = 0
    for path, operations in schema.json()["paths"].items():
        for method in operations:
            url = stack.base_url + concrete(path)
            for headers, error in (({}, None), (bearer("cvk_AAAAAAAAAAAA_" + "A" * 43), "invalid_token")):
                response = httpx.request(method, url, headers=headers, timeout=10)
                if path in public:
                    assert response.status_code == 200
                    continue
                assert response.status_code == 401, (method, path, response.text)
                assert response.json()["detail"]
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith('Bearer realm="conveyor"')
                assert (error is None) == ("error=" not in challenge)
                checked += 1
    assert checked >= 2 * 12
    for path in ("/nope", "/jobs/x/nope"):
        assert httpx.get(stack.base_url + path, timeout=10).status_code == 401
    assert httpx.get(f"{stack.base_url}/docs", timeout=10).status_code == 200
    assert httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 200


def test_a_revoked_key_stops_working(stack: Stack) -> None:
    key = stack.new_key("short-lived")
    assert httpx.get(f"{stack.base_url}/jobs", headers=bearer(key), timeout=10).status_code == 200
    key_id = key.split("_")[1]
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "conveyor", "keys", "revoke", key_id], env=stack.env, check=True)
    deadline = time.monotonic() + 15  # CONVEYOR_AUTH_CACHE_SECONDS (5 s) at most, plus slack
    while httpx.get(f"{stack.base_url}/jobs", headers=bearer(key), timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.25)
    assert httpx.get(f"{stack.base_url}/jobs", headers=bearer(key), timeout=10).status_code == 401


# --- owners


@pytest.fixture(scope="module")
def owners(stack: Stack) -> dict[str, Any]:
    """Alice's finished log job and stored upload, and keys for alice and bob."""
    alice, bob = stack.new_key("alice"), stack.new_key("bob")
    job_id = submit_log(stack.base_url, alice, "alice's secret")
    assert finished(stack.base_url, alice, job_id)["type"] == "job.succeeded"
    upload = httpx.post(
        f"{stack.base_url}/uploads",
        files={"file": ("private.txt", b"alice's file\n", "text/plain")},
        headers=bearer(alice),
        timeout=30,
    )
    assert upload.status_code == 202, upload.text
    upload_id = upload.json()["job_id"]
    assert finished(stack.base_url, alice, upload_id)["type"] == "job.succeeded"
    return {"alice": alice, "bob": bob, "job_id": job_id, "upload_id": upload_id}


def test_another_owners_jobs_and_uploads_are_404(stack: Stack, owners: dict[str, Any]) -> None:
    job_id, upload_id = owners["job_id"], owners["upload_id"]
    reads = [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/attempts"),
        ("GET", f"/uploads/{upload_id}"),
        ("GET", f"/uploads/{upload_id}/content"),
    ]
    writes = [("DELETE", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/retry")]
    with httpx.Client(base_url=stack.base_url, headers=bearer(owners["bob"]), timeout=10) as bob:
        for method, path in reads + writes:
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert "alice" not in response.text
        assert job_id not in bob.get("/jobs").text and upload_id not in bob.get("/uploads").text
        assert bob.get(f"/events?job_id={job_id}").status_code == 404
    with httpx.Client(base_url=stack.base_url, headers=bearer(owners["alice"]), timeout=10) as alice:
        for method, path in reads:
            assert alice.request(method, path).status_code == 200, path
        assert alice.get(f"/uploads/{upload_id}/content").content == b"alice's file\n"
        assert alice.delete(f"/jobs/{job_id}").status_code == 409  # hers, and already finished
        assert job_id in alice.get("/jobs").text and upload_id in alice.get("/uploads").text


def test_another_owners_job_cannot_be_followed(stack: Stack, owners: dict[str, Any]) -> None:
    headers = bearer(owners["bob"])
    with connect(ws_url(stack.base_url, f"job_id={owners['job_id']}"), additional_headers=headers) as ws:
        assert "no job" in closed_1008(ws)
    with connect(ws_url(stack.base_url), additional_headers=headers) as ws:
        ws.send(json.dumps({"op": "subscribe", "job_id": owners["job_id"]}))
        assert "no job" in closed_1008(ws)


def test_streams_carry_only_the_callers_events(stack: Stack, owners: dict[str, Any]) -> None:
    alice, bob = owners["alice"], owners["bob"]
    before = finished(stack.base_url, alice, owners["job_id"])["event_id"]
    with (
        connect(ws_url(stack.base_url), additional_headers=bearer(bob)) as bob_ws,
        connect(ws_url(stack.base_url, "topic=room"), additional_headers=bearer(bob)) as bob_room,
        connect(ws_url(stack.base_url, "topic=room"), additional_headers=bearer(alice)) as alice_room,
    ):
        time.sleep(0.3)
        alice_jobs = [submit_log(stack.base_url, alice, f"a{i}") for i in range(3)]
        for job_id in alice_jobs:
            finished(stack.base_url, alice, job_id)
        published = httpx.post(
            f"{stack.base_url}/notifications",
            json={"channel": "websocket", "topic": "room", "message": {"from": "alice"}},
            headers=bearer(alice),
            timeout=10,
        )
        assert published.status_code == 202
        assert recv(alice_room)["message"] == {"from": "alice"}
        bob_job = submit_log(stack.base_url, bob, "bob's")
        seen = []
        while (event := recv(bob_ws))["type"] not in FINISHED:
            seen.append(event)
        assert {e["job_id"] for e in [*seen, event]} == {bob_job}
        bob_room.send(json.dumps({"op": "subscribe", "topic": "other"}))
        assert recv(bob_room) == {"type": "subscribed", "topic": "other"}  # nothing of alice's came first
    # Resuming from before alice's jobs replays bob's events only.
    with connect(ws_url(stack.base_url, f"last_event_id={before}"), additional_headers=bearer(bob)) as ws:
        while (event := recv(ws))["type"] not in FINISHED:
            assert event["job_id"] == bob_job
        assert event["job_id"] == bob_job


def test_shared_topics_follow_the_policy(strict: dict[str, str], stack: Stack) -> None:
    editor, reader = stack.new_key("editor"), stack.new_key("reader")
    base = strict["native"]
    body = {"channel": "websocket", "topic": "news.today", "message": "extra"}
    refused = httpx.post(f"{base}/notifications", json=body, headers=bearer(reader), timeout=10)
    assert refused.status_code == 403 and "may not publish" in refused.json()["detail"]
    with connect(ws_url(base, "topic=news.today"), additional_headers=bearer(reader)) as ws:
        time.sleep(0.3)
        assert httpx.post(f"{base}/notifications", json=body, headers=bearer(editor), timeout=10).status_code == 202
        assert recv(ws)["message"] == "extra"


# --- WebSocket authentication: both /ws implementations


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_stream_without_valid_credentials_is_closed_1008(strict: dict[str, str], server: str) -> None:
    for headers in ({}, bearer("cvk_AAAAAAAAAAAA_" + "A" * 43), {"Authorization": "Basic eDp5"}):
        with connect(ws_url(strict[server]), additional_headers=headers) as ws:
            assert "key" in closed_1008(ws)
    with connect(ws_url(strict[server], "ticket=cvt_madeup"), open_timeout=10) as ws:
        assert "ticket" in closed_1008(ws)


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_ticket_works_once_and_not_after_it_expires(strict: dict[str, str], stack: Stack, server: str) -> None:
    key = stack.new_key(f"browser-{server}")
    base = strict[server]

    def ticket() -> str:
        response = httpx.post(f"{base}/ws-tickets", headers=bearer(key), timeout=10)
        assert response.status_code == 201 and response.json()["expires_in"] == 1
        value: str = response.json()["ticket"]
        return value

    first = ticket()
    with connect(ws_url(base, f"ticket={first}"), origin=Origin(ORIGIN)) as ws:
        time.sleep(0.2)
        job_id = submit_log(stack.base_url, key)
        while (event := recv(ws))["type"] not in FINISHED:
            assert event["job_id"] == job_id
    with connect(ws_url(base, f"ticket={first}"), origin=Origin(ORIGIN)) as ws:
        assert "already used" in closed_1008(ws)
    stale = ticket()
    time.sleep(1.5)
    with connect(ws_url(base, f"ticket={stale}"), origin=Origin(ORIGIN)) as ws:
        assert "expired" in closed_1008(ws)


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_foreign_origin_is_refused_at_the_handshake(strict: dict[str, str], stack: Stack, server: str) -> None:
    headers = bearer(stack.key)
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(strict[server]), additional_headers=headers, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    sse = httpx.get(f"{strict[server]}/events", headers={**headers, "Origin": "https://evil.example"}, timeout=10)
    assert sse.status_code == 403
    with connect(ws_url(strict[server]), additional_headers=headers, origin=Origin(ORIGIN)) as ws:
        ws.send(json.dumps({"op": "subscribe", "topic": "hello"}))
        assert recv(ws) == {"type": "subscribed", "topic": "hello"}


def test_sse_takes_a_ticket_once(strict: dict[str, str], stack: Stack) -> None:
    key = stack.new_key("sse-browser")
    base = strict["native"]
    ticket = httpx.post(f"{base}/ws-tickets", headers=bearer(key), timeout=10).json()["ticket"]
    with httpx.stream("GET", f"{base}/events", params={"ticket": ticket}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
    again = httpx.get(f"{base}/events", params={"ticket": ticket}, timeout=10)
    assert again.status_code == 401 and "already used" in again.json()["detail"]


# --- rate limits and other limits


def test_the_rate_limit_is_per_key_and_shared_by_api_processes(strict: dict[str, str], stack: Stack) -> None:
    key, other = stack.new_key("hasty"), stack.new_key("patient")
    statuses = []
    for i in range(8):
        base = strict["native"] if i % 2 else strict["asgi"]
        response = httpx.get(f"{base}/jobs", headers=bearer(key), timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert "rate limit" in response.json()["detail"]
    assert statuses[:6] == [200] * 6 and statuses[6:] == [429, 429]
    assert httpx.get(f"{strict['native']}/jobs", headers=bearer(other), timeout=10).status_code == 200
    time.sleep(2.1)  # 0.5 tokens/s: one request's worth
    assert httpx.get(f"{strict['native']}/jobs", headers=bearer(key), timeout=10).status_code == 200


def test_bodies_above_the_limit_are_413(strict: dict[str, str], stack: Stack) -> None:
    url, headers = f"{strict['native']}/notifications", bearer(stack.new_key("big"))
    body = {"channel": "log", "message": "x" * 5000}
    response = httpx.post(url, json=body, headers=headers, timeout=10)
    assert response.status_code == 413 and "4096" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:
        yield json.dumps(body).encode()

    chunked = httpx.post(url, content=chunks(), headers={**headers, "content-type": "application/json"}, timeout=10)
    assert chunked.status_code == 413


def test_streams_per_key_are_capped(strict: dict[str, str], stack: Stack) -> None:
    headers = bearer(stack.new_key("many-tabs"))
    base = strict["native"]
    with connect(ws_url(base), additional_headers=headers) as one, connect(ws_url(base), additional_headers=headers):
        one.send(json.dumps({"op": "subscribe", "topic": "t"}))
        assert recv(one)["type"] == "subscribed"
        with connect(ws_url(base), additional_headers=headers) as third:
            assert "limit" in recv(third)["detail"]
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert httpx.get(f"{base}/events", headers=headers, timeout=10).status_code == 503


def test_a_body_that_never_arrives_is_408(strict: dict[str, str], stack: Stack) -> None:
    host, port = strict["native"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {stack.new_key('slow')}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"channel": '
        )
        started = time.monotonic()
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert 1.5 < time.monotonic() - started < 8


def test_an_event_stream_outlives_the_request_timeout(strict: dict[str, str], stack: Stack) -> None:
    """The time limit is for requests and their bodies: an open SSE stream goes on past it (2 s here)."""
    key = stack.new_key("long-listener")
    with httpx.stream("GET", f"{strict['native']}/events", headers=bearer(key), timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        time.sleep(3)
        job_id = submit_log(stack.base_url, key, "after the timeout")
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "job.succeeded":
                assert json.loads(line[6:])["job_id"] == job_id
                break
