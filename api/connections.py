"""Conveyor's HTTP protocol for uvicorn: uvicorn's httptools protocol, with limits on what a connection may hold
before and between its requests.

``conveyor api`` runs uvicorn with ``http="api.connections:HttpProtocol"``. On top of uvicorn's protocol:

- **idle**: a connection with no request in progress is closed after ``CONVEYOR_KEEPALIVE_TIMEOUT_SECONDS``; a new
  connection that sends nothing included (uvicorn arms its keep-alive timer only after a first response);
- **headers**: a request's line and headers must be complete within ``CONVEYOR_HEADER_TIMEOUT_SECONDS`` of its first
  byte and within :data:`MAX_HEADER_BYTES`, else ``408`` (``431``) and the connection is closed (slowloris);
- **per address**: one client address may hold ``CONVEYOR_MAX_CONNECTIONS_PER_IP`` connections of this process that
  have not carried an authenticated request; one more is answered ``429`` and closed at once. The guard
  (``api/guard.py``) calls :func:`authenticated` once a request's API key is good: from then on that connection no
  longer counts, nor does one upgraded to a WebSocket (which has its own admission, caps and keep-alive).

What is answered here is JSON ``{"detail": …}``, like every answer of the app, and closes the connection. Request
bodies, responses and WebSockets are uvicorn's and the app's business, unchanged.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import orjson
from starlette.types import Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from conveyor import logs

log = logs.get("conveyor.connections")

#: Largest request line plus headers, in bytes (more: 431).
MAX_HEADER_BYTES = 64 * 1024
#: The ASGI scope extension through which the guard tells a connection that its request is authenticated.
EXTENSION = "conveyor.connection"
#: Seconds a client refused at the per-address cap is asked to wait.
RETRY_AFTER_SECONDS = 2
#: At most one log line per this many seconds about refused connections (an attack would flood the log).
_LOG_EVERY = 10.0

#: Per server: unauthenticated connections held by each client address.
_held: weakref.WeakKeyDictionary[ServerState, dict[str, int]] = weakref.WeakKeyDictionary()
_last_logged = 0.0


def authenticated(scope: Scope) -> None:
    """Tell the connection that carries ``scope`` that its request was authenticated: it stops counting against its
    address's cap. Harmless under any other server."""
    extension: dict[object, object] = scope.get("extensions", {}).get(EXTENSION, {})
    mark = extension.get("authenticated")
    if callable(mark):
        mark()


class HttpProtocol(HttpToolsProtocol):
    """One HTTP connection, with the limits described in the module docstring (taken from the app's settings)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        state = app_state.get("conveyor")
        settings = state.settings if state is not None else None
        self.header_timeout: float | None = settings.header_timeout_seconds if settings is not None else None
        self.max_per_address: int = settings.max_connections_per_ip if settings is not None else 0
        if settings is not None:
            self.timeout_keep_alive = settings.keepalive_timeout_seconds
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_headers = False
        self.header_bytes = 0
        #: The client address this connection counts against, while it does.
        self.counted: str | None = None

    # --- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.max_per_address:
            held = _held.setdefault(self.server_state, {})
            if held.get(address, 0) >= self.max_per_address:
                _log_refusal(address, self.max_per_address)
                detail = f"too many connections from this address (at most {self.max_per_address}); try again later"
                self._answer(429, detail, (b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
                return
            held[address] = held.get(address, 0) + 1
            self.counted = address
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._leave()
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        in_headers = self.in_headers
        super().data_received(data)
        # Counted only while a request's headers were already under way before this chunk and still are after it:
        # never a body's bytes, at the cost of the first chunk of each request.
        if in_headers and self.in_headers and not self.transport.is_closing():
            self.header_bytes += len(data)
            if self.header_bytes > MAX_HEADER_BYTES:
                self._answer(431, f"a request's line and headers are at most {MAX_HEADER_BYTES} bytes")

    # --- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extension: dict[object, object] = {"authenticated": self._authenticated}
        self.scope["extensions"] = {EXTENSION: extension}
        self.in_headers = True
        self.header_bytes = 0
        if self.header_timeout is not None:
            self._stop_header_timer()
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._stop_header_timer()
        super().on_headers_complete()

    # --- limits

    def _authenticated(self) -> None:
        address, self.counted = self.counted, None
        if address is not None:
            _release(self.server_state, address)

    def _leave(self) -> None:
        self._authenticated()
        self._stop_header_timer()
        self.in_headers = False

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self._answer(408, f"the request's headers did not arrive within {self.header_timeout:g} s")
        else:  # a pipelined request behind a response still being sent: no answer can go in between
            self.transport.close()

    def _answer(self, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
        """Answer ``status`` with ``{"detail": detail}`` and close the connection (whatever else it sent)."""
        body = orjson.dumps({"detail": detail})
        head = [STATUS_LINE[status], b"content-type: application/json\r\n"]
        head.append(b"content-length: %d\r\n" % len(body))
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._leave()


def _release(server_state: ServerState, address: str) -> None:
    held = _held.get(server_state)
    if held is None or address not in held:
        return
    held[address] -= 1
    if held[address] <= 0:
        del held[address]


def _log_refusal(address: str, cap: int) -> None:
    global _last_logged
    now = time.monotonic()
    if now - _last_logged >= _LOG_EVERY:
        _last_logged = now
        log.warning("connections refused: an address holds its cap of unauthenticated ones", address=address, cap=cap)
