"""The ASGI ``/ws`` route subscribes before it completes the handshake: an event published as soon as the client
sees the socket open is never missed, even without a resume point (the native protocol's twin is
tests/system/test_ws_open.py)."""

from __future__ import annotations

import pytest

from tests.events_support import publish
from tests.inprocess import Api

pytestmark = pytest.mark.anyio


async def test_an_event_published_right_after_the_handshake_arrives(api: Api) -> None:
    redis_url = api.settings.effective_redis_url
    for attempt in range(20):
        async with api.websocket("/ws", subscribed=False) as ws:
            (event_id,) = publish(redis_url, 1, job=f"opened-{attempt}-")
            assert (await ws.receive_json())["event_id"] == event_id, f"attempt {attempt}"
