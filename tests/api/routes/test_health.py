"""``GET /health`` on the in-process api."""

from __future__ import annotations

import pytest

from tests.inprocess import Api

pytestmark = pytest.mark.anyio


async def test_health(api: Api) -> None:
    body = (await api.client.get("/health")).json()
    assert body["status"] == "ok" and body["redis"] == "ok" and body["database"] == "ok"


async def test_health_needs_no_key(api: Api) -> None:
    async with api.anonymous() as anonymous:
        assert (await anonymous.get("/health")).status_code == 200
