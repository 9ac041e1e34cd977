"""The api in-process: the real app, its lifespan run the way uvicorn runs it, requests served without a socket.

:func:`serve` builds ``api.main.create_app(settings)``, runs its lifespan (job store, Redis pools, event hub) and
gives every request's scope a copy of the lifespan state, as uvicorn does. Three ways in, all on the test's event
loop:

- :attr:`Api.client`: an ``httpx.AsyncClient`` over ``httpx.ASGITransport`` (each response arrives whole);
- :meth:`Api.events`: an event stream (``/events`` never ends by itself, so its response streams); leaving the block
  tells the app that the client went away;
- :meth:`Api.websocket`: a WebSocket session with the ASGI ``/ws`` route. Conveyor's native ``/ws`` protocol lives in
  uvicorn, so its tests are system tests.

What needs a real socket (timeouts, back-pressure of the kernel, uvicorn itself) stays in ``tests/system``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from starlette.types import ASGIApp

from api.main import create_app
from api.state import AppState
from conveyor.settings import Settings
from conveyor.store.apikeys import KeyStore
from tests.asgi import WAIT, StreamingTransport, WebSocketSession, lifespan, websocket_session, with_state
from tests.events_support import SseMessage, SseParser
from tests.support import bearer

#: The owner of the key every in-process api hands its tests (the same as the session stack's).
OWNER = "tests"


class EventSource:
    """The in-process twin of ``tests.events_support.SseReader``: Server-Sent Events from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.parser = SseParser()

    async def next(self, timeout: float = WAIT) -> SseMessage:
        with anyio.fail_after(timeout):
            async for line in self.lines:
                if (message := self.parser.feed(line)) is not None:
                    return message
        raise EOFError("stream ended")

    async def next_data(self, timeout: float = WAIT) -> tuple[str | None, dict[str, Any]]:
        while True:
            event_id, data, _comment = await self.next(timeout)
            if data is not None:
                return event_id, data


@dataclass
class Api:
    """A running in-process api (see the module docstring) and an API key for it."""

    app: ASGIApp
    state: AppState
    key: str
    client: httpx.AsyncClient

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def new_key(self, owner: str) -> str:
        """Another API key, for ``owner``."""
        return KeyStore(self.state.store.engine).create(owner)[1]

    def anonymous(self) -> httpx.AsyncClient:
        """A client that sends no key; close it after use."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.client.base_url)

    @contextlib.asynccontextmanager
    async def events(self, path: str, headers: Mapping[str, str] | None = None) -> AsyncIterator[EventSource]:
        """``GET path`` as an event stream (200, ``text/event-stream``) with the key and ``headers``; the client
        goes away on exit."""
        transport = StreamingTransport(self.app)
        async with httpx.AsyncClient(transport=transport, base_url=self.client.base_url, headers=self.headers) as c:
            response = await c.send(c.build_request("GET", path, headers=headers), stream=True)
            try:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                yield EventSource(response)
            finally:
                await response.aclose()

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        subscribed: bool = True,
        max_queue: float = math.inf,
    ) -> AsyncIterator[WebSocketSession]:
        """A WebSocket session with the ASGI route at ``path`` (query included), sending the key unless ``headers``
        are given. The route accepts before it subscribes to the hub; unless ``subscribed`` is off (a connection the
        test expects to be refused), this waits for the subscription, so that events published next reach it."""
        url = self.client.base_url.copy_with(scheme="ws").join(path)
        hub = self.state.hub
        before = len(hub.subscribers)
        async with websocket_session(self.app, url, self.headers if headers is None else headers, max_queue) as session:
            if subscribed:
                with anyio.fail_after(WAIT):
                    while len(hub.subscribers) <= before:
                        await anyio.sleep(0.001)
            yield session


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Api]:
    """The api for ``settings``, started and ready (the event hub reads the stream); stopped on exit."""
    app = create_app(settings)
    async with lifespan(app) as state:
        conveyor: AppState = state["conveyor"]
        with anyio.fail_after(WAIT):
            await conveyor.hub.ready.wait()
        key = KeyStore(conveyor.store.engine).create(OWNER)[1]
        served = with_state(app, state)
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=bearer(key)) as client:
            yield Api(served, conveyor, key, client)
