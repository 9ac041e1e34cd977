"""Revoking a key (``conveyor keys revoke``, another process) ends what it holds on the api: its WebSocket and its SSE
stream close within 5 s (an error message, then 1008; a last ``error`` message), and a ticket it took before is
refused."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.events_support import recv, sse
from tests.support import bearer

pytestmark = pytest.mark.system


@pytest.mark.timeout(90)
def test_revoking_a_key_closes_its_streams_and_refuses_its_tickets(stack: Stack) -> None:
    key = stack.new_key("revokee")
    key_id = key.split("_")[1]
    base = stack.base_url
    ticket = httpx.post(f"{base}/ws-tickets", headers=bearer(key), timeout=10).json()["ticket"]
    with (
        connect(f"{stack.ws_url}/ws?topic=nothing", open_timeout=10, additional_headers=bearer(key)) as ws,
        sse(base, "/events?topic=nothing", headers=bearer(key), timeout=5) as events,  # each read: 5 s at most
    ):
        ws.send('{"op": "subscribe", "topic": "still-here"}')
        assert recv(ws)["type"] == "subscribed"  # the socket is admitted and live
        revoked = subprocess.run(
            [sys.executable, "-m", "conveyor", "keys", "revoke", key_id],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        closing = recv(ws, timeout=5)
        assert closing == {"type": "error", "detail": "the API key was revoked"}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        _event_id, last = events.next_data()
        assert last == {"type": "error", "detail": "the API key was revoked"}
        with pytest.raises(EOFError):
            events.next()
    with connect(f"{stack.ws_url}/ws?ticket={ticket}", open_timeout=10) as ws:
        refused = recv(ws, timeout=10)
        assert refused["type"] == "error" and "revoked" in refused["detail"]
    assert httpx.get(f"{base}/jobs", headers=bearer(key), timeout=10).status_code == 401
