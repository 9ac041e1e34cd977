"""Redis that answers but refuses writes (``MISCONF``: its append-only file cannot be written, a full disk) is never a
500 on the in-process api: the rate limiter and the per-key leases let requests through, submissions are recorded
and answered 202 (the dispatcher sends them later), a cancel is recorded, what needs a Redis write answers 503 (or
closes a stream with 1013). Once Redis takes writes again, so does everything, without a restart. The server is a
real redis-server of the test's own (tests/refusing_redis.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from api.errors import RETRY_AFTER_SECONDS
from conveyor.settings import Settings
from tests.asgi import WebSocketClosed
from tests.inprocess import Api, serve
from tests.refusing_redis import RefusingRedis, refusing_redis
from tests.uploads_support import body, part, post

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RefusingRedis]:
    with refusing_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def refusing_api(tmp_path: Path, server: RefusingRedis) -> AsyncIterator[Api]:
    # A burst of 1: every request asks Redis for its token (the process holds no tokens taken ahead).
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "var",
        redis_url=server.url,
        rate_limit_burst=1,
        rate_limit_per_second=100_000,
    )
    async with serve(settings) as api:
        yield api


async def test_a_redis_that_refuses_writes_is_never_a_500_and_everything_resumes(
    refusing_api: Api, server: RefusingRedis
) -> None:
    api = refusing_api
    with server.refusing():
        accepted = await api.client.post("/notifications", json={"channel": "log", "message": "disk full"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        assert (await api.client.get(f"/jobs/{job_id}")).json()["status"] == "queued"
        upload = await post(api.client, body(part('form-data; name="file"; filename="a.txt"', b"words\n")))
        assert upload.status_code == 202, upload.text
        ticket = await api.client.post("/ws-tickets")
        assert ticket.status_code == 503 and "Redis" in ticket.json()["detail"]
        assert ticket.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        events = await api.client.get("/events?ticket=cvt_" + "x" * 43)
        assert events.status_code == 503 and "Redis" in events.json()["detail"]
        cancelled = await api.client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        async with api.websocket("/ws?ticket=cvt_" + "x" * 43, headers={}, subscribed=False) as ws:
            message = await ws.receive_json()
            assert message["type"] == "error" and "Redis" in message["detail"]
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1013
    assert (await api.client.post("/ws-tickets")).status_code == 201
    again = await api.client.post("/notifications", json={"channel": "log", "message": "space is back"})
    assert again.status_code == 202


async def test_uploads_past_the_cap_go_through_while_redis_refuses(refusing_api: Api, server: RefusingRedis) -> None:
    with server.refusing():
        for _ in range(refusing_api.settings.max_uploads_per_key + 1):
            upload = await post(refusing_api.client, body(part('form-data; name="file"; filename="a.txt"', b"x\n")))
            assert upload.status_code == 202, upload.text
    assert not refusing_api.state.leases.held


async def test_streams_that_cannot_read_their_start_point_answer_503_or_close_1011(
    refusing_api: Api, server: RefusingRedis
) -> None:
    api = refusing_api
    server.client.shutdown(nosave=True)  # Redis gone: the job's job.queued event is not noted, its start is looked up
    accepted = await api.client.post("/notifications", json={"channel": "log", "message": "redis is gone"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    events = await api.client.get(f"/events?job_id={job_id}")
    assert events.status_code == 503 and "Redis" in events.json()["detail"]
    async with api.websocket(f"/ws?job_id={job_id}", subscribed=False) as ws:
        message = await ws.receive_json()
        assert message["type"] == "error" and "internal error" in message["detail"]
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1011
