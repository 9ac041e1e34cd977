"""A catcher for development: an SMTP server and an HTTP server on 127.0.0.1 that accept everything and print it.

``conveyor run`` starts it in development (when no SMTP server is configured) so that the README's examples work
as written on a laptop: ``email`` notifications go to its SMTP port, ``webhook`` and ``http`` notifications may be
sent to its HTTP port. Nothing it receives is stored or sent on. Webhooks are checked against the signing secret
``conveyor run`` gave the workers (``CONVEYOR_WEBHOOK_SECRET``), and the line says whether the signature holds.
Every HTTP request is answered ``200`` with a small JSON body naming what was received, so an ``http``
notification's result shows a parsed JSON answer.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import signal
import sys
import threading
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from conveyor.webhooks import InvalidSignature, verify

#: Characters of a message's text, or of a request's body, shown.
SHOWN_CHARACTERS = 2000
#: Largest request body read.
MAX_BODY_BYTES = 1024 * 1024


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def mail_summary(envelope: Envelope) -> str:
    """What the catcher prints for one message: envelope, subject and its text (cut)."""
    raw = envelope.original_content or envelope.content or b""
    message = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=email.policy.default)
    lines = [f"mail from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}", f"  Subject: {message['Subject']}"]
    if isinstance(message, EmailMessage):
        body = message.get_body(preferencelist=("plain", "html"))
        if body is not None:
            content = body.get_content()
            text = content if isinstance(content, str) else repr(content)
            lines += [f"  | {line}" for line in text[:SHOWN_CHARACTERS].splitlines()]
    return "\n".join(lines)


class _Mail:
    """aiosmtpd handler: accept every message and print it."""

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        _say(mail_summary(envelope))
        return "250 OK: caught, not sent"


def request_summary(method: str, path: str, headers: dict[str, str], body: bytes, secret: str | None) -> str:
    """What the catcher prints for one HTTP request: its line, whether a webhook's signature holds, its body (cut)."""
    line = f"http {method} {path}"
    lowered = {name.lower(): value for name, value in headers.items()}
    if "webhook-signature" in lowered:
        if secret is None:
            line += "  (webhook; no CONVEYOR_WEBHOOK_SECRET to check it with)"
        else:
            try:
                verify(secret, lowered, body)
                line += f"  (webhook {lowered.get('webhook-id')}: signature valid)"
            except InvalidSignature as exc:
                line += f"  (webhook: signature INVALID: {exc})"
    shown = body[:SHOWN_CHARACTERS].decode(errors="replace")
    return line + (f"\n  | {shown}" if shown else "")


def _http_handler(secret: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "conveyor-catcher"

        def _answer(self) -> None:
            length = min(int(self.headers.get("content-length") or 0), MAX_BODY_BYTES)
            body = self.rfile.read(length) if length else b""
            _say(request_summary(self.command, self.path, dict(self.headers.items()), body, secret))
            answer = json.dumps({"caught": True, "method": self.command, "path": self.path, "bytes": len(body)})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer.encode())

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return None  # each request is printed once, by _answer

    return Handler


def serve(smtp_port: int, http_port: int, secret: str | None) -> int:
    """Serve both until SIGTERM or SIGINT; returns 0."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command at INFO
    http = ThreadingHTTPServer(("127.0.0.1", http_port), _http_handler(secret))
    threading.Thread(target=http.serve_forever, name="catcher-http", daemon=True).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def factory() -> Any:
            return SMTP(_Mail(), hostname="conveyor-catcher", data_size_limit=10 * 1024 * 1024)

        server = await loop.create_server(factory, "127.0.0.1", smtp_port)
        _say(f"catching mail on 127.0.0.1:{smtp_port} and HTTP on 127.0.0.1:{http_port}: printed here, never sent")
        async with server:
            await stop.wait()

    try:
        asyncio.run(main())
    finally:
        http.shutdown()
        http.server_close()
    return 0
