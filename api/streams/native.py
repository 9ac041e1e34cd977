"""Conveyor's WebSocket protocol for uvicorn: ``/ws`` served natively, any other WebSocket path by uvicorn's own.

``conveyor api`` runs uvicorn with ``ws="api.streams.native:WebSocketProtocol"``. For ``/ws`` (unless
``CONVEYOR_WS_NATIVE`` is false) the connection never enters the ASGI stack: the handshake and the client's
frames go through the ``websockets`` library's sans-I/O protocol, and events are written straight to the
socket. That is what lets one process hold 10,000 clients: no ASGI task, middleware frames or receive queue
per idle connection, one keep-alive timer for all of them, and each event's frame encoded once and written to
every caught-up client in the hub's loop (``Subscription.direct``), as ``websockets.broadcast()`` does.

What is sent, in which order, and what a client may send is still :class:`api.streams.session.EventStream`'s:
while the stream is ``CATCHING_UP`` (a backlog to send, a command to apply, or a full socket buffer), a
short-lived task runs the stream's loop on its mailbox; once the stream is ``LIVE``, the connection goes back to
direct writes. Same messages, close codes and guarantees as the ASGI route (``api/routes/ws.py``), which serves
``/ws`` under any other server; an unexpected error closes the connection with 1011.

A client too slow to read what is sent is closed with 1013 after the ``error`` message (which reaches it once it
has read what came before): when its socket buffer stays full for ``CONVEYOR_STREAM_SEND_TIMEOUT_SECONDS``, or when
it leaves a ping unanswered while data for it is still waiting to go out; a client that answers no ping with nothing
waiting is dropped as dead. A message over :data:`~api.streams.wire.MAX_COMMAND_BYTES` gets its ``error`` message
before the 1009 close, as every other refusal does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from typing import Any

from starlette.datastructures import QueryParams
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from api.auth import origin_allowed
from api.streams.hub import Hub
from api.streams.request import StreamRequest, admit, parse_request
from api.streams.session import EventStream
from api.streams.wire import (
    CLOSE_RESTART,
    CLOSE_TIMEOUT,
    CLOSE_TOO_BIG,
    INTERNAL_ERROR,
    MAX_COMMAND_BYTES,
    TOO_BIG,
    TOO_SLOW,
    Outgoing,
    Refused,
    StreamState,
)
from conveyor import logs

log = logs.get("conveyor.ws")

PATH = b"/ws"
#: Client messages that may arrive while the connection is admitted; one more is refused.
MAX_EARLY_FRAMES = 8


class _Keepalive:
    """One timer for every native connection of a process: ping each, drop those that stopped answering."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.sockets: set[WebSocketProtocol] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, socket: WebSocketProtocol) -> None:
        self.sockets.add(socket)
        if self.interval > 0 and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="ws-keepalive")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.sockets:
                await asyncio.sleep(self.interval)
                now = loop.time()
                for socket in tuple(self.sockets):
                    socket.keepalive(now, self.timeout)
        finally:
            self.task = None


_keepalives: weakref.WeakKeyDictionary[Hub, _Keepalive] = weakref.WeakKeyDictionary()


class _ServerProtocol(ServerProtocol):
    """The ``websockets`` sans-I/O server protocol, except that a message over its size limit, which the protocol
    refuses itself while parsing, gets the ``error`` message before the 1009 close."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == CLOSE_TOO_BIG and self.state is State.OPEN:
            self.send_text(TOO_BIG.message.encode())
        super().fail(code, reason)


class WebSocketProtocol(asyncio.Protocol):
    """One upgraded connection. Created by uvicorn's HTTP protocol with the upgrade request as first data."""

    __slots__ = (
        "app_state",
        "close_timer",
        "config",
        "conn",
        "delegate",
        "early",
        "handshake",
        "out",
        "paused",
        "ping_at",
        "pong_due",
        "pump",
        "sent",
        "server_state",
        "slow_timer",
        "stream",
        "transport",
        "writable",
    )  # fmt: skip

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.delegate: WebSocketsSansIOProtocol | None = None
        self.conn: ServerProtocol | None = None
        #: Made when the handshake is accepted; its state is this connection's.
        self.stream: EventStream | None = None
        self.sent = (0, 0)
        #: Frames the hub delivered directly and not yet written: held until the last event of the hub's read.
        self.out: list[bytes] = []
        self.pump: asyncio.Task[None] | None = None
        self.paused = False
        self.writable: asyncio.Future[None] | None = None
        self.ping_at = 0.0
        self.pong_due = False
        self.close_timer: asyncio.TimerHandle | None = None
        #: Armed while the socket buffer is full: when it fires, the client is too slow (1013).
        self.slow_timer: asyncio.TimerHandle | None = None
        #: Frames that arrived while the connection was ``ADMITTING``, applied once it is admitted.
        self.early: list[Frame] = []
        #: The handshake's 101 answer, held until the connection is admitted and subscribed.
        self.handshake: Response | None = None

    @property
    def ending(self) -> bool:
        """True once nothing more may be sent: no accepted handshake, or closing, or closed."""
        return self.stream is None or self.stream.state in (StreamState.CLOSING, StreamState.CLOSED)

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
            return
        conn = self.conn
        if conn is None:
            if not self._native(data):
                self._hand_over(data)
                return
            conn = self.conn = _ServerProtocol(max_size=MAX_COMMAND_BYTES)
        conn.receive_data(data)
        for event in conn.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()
            return
        self.paused = True
        stream = self.stream
        if stream is None:
            return
        if stream.state is StreamState.LIVE:
            stream.state = StreamState.CATCHING_UP
            stream.subscription.direct = None
        if self.slow_timer is None and not self.ending:
            timeout = stream.app.settings.stream_send_timeout_seconds
            self.slow_timer = asyncio.get_running_loop().call_later(timeout, self._too_slow)

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()
            return
        self.paused = False
        self._stop_slow_timer()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        stream = self.stream
        if stream is not None and stream.state is StreamState.CATCHING_UP and self.pump is None:
            self._start_pump(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self._release()
        self._stop_slow_timer()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self.server_state.connections.discard(self)

    def shutdown(self) -> None:
        """Called by uvicorn when the server stops: close with 1012 (service restart)."""
        self._close(CLOSE_RESTART, "server shutting down")

    # --- handshake and client frames

    def _native(self, data: bytes) -> bool:
        state = self.app_state.get("conveyor")
        if state is None or not state.settings.ws_native:
            return False
        target = data.split(b"\r\n", 1)[0].split(b" ")
        return len(target) > 1 and target[1].split(b"?", 1)[0] == PATH

    def _hand_over(self, data: bytes) -> None:
        delegate = WebSocketsSansIOProtocol(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        assert self.transport is not None
        delegate.connection_made(self.transport)
        self.delegate = delegate
        delegate.data_received(data)

    def _handshake(self, request: Request) -> None:
        assert self.conn is not None and self.transport is not None
        state = self.app_state["conveyor"]
        if not origin_allowed(request.headers, state.settings.origins):
            response = self.conn.reject(403, "origin not allowed\n")
        else:
            response = self.conn.accept(request)
        if response.status_code != 101:
            self.conn.send_response(response)
            return
        # The 101 goes out once the connection is admitted and subscribed (_opened): an event published once the
        # client sees the socket open is never missed, even without a resume point.
        self.handshake = response
        self.server_state.connections.add(self)
        self.stream = EventStream(state)
        _, _, query = request.path.partition("?")
        self.pump = asyncio.get_running_loop().create_task(self._admit(request, QueryParams(query)))

    async def _admit(self, request: Request, query: QueryParams) -> None:
        """Check the credentials, then subscribe; until then no event is sent and client frames wait."""
        stream = self.stream
        assert stream is not None
        state = stream.app
        try:
            principal = await admit(state, request.headers, query.get("ticket"))
            stream_request = parse_request(query)
            selection = stream_request.selection(principal.owner, state.topics)
            await stream.open(selection, principal.key_id, stream_request.text_topic)
        except Exception as exc:  # noqa: BLE001 - see _failed
            self._opened()
            self._failed(exc)
            return
        self._opened()
        self.pump = None
        if self.ending:
            self._release()
            return
        keepalive = _keepalives.get(state.hub)
        if keepalive is None:
            keepalive = _keepalives[state.hub] = _Keepalive(
                state.settings.ws_ping_interval, state.settings.ws_ping_timeout
            )
        keepalive.add(self)
        stream.subscription.on_end = self._refuse
        if stream_request.resume is None and not stream_request.jobs:
            self._go_live()
        else:
            self._start_pump(stream_request)
        early, self.early = self.early, []
        for frame in early:
            self._frame(frame)
        self._flush()

    def _opened(self) -> None:
        """Complete the handshake (send the 101 held back while the connection was admitted)."""
        handshake, self.handshake = self.handshake, None
        if handshake is not None and self.conn is not None and not self.ending:
            self.conn.send_response(handshake)
            self._flush()

    def _frame(self, frame: Frame) -> None:
        stream = self.stream
        if stream is None or self.ending:
            return
        if stream.state is StreamState.ADMITTING:
            if len(self.early) >= MAX_EARLY_FRAMES:
                self._refuse(Refused("too many messages before the connection was admitted"))
            else:
                self.early.append(frame)
            return
        if frame.opcode is Opcode.PONG:
            self.pong_due = False
            return
        if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return  # ping and close frames: the sans-I/O protocol answers them
        try:
            if frame.opcode is Opcode.TEXT and frame.fin:
                stream.receive(bytes(frame.data).decode())
            elif frame.opcode is Opcode.BINARY:
                stream.receive(None)
            else:
                raise Refused("fragmented messages are not supported")
        except UnicodeDecodeError:
            self._refuse(Refused("a text message must be UTF-8"))
            return
        except Refused as exc:
            self._refuse(exc)
            return
        if self.pump is None:
            self._start_pump(None)

    # --- sending

    def _deliver(self, item: Outgoing) -> None:
        """Direct delivery from the hub (the stream is ``LIVE``): the shared frame, repeats skipped. The frames of
        one read of the stream are written together, in one system call: at the read's last event, or (when this
        connection does not get that one) right after the hub is done with the read (:meth:`_write_out`). A lone
        event is written at once. Every other write writes the held frames first, so the order on the wire is the
        order of delivery."""
        key = item.key
        if key is not None:
            if key <= self.sent:
                return
            self.sent = key
        out = self.out
        out.append(item.frame)
        if not item.more:
            self._write_out()
        elif len(out) == 1:
            asyncio.get_running_loop().call_soon(self._write_out)

    def _write_out(self) -> None:
        """Write the frames :meth:`_deliver` holds, in order, in one write."""
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def send(self, item: Outgoing) -> None:
        """The :class:`api.streams.session.Sender` side, used by the pump: wait while the socket buffer is full."""
        self._write_out()
        while self.paused:
            if self.writable is None or self.writable.done():
                self.writable = asyncio.get_running_loop().create_future()
            await self.writable
        assert self.transport is not None
        self.transport.write(item.frame)

    async def heartbeat(self) -> None:  # pragma: no cover - keep-alive is the ping timer
        return None

    def _go_live(self) -> None:
        assert self.stream is not None
        self.stream.state = StreamState.LIVE
        self.stream.subscription.direct = self._deliver

    def _start_pump(self, request: StreamRequest | None) -> None:
        assert self.stream is not None
        self.stream.state = StreamState.CATCHING_UP
        self.stream.subscription.direct = None
        self.pump = asyncio.get_running_loop().create_task(self._run_pump(request))

    async def _run_pump(self, request: StreamRequest | None) -> None:
        """Send what the mailbox holds (first the backlog, when starting) until nothing waits; then go direct."""
        stream = self.stream
        assert stream is not None
        try:
            start = await stream.start_point(request) if request is not None else None
            self.sent = await stream.run(self, start, sent=self.sent, until_idle=True)
        except Exception as exc:  # noqa: BLE001 - see _failed
            self._failed(exc)
            return
        self.pump = None
        if not self.paused and not self.ending:
            self._go_live()

    def _failed(self, exc: Exception) -> None:
        """The pump's step ended in a refusal (closed with its code) or an unexpected error: a Redis or job store
        failure closes this connection with 1011 (logged with its traceback), never the api."""
        self.pump = None
        if not isinstance(exc, Refused):
            log.error("event stream failed; closed with 1011", exc_info=exc)
            exc = INTERNAL_ERROR
        self._refuse(exc)

    # --- closing

    def _too_slow(self) -> None:
        self._stop_slow_timer()
        if not self.ending:
            log.info("event stream too slow; closed with 1013", code=TOO_SLOW.ws_code)
            self._refuse(TOO_SLOW)

    def _stop_slow_timer(self) -> None:
        if self.slow_timer is not None:
            self.slow_timer.cancel()
            self.slow_timer = None

    def _refuse(self, refused: Refused) -> None:
        """Send the error message and the close code; drop the connection if the close is not answered in time."""
        if self.ending or self.conn is None:
            return
        with contextlib.suppress(InvalidState):
            self.conn.send_text(refused.message.encode())
        self._close(refused.ws_code, refused.close_reason)

    def _close(self, code: int, reason: str) -> None:
        if self.ending or self.conn is None or self.transport is None:
            return
        self._release(StreamState.CLOSING)
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
        self._flush()
        self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.abort)

    def _release(self, state: StreamState = StreamState.CLOSED) -> None:
        """Stop receiving events: leave the hub, the keep-alive and any running pump; the stream is ``state``."""
        stream = self.stream
        if stream is not None:
            keepalive = _keepalives.get(stream.app.hub)
            if keepalive is not None:
                keepalive.sockets.discard(self)
            stream.close()
            stream.state = state
        pump, self.pump = self.pump, None
        if pump is not None and pump is not _current_task():
            pump.cancel()

    def _flush(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None:
            return
        self._write_out()  # the frames delivered before what the protocol answers now (a pong, a close)
        for data in conn.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()
        if conn.state.name == "CLOSED" and not self.ending:
            self._release()

    def keepalive(self, now: float, timeout: float) -> None:
        """Called by the shared timer: ping, or drop the connection if the last ping went unanswered."""
        if self.ending or self.conn is None or self.transport is None:
            return
        if self.pong_due:
            if now - self.ping_at >= timeout and (self.paused or self.transport.get_write_buffer_size() > 0):
                self._too_slow()  # the ping may still wait behind what the client has not read
                return
            if now - self.ping_at >= timeout:
                log.info("websocket keepalive timeout; dropped")
                self._release()
                self.transport.abort()
            return
        self.pong_due = True
        self.ping_at = now
        with contextlib.suppress(InvalidState):
            self.conn.send_ping(os.urandom(4))
        self._flush()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
