"""Flower, locked: one HTTP basic-auth gate in front of every path Flower serves, its ``/metrics`` included.

Flower's own ``--basic-auth`` guards only the handlers it marks as authenticated; ``/metrics`` stays open
(CVE-2022-30034, Flower issue 1342) and so do static files and ``/logout``. Here the HTTP server never sees
Flower's routing directly: it talks to :class:`Gate`, which answers 401 to any request without the right
credentials before Flower picks a handler, so a path Flower adds later is covered too. ``/healthcheck``
(``OK``, nothing else) is the one public path, for container health checks.

Flower learns about tasks from the job event stream, not from Celery task events (workers send none):
:mod:`conveyor.ops.flower_feed` folds the stream into Flower's state in this process. Flower still hears the
workers' own heartbeats (``worker-*`` events), so it lists them; :mod:`conveyor.ops.flower_workers` keeps
``/api/workers`` to the live ones. The Broker page and ``/api/queues/length`` come from
:mod:`conveyor.ops.flower_broker` (every queue's depth on Conveyor's Redis).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import secrets
import signal
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.routing import Router
from tornado.web import Application, RequestHandler

from conveyor import logs
from conveyor.ops import flower_broker
from conveyor.ops.flower_feed import FlowerFeed, install
from conveyor.ops.flower_workers import WorkerWatch
from conveyor.settings import Settings

log = logs.get("conveyor.ops.flower")

REALM = "flower"
#: Paths answered without credentials, for ``GET`` and ``HEAD`` only. Flower's ``/healthcheck`` says ``OK``.
PUBLIC_PATHS = frozenset({"/healthcheck"})
#: Seconds after which Flower forgets the metrics of a worker that went offline.
PURGE_OFFLINE_WORKERS = 60
#: The columns of Flower's Tasks page: the result column shows a running job's progress, then its result.
TASKS_COLUMNS = "name,uuid,state,result,received,started,runtime,retries,exception,worker"
#: Largest request body read (Flower's own are small JSON; tornado's default is 100 MiB, before any check).
MAX_BODY_BYTES = 1024 * 1024


class InvalidCredentials(ValueError):
    """The configured user or password cannot be used for HTTP basic auth (the message never shows them)."""


class BasicAuth:
    """One user and password for HTTP basic auth. Compares in constant time; its repr never shows the password."""

    def __init__(self, user: str, password: str) -> None:
        if not user or ":" in user or not _printable_ascii(user):
            raise InvalidCredentials("the Flower user must be printable ASCII without ':' (CONVEYOR_FLOWER_USER)")
        if not password or not _printable_ascii(password):
            raise InvalidCredentials("the Flower password must be printable ASCII (CONVEYOR_FLOWER_PASSWORD)")
        self.user = user
        self._pair = f"{user}:{password}"

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r})"

    def accepts(self, authorization: str | None) -> bool:
        """True only for an ``Authorization: Basic`` header carrying exactly this user and password."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            offered = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(offered, self._pair.encode())

    def flower_option(self) -> list[str]:
        """The value of Flower's ``basic_auth`` option, so that Flower's own checks agree with the gate."""
        return [self._pair]


def _printable_ascii(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


def _no_access_log(_handler: RequestHandler) -> None:
    """Access logs are off everywhere in Conveyor (docs/SECURITY.md)."""


class _Unauthorized(RequestHandler):
    """401 with a basic-auth challenge, whatever the method, path or body."""

    def check_xsrf_cookie(self) -> None:
        """No XSRF check: the answer is 401 whatever the request."""

    def prepare(self) -> None:
        self._challenge()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """An error before ``prepare`` (405 for a method tornado does not know) still gets only the challenge."""
        self._challenge()

    def _challenge(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish("401: Flower needs its user and password\n")


class Gate(Router):
    """Routes a request to ``app`` only if it carries ``auth``'s credentials (or asks for a public path);
    every other request gets 401 from a bare application that shares nothing with Flower. The paths of
    :data:`conveyor.ops.flower_broker.HANDLERS` go to Conveyor's handlers, inside ``app``."""

    def __init__(self, app: Application, auth: BasicAuth) -> None:
        self.app = app
        self.auth = auth
        self._denied = Application(log_function=_no_access_log)

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs: Any) -> httputil.HTTPMessageDelegate:
        public = request.path in PUBLIC_PATHS and request.method in ("GET", "HEAD")
        if public or self.auth.accepts(request.headers.get("Authorization")):
            replaced = flower_broker.HANDLERS.get(request.path)
            if replaced is not None:
                return self.app.get_handler_delegate(request, replaced)
            return self.app.find_handler(request, **kwargs)
        return self._denied.get_handler_delegate(request, _Unauthorized)


def locked_flower(settings: Settings, auth: BasicAuth, io_loop: IOLoop) -> tuple[Any, Gate, FlowerFeed]:
    """Flower's application for Conveyor's Celery app, the gate that must be served in its place, and the feed
    that fills Flower's state from the job event stream (to be run on ``io_loop``). Flower's options come from here
    only (no ``flowerconfig.py``, no ``FLOWER_*`` variables, no argv)."""
    from flower.urls import settings as flower_settings
    from tornado.options import options

    from conveyor.queue.app import create_celery

    options.basic_auth = auth.flower_option()
    options.purge_offline_workers = PURGE_OFFLINE_WORKERS
    # Flower would broadcast ``enable_events`` every 5 s, turning task events on in every worker.
    options.enable_events = False
    options.tasks_columns = TASKS_COLUMNS
    app = flower_broker.ConveyorFlower(
        redis_url=settings.effective_redis_url,
        capp=create_celery(settings),
        options=options,
        io_loop=io_loop,
        **{**flower_settings, "cookie_secret": secrets.token_urlsafe(32), "log_function": _no_access_log},
    )
    return app, Gate(app, auth), install(app, settings)


def serve(settings: Settings) -> int:
    """Run Flower until SIGTERM or SIGINT. Every path but ``PUBLIC_PATHS`` answers 401 without the credentials
    of ``settings.flower_credentials()``; the password is never logged nor put in argv or the environment.
    Returns 2, without listening, when there are no usable credentials (production needs a password)."""
    try:
        auth = BasicAuth(*settings.flower_credentials())
    except (RuntimeError, InvalidCredentials) as exc:
        log.error("flower not started", reason=str(exc))
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app, gate, feed = locked_flower(settings, auth, IOLoop.current())
    feeding = loop.create_task(feed.run())
    watching = loop.create_task(WorkerWatch(app).run())
    server = HTTPServer(gate, max_body_size=MAX_BODY_BYTES)
    sockets = bind_sockets(settings.flower_port, address=settings.flower_host)
    server.add_sockets(sockets)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.stop)
    host, port = sockets[0].getsockname()[:2]
    log.info("flower listening", url=f"http://{host}:{port}", user=auth.user, public=",".join(PUBLIC_PATHS))
    try:
        app.start()
    finally:
        server.stop()
        app.stop()
        feeding.cancel()
        watching.cancel()
        loop.run_until_complete(asyncio.gather(feeding, watching, return_exceptions=True))
        loop.run_until_complete(feed.client.aclose())
        loop.close()
    log.info("flower stopped")
    return 0
