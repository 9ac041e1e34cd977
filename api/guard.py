"""What every HTTP request passes before a route sees it: authentication, the rate limit, size and time limits.

In order, for each request (pure ASGI, so streaming bodies and responses are untouched):

1. public paths (``PUBLIC``, the console's pages and files, ``/metrics`` with its own scrape token, and a room's
   ``/events``, which takes the room's join token) go straight through; every other path needs a valid API
   key — ``/events`` also takes a ticket, after its ``Origin`` is checked (403) — else ``401`` with
   ``WWW-Authenticate`` (an unknown path answers 401 too, so routes are not revealed to strangers);
2. the key's token bucket (:mod:`api.ratelimit`) must hold a token, else ``429`` with ``Retry-After``;
3. a body other than an upload's may be at most ``CONVEYOR_MAX_JSON_BYTES``, else ``413`` (at once when
   ``Content-Length`` says so, otherwise as soon as the body passes the limit);
4. a request may take ``CONVEYOR_REQUEST_TIMEOUT_SECONDS`` (``503``), except streams — uploads and
   downloads, where the limit is the longest pause between body chunks (``408``), and ``/events``;
5. an upload's body must arrive at ``CONVEYOR_MIN_UPLOAD_BYTES_PER_SECOND`` at least, averaged over each
   ``CONVEYOR_UPLOAD_RATE_WINDOW_SECONDS`` (``408`` at the end of the first window that fell short).

Once the key is good, the connection is told so (:func:`api.connections.authenticated`): it no longer counts against
its client address's cap of unauthenticated connections.

The caller's :class:`conveyor.store.apikeys.Principal` is left in the request state for routes (``api.deps``).
WebSocket connections authenticate in their own handshake (``api.routes.ws``, ``api.streams.native``).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Unauthenticated, bearer, origin_allowed
from api.bodies import BodyRefused, NotJson, check_json, read_body, replay
from api.connections import authenticated
from api.errors import REDIS_DOWN, STORE_DOWN, error, unavailable
from api.headers import headers_of
from api.instruments import PATH as METRICS_PATH
from api.ratelimit import retry_after
from api.routes.console import PATHS as CONSOLE_PATHS
from conveyor import logs
from conveyor.redis_client import REDIS_ERRORS
from conveyor.store.jobstore import UNAVAILABLE

if TYPE_CHECKING:
    from api.state import AppState

log = logs.get("conveyor.api")

#: Paths anyone may request: the liveness check and the API's own description.
PUBLIC = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
_UPLOAD = "/uploads"
_DOWNLOAD = re.compile(r"^/uploads/[^/]+/content$")
_EVENTS = "/events"
#: A room read as Server-Sent Events: its join token is checked by the route (api/routes/rooms.py), no key needed.
_ROOM_EVENTS = re.compile(r"^/rooms/[^/]+/events$")


def _public(path: str) -> bool:
    """Paths the guard lets through without a key: each checks its own credentials or has none to check (``/metrics``
    its scrape token, a room's ``/events`` its join token, the console's static files none)."""
    return (
        path in PUBLIC
        or path == METRICS_PATH
        or _ROOM_EVENTS.match(path) is not None
        or CONSOLE_PATHS.match(path) is not None
    )


# BaseException, so that no route's ``except Exception`` (FastAPI's body parsing has one) turns them into a 400.
class _BodyTooLarge(BaseException):
    pass


class _BodyStalled(BaseException):
    pass


class _BodyTooSlow(BaseException):
    pass


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        state: AppState = scope["state"]["conveyor"]
        settings = state.settings
        headers = headers_of(scope)
        path: str = scope["path"]
        if path == _EVENTS and not origin_allowed(headers, settings.origins):
            await error(403, "origin not allowed")(scope, receive, send)
            return
        try:
            if path == _EVENTS:
                ticket = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("ticket")
                principal = await state.auth.stream(headers, ticket)
            else:
                principal = await state.auth.key(bearer(headers))
        except Unauthenticated as exc:
            await error(401, exc.detail, {"www-authenticate": exc.www_authenticate})(scope, receive, send)
            return
        except UNAVAILABLE as exc:
            log.warning("job store unavailable for authentication", error=repr(exc))
            await unavailable(STORE_DOWN)(scope, receive, send)
            return
        except REDIS_ERRORS as exc:  # a ticket is taken from Redis
            log.warning("redis unavailable for authentication", error=repr(exc))
            await unavailable(REDIS_DOWN)(scope, receive, send)
            return
        authenticated(scope)
        wait = await state.limiter.take(principal.key_id)
        if wait > 0:
            detail = f"rate limit of {settings.rate_limit_per_second:g} requests/s per key reached; retry later"
            await error(429, detail, {"retry-after": retry_after(wait)})(scope, receive, send)
            return
        scope["state"]["principal"] = principal
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            await error(400, "the request's path or query contains a NUL character")(scope, receive, send)
            return

        upload = path == _UPLOAD and scope["method"] == "POST"
        stream = upload or path == _EVENTS or _DOWNLOAD.match(path) is not None
        limit = None if upload else settings.max_json_bytes
        length = headers.get("content-length")
        if limit is not None and length is not None and length.isdigit() and int(length) > limit:
            await error(413, f"a request body is at most {limit} bytes")(scope, receive, send)
            return
        timeout = settings.request_timeout_seconds
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        received = 0
        receiving = False
        body_done = False
        pace = (
            _Pace(settings.min_upload_bytes_per_second if upload else 0, settings.upload_rate_window_seconds)
            if stream
            else None
        )

        async def guarded_receive() -> Message:
            nonlocal received, receiving, body_done
            if body_done:  # the body is in: what is left to receive is the client leaving, whenever it does
                return await receive()
            receiving = True  # left set when the wait is cancelled: the timeout then blames the body
            message = await receive() if pace is None else await pace.receive(receive, timeout)
            receiving = False
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                received += chunk
                if pace is not None:
                    pace.took(chunk)
                body_done = not message.get("more_body", False)
                if limit is not None and received > limit:
                    raise _BodyTooLarge
            return message

        try:
            if stream:
                await self.app(scope, guarded_receive, guarded_send)
            else:
                async with asyncio.timeout(timeout):
                    app_receive: Receive | None = guarded_receive
                    if _json(headers) and scope["method"] in _WITH_BODY:
                        app_receive = await _checked(scope, guarded_receive, send)
                    if app_receive is not None:
                        await self.app(scope, app_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await error(413, f"a request body is at most {limit} bytes")(scope, receive, send)
        except _BodyStalled:
            if not started:
                await error(408, f"no request body data for {timeout:g} s")(scope, receive, send)
        except _BodyTooSlow:
            log.info("upload too slow; 408", path=path, key_id=principal.key_id, bytes=received)
            if not started:
                detail = (
                    f"the upload arrived slower than {settings.min_upload_bytes_per_second} bytes/s over "
                    f"{settings.upload_rate_window_seconds:g} s; send it again over a faster connection"
                )
                await error(408, detail)(scope, receive, send)
        except TimeoutError:
            if started:
                log.warning("request timed out", path=path, after_seconds=timeout)
            elif receiving:
                await error(408, f"the request body did not arrive within {timeout:g} s")(scope, receive, send)
            else:
                log.warning("request timed out", path=path, after_seconds=timeout)
                await unavailable(f"the request took longer than {timeout:g} s")(scope, receive, send)


_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _Pace:
    """A streamed body's receive deadlines: at most ``stall`` seconds of waiting for each chunk (:class:`_BodyStalled`),
    and at least ``rate`` bytes per second over each ``window`` since the body began (:class:`_BodyTooSlow`; a
    ``rate`` of 0 checks none)."""

    def __init__(self, rate: int, window: float) -> None:
        self.rate = rate
        self.window = window
        self.loop = asyncio.get_running_loop()
        self.window_end = self.loop.time() + window
        self.window_bytes = 0

    def took(self, size: int) -> None:
        self.window_bytes += size

    async def receive(self, receive: Receive, stall: float) -> Message:
        """The next message of ``receive``, unless a deadline passes first."""
        stall_at = self.loop.time() + stall
        while True:
            now = self.loop.time()
            if self.rate and now >= self.window_end:
                if self.window_bytes < self.rate * self.window:
                    raise _BodyTooSlow
                self.window_end, self.window_bytes = now + self.window, 0
            try:
                async with asyncio.timeout_at(min(stall_at, self.window_end) if self.rate else stall_at):
                    return await receive()
            except TimeoutError:
                if self.loop.time() >= stall_at:
                    raise _BodyStalled from None


def _json(headers: dict[str, str]) -> bool:
    kind = (headers.get("content-type") or "").partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def _checked(scope: Scope, receive: Receive, send: Send) -> Receive | None:
    """Read a JSON body whole and refuse what Conveyor does not take (:mod:`api.bodies`); the route then gets the
    body again, and its parsed value in ``scope["state"]["json"]``. ``None`` when answered here (or the client left)."""
    body = await read_body(receive)
    if body is None:
        return None
    try:
        scope["state"]["json"] = check_json(body) if body else None
    except BodyRefused as exc:
        await error(exc.status, exc.detail)(scope, receive, send)
        return None
    except NotJson:
        pass  # the route's framework names the problem
    return replay(body, receive)
