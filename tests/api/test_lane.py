"""The submission lane answers exactly what the FastAPI routes answer: the same request sent both ways (the lane
takes ``application/json``; FastAPI alone takes ``application/vnd.conveyor+json``, a JSON type the lane leaves to
it) gets the same status, headers and body shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.inprocess import Api

pytestmark = pytest.mark.anyio

LANE = "application/json"
FASTAPI = "application/vnd.conveyor+json"


def shape(value: Any) -> Any:
    """The body with its ids and times blanked: what must match between two submissions of the same request."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, str) and (len(value) == 36 or value.endswith("Z") or value.startswith("/")):
        return "…"
    return value


async def both(client: httpx.AsyncClient, path: str, body: bytes) -> tuple[httpx.Response, httpx.Response]:
    lane = await client.post(path, content=body, headers={"content-type": LANE})
    fastapi = await client.post(path, content=body, headers={"content-type": FASTAPI})
    return lane, fastapi


def same(lane: httpx.Response, fastapi: httpx.Response) -> None:
    assert lane.status_code == fastapi.status_code, (lane.text, fastapi.text)
    assert lane.headers["content-type"] == fastapi.headers["content-type"]
    assert lane.headers.get("idempotent-replayed") == fastapi.headers.get("idempotent-replayed")
    assert shape(lane.json()) == shape(fastapi.json()), (lane.text, fastapi.text)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/notifications", b'{"channel":"log","message":"hi"}', 202),
        ("/notifications", b'{"channel":"websocket","topic":"t","message":{"a":[1,2]}}', 202),
        ("/notifications", b'{"channel":"webhook","url":"https://example.com/h"}', 422),
        (
            "/notifications",
            b'{"channel":"webhook","url":"http://127.0.0.1/h","secret":"whsec_' + b"A" * 44 + b'"}',
            422,
        ),
        ("/notifications", b'{"channel":"log"}', 422),
        ("/notifications", b'{"channel":"log","message":"hi","extra":1}', 422),
        ("/notifications", b'{"channel":"log","message":"x",', 422),
        ("/notifications", b"", 422),
        (
            "/notifications:batch",
            b'{"notifications":[{"channel":"log","message":"a"},{"channel":"log","message":"b"}]}',
            202,
        ),
        (
            "/notifications:batch",
            b'{"notifications":[{"channel":"log","message":"a"},{"channel":"webhook","url":"https://e.com"}]}',
            422,
        ),
        ("/notifications:batch", b'{"notifications":[]}', 422),
    ],
)
async def test_the_lane_and_the_route_answer_alike(api: Api, path: str, body: bytes, status: int) -> None:
    lane, fastapi = await both(api.client, path, body)
    assert lane.status_code == status
    same(lane, fastapi)


async def test_idempotency_keys_replay_and_conflict_alike(api: Api) -> None:
    for via in (LANE, FASTAPI):
        key, headers = f"lane-test-{via}", {"content-type": via, "idempotency-key": f"lane-test-{via}"}
        first = await api.client.post("/notifications", content=b'{"channel":"log","message":"a"}', headers=headers)
        again = await api.client.post("/notifications", content=b'{"channel":"log","message":"a"}', headers=headers)
        other = await api.client.post("/notifications", content=b'{"channel":"log","message":"b"}', headers=headers)
        assert (first.status_code, again.status_code, other.status_code) == (202, 202, 422), (via, key)
        assert again.json()["job_id"] == first.json()["job_id"] and again.headers["idempotent-replayed"] == "true"
        assert "Idempotency-Key" in other.json()["detail"]
