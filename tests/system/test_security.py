"""Secure by default, against real processes: keys, owners, WebSocket auth and tickets, origins, limits.

The session stack serves ``/ws`` natively; two more api processes on the same Redis and job store ("strict")
serve it natively and through the ASGI route, with tight limits, so that both WebSocket paths are checked and
the rate limit is seen to be shared between processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.conftest import Stack
from tests.events_support import FINISHED, api_process, publish, recv, sse, subscribed, wait_finished
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
    "CONVEYOR_SHARED_TOPICS": "news.*:editor,staff.*:editor:editor",
}


@pytest.fixture(scope="module")
def strict(stack: Stack) -> Iterator[dict[str, str]]:
    """Base URLs of two strict api processes: ``native`` and ``asgi`` (``/ws`` through FastAPI)."""
    with ExitStack() as stacked:
        urls = {
            "native": stacked.enter_context(
                api_process("api-strict", stack.redis_url, stack.data_dir, stack.database_url, **STRICT)
            ),
            "asgi": stacked.enter_context(
                api_process(
                    "api-strict-asgi",
                    stack.redis_url,
                    stack.data_dir,
                    stack.database_url,
                    CONVEYOR_WS_NATIVE="false",
                    **STRICT,
                )
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
    #: Authorised by the room's join token, not a key: without one, 401 too (a wrong token is a 404).
    room_token_only = {"/rooms/{room_id}/events"}
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
                if path in room_token_only:
                    assert "token" in response.json()["detail"]
                    continue
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


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_another_owners_job_cannot_be_followed(
    strict: dict[str, str], stack: Stack, owners: dict[str, Any], server: str
) -> None:
    headers = bearer(owners["bob"])
    with connect(ws_url(strict[server], f"job_id={owners['job_id']}"), additional_headers=headers) as ws:
        assert "no job" in closed_1008(ws)
    with connect(ws_url(strict[server]), additional_headers=headers) as ws:
        ws.send(json.dumps({"op": "subscribe", "job_id": owners["job_id"]}))
        assert "no job" in closed_1008(ws)
    assert (
        httpx.get(f"{strict[server]}/events?job_id={owners['job_id']}", headers=headers, timeout=10).status_code == 404
    )


#: The three stream implementations: Conveyor's native ``/ws``, the ASGI ``/ws`` route, SSE ``/events``.
STREAMS = ["native", "asgi", "sse"]


@contextlib.contextmanager
def stream(strict: dict[str, str], kind: str, key: str, query: str = "") -> Iterator[Callable[[], dict[str, Any]]]:
    """An open event stream of ``kind`` on a strict api, subscribed to the hub when this returns (a WebSocket's
    ``subscribe`` command is acknowledged; SSE answers its headers once subscribed); yields "the next message"."""
    if kind == "sse":
        path = "/events" + (f"?{query}" if query else "")
        with sse(strict["native"], path, headers=bearer(key)) as reader:
            yield lambda: reader.next_data()[1]
        return
    with connect(ws_url(strict[kind], query), additional_headers=bearer(key), open_timeout=10) as ws:
        early = subscribed(ws)  # a resumed stream's backlog comes before the acknowledgement
        yield lambda: early.pop(0) if early else recv(ws)


def last_event_id(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        newest: Any = client.xrevrange("conveyor:events", count=1)
        return str(newest[0][0].decode()) if newest else "0-0"
    finally:
        client.close()


@pytest.mark.parametrize("kind", STREAMS)
def test_an_unfiltered_stream_carries_only_the_callers_job_events(
    strict: dict[str, str], stack: Stack, kind: str
) -> None:
    """Bob's stream without filters, live and resumed, gets none of alice's job events: the first event it
    receives is bob's own, published after hers. Alice's stream gets hers (the events do flow)."""
    alice, bob = f"alice-{kind}", f"bob-{kind}"
    alice_key, bob_key = stack.new_key(alice), stack.new_key(bob)
    before = last_event_id(stack.redis_url)
    with stream(strict, kind, bob_key) as bob_next, stream(strict, kind, alice_key) as alice_next:
        real = submit_log(stack.base_url, alice_key, "alice's secret")
        wait_finished(stack.base_url, [real], headers=bearer(alice_key))
        made_up = publish(stack.redis_url, 3, job=f"{alice}-job-", owner=alice)
        mine = publish(stack.redis_url, 1, job=f"{bob}-job-", owner=bob)
        first = bob_next()
        assert (first["event_id"], first["job_id"]) == (mine[0], f"{bob}-job-0"), first
        got: list[dict[str, Any]] = []
        while len(got) < 3 + len(made_up):
            got.append(alice_next())
        assert [e["job_id"] for e in got[:3]] == [real] * 3 and [e["event_id"] for e in got[3:]] == made_up
    with stream(strict, kind, bob_key, f"last_event_id={before}") as resumed:
        first = resumed()
        assert first["event_id"] == mine[0], first


@pytest.mark.parametrize("kind", STREAMS)
def test_topics_are_private_to_their_owner(strict: dict[str, str], stack: Stack, kind: str) -> None:
    """Alice's topic ``room`` and bob's are two topics: bob's listener gets his own message, not hers before it."""
    alice, bob = f"alice-{kind}", f"bob-{kind}"
    alice_key, bob_key = stack.new_key(alice), stack.new_key(bob)
    with stream(strict, kind, bob_key, "topic=room") as bob_next, stream(strict, kind, alice_key, "topic=room") as her:
        published = httpx.post(
            f"{stack.base_url}/notifications",
            json={"channel": "websocket", "topic": "room", "message": {"from": "alice"}},
            headers=bearer(alice_key),
            timeout=10,
        )
        assert published.status_code == 202, published.text
        assert her()["message"] == {"from": "alice"}
        hers = publish(stack.redis_url, 1, topic="room", owner=alice)
        assert her()["event_id"] == hers[0]
        his = publish(stack.redis_url, 1, topic="room", owner=bob)
        assert bob_next()["event_id"] == his[0]


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_shared_topics_follow_the_policy(strict: dict[str, str], stack: Stack, server: str) -> None:
    """``news.*``: only editors publish, everyone reads; ``staff.*``: only editors publish and read."""
    editor, reader = stack.new_key("editor"), stack.new_key("reader")
    base = strict[server]
    body = {"channel": "websocket", "topic": "news.today", "message": "extra"}
    refused = httpx.post(f"{base}/notifications", json=body, headers=bearer(reader), timeout=10)
    assert refused.status_code == 403 and "may not publish" in refused.json()["detail"]
    with connect(ws_url(base, "topic=news.today"), additional_headers=bearer(reader)) as ws:
        assert subscribed(ws) == []
        assert httpx.post(f"{base}/notifications", json=body, headers=bearer(editor), timeout=10).status_code == 202
        assert recv(ws)["message"] == "extra"
    with connect(ws_url(base, "topic=staff.pay"), additional_headers=bearer(reader)) as ws:
        assert "not readable" in closed_1008(ws)
    with connect(ws_url(base), additional_headers=bearer(reader)) as ws:
        ws.send(json.dumps({"op": "subscribe", "topic": "staff.pay"}))
        assert "not readable" in closed_1008(ws)
    assert httpx.get(f"{base}/events?topic=staff.pay", headers=bearer(reader), timeout=10).status_code == 403
    with connect(ws_url(base, "topic=staff.pay"), additional_headers=bearer(editor)) as ws:
        assert subscribed(ws) == []


# --- WebSocket authentication: both /ws implementations


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_stream_without_valid_credentials_is_closed_1008(strict: dict[str, str], server: str) -> None:
    for headers in ({}, bearer("cvk_AAAAAAAAAAAA_" + "A" * 43), {"Authorization": "Basic eDp5"}):
        with connect(ws_url(strict[server]), additional_headers=headers) as ws:
            assert "key" in closed_1008(ws)
    with connect(ws_url(strict[server], "ticket=cvt_madeup"), open_timeout=10) as ws:
        assert "ticket" in closed_1008(ws)


@pytest.fixture(scope="module")
def ticket_apis(stack: Stack) -> Iterator[dict[str, str]]:
    """Two api processes with the default ticket lifetime (30 s) on one Redis: the stack's (``/ws`` native) and
    one serving ``/ws`` through the ASGI route."""
    with api_process(
        "api-tickets-asgi", stack.redis_url, stack.data_dir, stack.database_url, CONVEYOR_WS_NATIVE="false"
    ) as asgi:
        yield {"native": stack.base_url, "asgi": asgi}


def new_ticket(base_url: str, key: str) -> tuple[str, int]:
    response = httpx.post(f"{base_url}/ws-tickets", headers=bearer(key), timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["ticket"], response.json()["expires_in"]


def admitted(base_url: str, ticket: str) -> str | None:
    """Open ``/ws`` with ``ticket``: ``None`` when the stream was admitted (its ``subscribe`` acknowledged), else
    the detail of its 1008 refusal."""
    with connect(ws_url(base_url, f"ticket={ticket}"), open_timeout=10) as ws:
        with contextlib.suppress(ConnectionClosed):  # a refusal may close the connection first
            ws.send(json.dumps({"op": "subscribe", "topic": "ack"}))
        message = recv(ws, 10)
        if message == {"type": "subscribed", "topic": "ack"}:
            return None
        assert message["type"] == "error", message
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        detail: str = message["detail"]
        return detail


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_ticket_works_once(ticket_apis: dict[str, str], stack: Stack, server: str) -> None:
    """A ticket stands for its key's owner once; a second use is refused as "already used" (not as expired: the
    ticket lives 30 s, and the two answers differ)."""
    key = stack.new_key(f"browser-{server}")
    base = ticket_apis[server]
    ticket, lifetime = new_ticket(base, key)
    assert lifetime == 30
    with connect(ws_url(base, f"ticket={ticket}"), open_timeout=10) as ws:
        assert subscribed(ws) == []
        job_id = submit_log(stack.base_url, key)
        while (event := recv(ws))["type"] not in FINISHED:
            assert event["job_id"] == job_id
        assert event["job_id"] == job_id
    detail = admitted(base, ticket)
    assert detail is not None and "already used" in detail and "expired" not in detail, detail


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_a_ticket_is_refused_once_it_expired(strict: dict[str, str], stack: Stack, server: str) -> None:
    """A ticket never used is refused once its lifetime (1 s here) is over by Redis's clock, as "unknown or
    expired" (not "already used")."""
    key = stack.new_key(f"late-browser-{server}")
    client = redis.Redis.from_url(stack.redis_url)
    try:
        ticket, lifetime = new_ticket(strict[server], key)
        expired_at = redis_now(client) + lifetime  # the ticket was stored before this
        deadline = time.monotonic() + 30
        while redis_now(client) <= expired_at:
            assert time.monotonic() < deadline, "Redis's clock does not move"
            time.sleep(0.05)
    finally:
        client.close()
    detail = admitted(strict[server], ticket)
    assert detail is not None and "unknown or expired" in detail and "already used" not in detail, detail


def test_a_ticket_is_single_use_across_api_processes(ticket_apis: dict[str, str], stack: Stack) -> None:
    """A ticket issued by one api process works on another, once; presented to both at the same moment, exactly
    one admits it."""
    key = stack.new_key("two-tabs")
    ticket, _ = new_ticket(ticket_apis["native"], key)
    assert admitted(ticket_apis["asgi"], ticket) is None
    assert "already used" in (admitted(ticket_apis["native"], ticket) or "")
    assert "already used" in (admitted(ticket_apis["asgi"], ticket) or "")
    servers = list(ticket_apis)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            ticket, _ = new_ticket(ticket_apis["asgi"], key)
            start = threading.Barrier(2)

            def present(server: str, ticket: str = ticket, start: threading.Barrier = start) -> str | None:
                start.wait(10)
                return admitted(ticket_apis[server], ticket)

            answers = dict(zip(servers, pool.map(present, servers), strict=True))
            refused = [detail for detail in answers.values() if detail is not None]
            assert len(refused) == 1 and "already used" in refused[0], answers


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
    assert again.status_code == 401 and "already used" in again.json()["detail"], again.text
    assert "expired" not in again.json()["detail"]


# --- rate limits and other limits


def test_the_rate_limit_is_per_key_and_shared_by_api_processes(strict: dict[str, str], stack: Stack) -> None:
    """Burst 6, 0.5 requests/s, one bucket for both api processes: requests alternating between them are refused
    once the burst and whatever refilled meanwhile are spent; another key is not affected; a refused key is let
    in again after the ``Retry-After`` it was given."""
    key, other = stack.new_key("hasty"), stack.new_key("patient")
    statuses: list[int] = []
    started = time.monotonic()
    refused = None
    while refused is None:
        assert len(statuses) < 40, statuses
        base = strict["native"] if len(statuses) % 2 else strict["asgi"]
        response = httpx.get(f"{base}/jobs", headers=bearer(key), timeout=10)
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused = response
    elapsed = time.monotonic() - started
    allowed = 6 + math.floor(0.5 * elapsed)  # the burst, plus the refill while the requests were made
    assert set(statuses[:-1]) == {200} and 6 <= len(statuses) - 1 <= allowed, (statuses, elapsed)
    assert "rate limit" in refused.json()["detail"]
    wait = int(refused.headers["retry-after"])
    assert wait >= 1
    assert httpx.get(f"{strict['native']}/jobs", headers=bearer(other), timeout=10).status_code == 200
    time.sleep(wait)  # the behaviour under test: the bucket refills at its rate
    assert httpx.get(f"{strict['native']}/jobs", headers=bearer(key), timeout=10).status_code == 200


def test_bodies_above_the_limit_are_413(strict: dict[str, str], stack: Stack) -> None:
    url, headers = f"{strict['native']}/notifications", bearer(stack.new_key("big"))
    body = {"channel": "log", "message": "x" * 5000}
    response = httpx.post(url, json=body, headers=headers, timeout=10)
    assert response.status_code == 413 and "4096" in response.json()["detail"]


def raw_request(base_url: str, head: str, body: bytes = b"") -> socket.socket:
    """A socket that has sent ``head`` (request line and headers, without the blank line) and ``body``."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """The whole response on ``sock``: its head, then as many body bytes as its ``Content-Length`` says (the api
    may write the two in separate packets)."""
    reply = b""
    while b"\r\n\r\n" not in reply and (chunk := sock.recv(4096)):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := sock.recv(4096)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(strict: dict[str, str], stack: Stack) -> None:
    """``Content-Length`` above the limit and no body sent: 413 (had the api waited for the body, the request
    timeout would answer 408)."""
    head = (
        "POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {stack.new_key('declared')}\r\nContent-Length: 1000000"
    )
    with raw_request(strict["native"], head) as sock:
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"4096" in reply


def test_a_chunked_body_is_413_as_soon_as_it_passes_the_limit(strict: dict[str, str], stack: Stack) -> None:
    """A chunked body is refused once 5,000 bytes (limit 4,096) are in, while the client still has more to send
    (had the api waited for the end of the body, the request timeout would answer 408)."""
    head = (
        "POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {stack.new_key('chunked')}\r\nTransfer-Encoding: chunked"
    )
    chunk = b"3e8\r\n" + b" " * 1000 + b"\r\n"  # 1,000 bytes of JSON whitespace
    with raw_request(strict["native"], head, b"3\r\n[1,\r\n" + chunk * 5) as sock:
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply


@pytest.mark.parametrize("server", ["native", "asgi"])
def test_streams_per_key_are_capped(strict: dict[str, str], stack: Stack, server: str) -> None:
    headers = bearer(stack.new_key(f"many-tabs-{server}"))
    base = strict[server]
    with (
        connect(ws_url(base), additional_headers=headers) as one,
        connect(ws_url(base), additional_headers=headers) as two,
    ):
        assert subscribed(one) == [] and subscribed(two) == []
        with connect(ws_url(base), additional_headers=headers) as third:
            assert "limit" in recv(third)["detail"]
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert httpx.get(f"{base}/events", headers=headers, timeout=10).status_code == 503


def test_a_body_that_never_arrives_is_408(strict: dict[str, str], stack: Stack) -> None:
    head = (
        "POST /notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {stack.new_key('slow')}\r\nContent-Length: 100"
    )
    with raw_request(strict["native"], head, b'{"channel": ') as sock:
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply


def test_an_event_stream_outlives_the_request_timeout(strict: dict[str, str], stack: Stack) -> None:
    """The time limit is for requests and their bodies: an open SSE stream goes on past it (2 s here) and
    delivers what happens after it."""
    key = stack.new_key("long-listener")
    with sse(strict["native"], "/events", headers=bearer(key)) as reader:
        time.sleep(3)  # the behaviour under test: the stream is still open after the request timeout
        job_id = submit_log(stack.base_url, key, "after the timeout")
        types = []
        while (event := reader.next_data()[1])["type"] not in FINISHED:  # EOFError if the stream was ended
            assert event["job_id"] == job_id
            types.append(event["type"])
    assert (event["job_id"], [*types, event["type"]]) == (job_id, ["job.queued", "job.started", "job.succeeded"])
