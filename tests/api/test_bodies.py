"""Hostile JSON bodies get a 4xx naming the problem, never a 500, on every JSON route, whichever path serves it (the
submission lane or FastAPI), and the connection stays usable."""

from __future__ import annotations

import pytest

from api.bodies import BodyRefused, NotJson, check_json
from tests.inprocess import Api

pytestmark = pytest.mark.anyio

HOSTILE = [
    (b'{"channel":"log","message":"m","data":{"n":18446744073709551616}}', 422, "64 bits"),
    (b'{"channel":"log","message":"m","data":{"n":-9223372036854775809}}', 422, "64 bits"),
    (b'{"channel":"log","message":"m","data":{"n":NaN}}', 422, "NaN"),
    (b'{"channel":"log","message":"m","data":{"n":Infinity}}', 422, "Infinity"),
    (b'{"channel":"log","message":"m","data":{"n":1e400}}', 422, "too large"),
    (b'{"channel":"log","message":"\\ud800"}', 400, "surrogate"),
    (b'{"channel":"log","message":"a\\u0000b"}', 422, "NUL"),
    (b'{"channel":"log","message":"m","data":{"k\\u0000":1}}', 422, "NUL"),
    (b'{"channel":"log","message":"\xff\xfe"}', 400, "UTF-8"),
    (b'{"channel":"websocket","topic":"t","message":{"n":18446744073709551616}}', 422, "64 bits"),
]


@pytest.mark.parametrize(("body", "status", "words"), HOSTILE)
@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.conveyor+json"])
async def test_hostile_json_is_refused_with_a_detail(
    api: Api, body: bytes, status: int, words: str, content_type: str
) -> None:
    for path in ("/notifications", "/notifications:batch"):
        sent = body if path == "/notifications" else b'{"notifications":[' + body + b"]}"
        response = await api.client.post(path, content=sent, headers={"content-type": content_type})
        assert response.status_code == status, (path, response.text)
        assert words in response.json()["detail"]
    assert (await api.client.get("/health")).status_code == 200


async def test_nul_in_a_path_or_query_is_refused(api: Api) -> None:
    for path in ("/jobs/abc%00def", "/jobs?kind=a%00b", "/uploads?cursor=%00"):
        response = await api.client.get(path)
        assert response.status_code == 400 and "NUL" in response.json()["detail"], path


def test_the_checks_pass_ordinary_json_through() -> None:
    assert check_json(b'{"a":[1,2.5,"x",null,true],"b":{"c":9223372036854775807}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": 9223372036854775807},
    }
    assert check_json(b'{"id":"12345678901234567890123"}') == {"id": "12345678901234567890123"}
    with pytest.raises(NotJson):
        check_json(b'{"a":')
    with pytest.raises(BodyRefused):
        check_json(b'{"a": 99999999999999999999}')
