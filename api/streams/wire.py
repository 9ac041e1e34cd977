"""What travels on an event stream, whatever the transport (native WebSocket, ASGI WebSocket, SSE): messages
encoded once for every client, the client's commands, and why a stream is refused or closed.

A server message is one JSON object: an event (``{"event_id", "type", …}``) or a notice without an id
(``snapshot``, ``subscribed``, ``resync``, ``error``). Before a stream closes the client gets an ``error``
message naming the problem, then the close: WebSocket close code 1003 (binary message), 1008 (bad request or
command, no credentials), 1009 (message too big), 1011 (internal error), 1013 (a cap reached, too far behind, or
too slow to read what was sent); SSE ends after the message (or answers the HTTP status before the stream starts).
"""

from __future__ import annotations

import struct
from enum import StrEnum

from pydantic import ValidationError

from conveyor.events import StreamEvent, id_key
from conveyor.schemas import StreamCommand, StreamError

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

#: Largest client message, in bytes (commands are small); larger ones are closed with 1009.
MAX_COMMAND_BYTES = 4096
#: Seconds a closing stream may take to deliver its last message and close before it is dropped.
CLOSE_TIMEOUT = 10.0


class StreamState(StrEnum):
    """Where one event stream connection is in its life. Every transport goes through the same states, in order
    (a refusal may jump to ``CLOSING`` from any state before it)."""

    #: Accepted at the transport level; credentials and filters are being checked. Nothing is sent; client
    #: messages wait.
    ADMITTING = "admitting"
    #: Subscribed; the backlog, a command's answer, or a backed-up mailbox is being sent, in order.
    CATCHING_UP = "catching-up"
    #: Caught up: live events go out as they arrive.
    LIVE = "live"
    #: The last message and the close are on their way; nothing else is sent.
    CLOSING = "closing"
    CLOSED = "closed"


class Refused(Exception):
    """Why a stream is refused or ends: a WebSocket close code and, before an SSE response starts, an HTTP status."""

    def __init__(self, detail: str, ws_code: int = CLOSE_POLICY, http_status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.ws_code = ws_code
        self.http_status = http_status

    @property
    def message(self) -> str:
        """The ``error`` message the client gets before the stream closes."""
        return StreamError(detail=self.detail).model_dump_json()

    def fresh(self) -> Refused:
        """A new refusal with the same detail and codes: what to raise in place of a shared constant."""
        return Refused(self.detail, self.ws_code, self.http_status)

    @property
    def close_reason(self) -> str:
        """The detail cut to fit a WebSocket close frame's reason."""
        return self.detail.encode()[:120].decode(errors="ignore")


TOO_FAR_BEHIND = Refused("too far behind; reconnect with last_event_id", CLOSE_TRY_AGAIN, 503)
#: A client that left what was sent unread for ``CONVEYOR_STREAM_SEND_TIMEOUT_SECONDS`` (or, on the native ``/ws``,
#: did not answer a ping while its socket still held unsent data).
TOO_SLOW = Refused("too slow: what was sent is not being read; reconnect with last_event_id", CLOSE_TRY_AGAIN, 503)
TOO_BIG = Refused(f"a message is at most {MAX_COMMAND_BYTES} bytes", CLOSE_TOO_BIG)
INTERNAL_ERROR = Refused("internal error; reconnect with last_event_id", CLOSE_INTERNAL, 503)


def full(cap: Exception) -> Refused:
    """The refusal for a connection cap (the hub's ``Full``): WebSocket close 1013, HTTP 503."""
    return Refused(str(cap), CLOSE_TRY_AGAIN, 503)


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked WebSocket text frame (what a server sends) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65_536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Outgoing:
    """One message on its way to clients, encoded once for all of them: an event (with its id's sort key) or a
    notice without an id (``event`` and ``key`` are ``None``)."""

    __slots__ = ("_frame", "event", "key", "more", "text")

    def __init__(self, event: StreamEvent | None, text: str) -> None:
        self.event = event
        self.key = id_key(event.event_id) if event is not None else None
        self.text = text
        #: More events follow in the same read of the stream (a connection may hold this one to write them together).
        self.more = False
        self._frame: bytes | None = None

    @classmethod
    def of(cls, event: StreamEvent) -> Outgoing:
        """The message a client receives for ``event``: the stored JSON with its ``event_id``."""
        return cls(event, event.text)

    @classmethod
    def notice(cls, message: str) -> Outgoing:
        """A message that is not an event (``resync``, ``snapshot``, …)."""
        return cls(None, message)

    @property
    def frame(self) -> bytes:
        """The WebSocket frame carrying ``text``, built on first use and shared."""
        if self._frame is None:
            self._frame = text_frame(self.text.encode())
        return self._frame


def parse_command(data: str | bytes | None) -> StreamCommand:
    """A client's message as a command. ``None`` or bytes stand for a binary message. Raises :class:`Refused`:
    1003 for a binary message, 1009 above :data:`MAX_COMMAND_BYTES`, 1008 for anything that is not a command."""
    if not isinstance(data, str):
        raise Refused("binary messages are not supported; send JSON text", CLOSE_UNSUPPORTED)
    if len(data) > MAX_COMMAND_BYTES or len(data.encode()) > MAX_COMMAND_BYTES:
        raise TOO_BIG.fresh()
    try:
        return StreamCommand.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
        raise Refused(f'bad command ({problems}); send {{"op": "subscribe", "job_id": …}}') from None
