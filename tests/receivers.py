"""Real peers for notification tests: an HTTP receiver and an SMTP server (aiosmtpd), each in a thread.

Both answer from a script per path (HTTP) or per first recipient (SMTP), so tests running side by side on one
receiver don't disturb each other. Each script's last answer repeats once the others are used up.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from conveyor.ops.redis_server import free_port


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer. ``hang`` seconds are waited before answering (a peer that never answers)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: float = 0.0
    #: Send only this many bytes of the body, then stall (for ``hang`` seconds, or until the receiver stops).
    stall_after: int | None = None


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class HttpReceiver:
    """A real HTTP server on 127.0.0.1 recording every request it gets."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = receiver._next(self.path, Received(self.path, headers, body, time.time()))
                if reply.hang and reply.stall_after is None and receiver.released.wait(reply.hang):
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.stall_after is not None:
                    self.wfile.write(reply.body[: reply.stall_after])
                    self.wfile.flush()
                    receiver.released.wait(reply.hang or 30)
                    return
                self.wfile.write(reply.body)

            do_GET = do_POST  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (a timeout test) closes the socket under a handler

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-receiver", daemon=True)

    def _next(self, path: str, request: Received) -> Reply:
        with self.lock:
            self.received.append(request)
            script = self.scripts.get(path) or [Reply()]
            return script.pop(0) if len(script) > 1 else script[0]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> str:
        """Answer requests to ``path`` with ``replies`` in turn; returns the path's URL."""
        with self.lock:
            self.scripts[path] = list(replies)
        return self.url(path)

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(got := self.requests(path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return got


@contextlib.contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        receiver.server.shutdown()
        receiver.server.server_close()


class Mailbox:
    """An aiosmtpd handler: answers DATA from a script keyed by the first recipient, keeps accepted mail."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[str]] = {}
        self.delivered: list[tuple[Envelope, EmailMessage]] = []
        self.attempts: list[str] = []
        self.lock = threading.Lock()

    def script(self, recipient: str, *replies: str) -> str:
        """Answer DATA for mail whose first recipient is ``recipient`` with ``replies`` in turn (e.g. ``"451 later"``,
        ``"250 OK"``)."""
        with self.lock:
            self.scripts[recipient] = list(replies)
        return recipient

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        first = envelope.rcpt_tos[0]
        with self.lock:
            self.attempts.append(first)
            script = self.scripts.get(first) or ["250 OK"]
            reply = script.pop(0) if len(script) > 1 else script[0]
            if reply.startswith("250"):
                content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
                self.delivered.append((envelope, message_from_bytes(content, policy=policy.default)))
        return reply

    def messages_to(self, recipient: str) -> list[tuple[Envelope, EmailMessage]]:
        with self.lock:
            return [(e, m) for e, m in self.delivered if recipient in e.rcpt_tos]

    def attempts_for(self, recipient: str) -> int:
        with self.lock:
            return self.attempts.count(recipient)


SMTP_USER, SMTP_PASSWORD = "conveyor", "smtp-test-password"


def _authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1; AUTH (PLAIN, LOGIN) with ``SMTP_USER``/``SMTP_PASSWORD``
    is offered (without TLS) but not required. Yields the mailbox and the port."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()
