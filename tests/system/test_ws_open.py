"""The native ``/ws`` protocol sends its 101 only once the connection is admitted and subscribed: an event published
as soon as the client sees the socket open is never missed, even without a resume point."""

from __future__ import annotations

import pytest
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.events_support import publish, recv

pytestmark = pytest.mark.system


def test_an_event_published_right_after_the_handshake_arrives(stack: Stack) -> None:
    for attempt in range(20):
        with connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers) as ws:
            (event_id,) = publish(stack.redis_url, 1, job=f"opened-native-{attempt}-")
            assert recv(ws)["event_id"] == event_id, f"attempt {attempt}"
