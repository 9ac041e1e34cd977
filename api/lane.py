"""The submission lane: well-formed ``POST /notifications`` and ``POST /notifications:batch`` requests accepted
without FastAPI's per-request machinery.

FastAPI spends, per request, more than the whole submission costs (routing, its middleware layers, dependency
resolution, body handling, response validation). The routes stay FastAPI routes — they define the OpenAPI
document, and they answer every request the lane does not take — and the lane, an ASGI middleware behind
:class:`api.guard.Guard` (so authenticated and rate-limited the same way), runs the routes' own code
(:func:`api.routes.notifications.accept_one` / ``accept_batch``) with the routes' own models for the common case:

- a JSON body (``Content-Type: application/json``) that parses (orjson) and validates against the route's model:
  the lane answers exactly what the route would (202 and the same JSON, ``Idempotent-Replayed``, the refusals of
  the route's code as ``{"detail": …}``, 503 when the job store is down);
- anything else — another content type, a body that is not JSON or does not validate — is handed to FastAPI with
  its body, unchanged, so every error answer is FastAPI's own.

``tests/api/test_lane.py`` checks that both paths answer the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.bodies import read_body, replay
from api.errors import STORE_DOWN, ServiceUnavailable, error, unavailable
from api.headers import headers_of
from api.routes.notifications import accept_batch, accept_one
from conveyor.schemas import Accepted, BatchAccepted, NotificationBatch, NotificationRequest
from conveyor.store.db import UNAVAILABLE

if TYPE_CHECKING:
    from api.state import AppState

_ONE: TypeAdapter[NotificationRequest] = TypeAdapter(NotificationRequest)
_BATCH: TypeAdapter[NotificationBatch] = TypeAdapter(NotificationBatch)
_ACCEPTED: TypeAdapter[Accepted] = TypeAdapter(Accepted)
_BATCH_ACCEPTED: TypeAdapter[BatchAccepted] = TypeAdapter(BatchAccepted)
_PATHS = frozenset({"/notifications", "/notifications:batch"})
_JSON = frozenset({"application/json", "application/json; charset=utf-8"})


class SubmissionLane:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS:
            await self.app(scope, receive, send)
            return
        headers = headers_of(scope)
        if (headers.get("content-type") or "").lower() not in _JSON:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client left
            return
        batch = scope["path"] == "/notifications:batch"
        try:
            data = scope["state"]["json"] if "json" in scope["state"] else orjson.loads(body)
            model: NotificationRequest | NotificationBatch = (_BATCH if batch else _ONE).validate_python(data)
        except (orjson.JSONDecodeError, ValidationError):
            await self.app(scope, replay(body, receive), send)
            return
        state: AppState = scope["state"]["conveyor"]
        principal = scope["state"]["principal"]
        key = headers.get("idempotency-key")
        sink = Response()
        try:
            if isinstance(model, NotificationBatch):
                answer = _BATCH_ACCEPTED.dump_json(await accept_batch(state, principal, model, key, sink))
            else:
                answer = _ACCEPTED.dump_json(await accept_one(state, principal, model, key, sink))
        except HTTPException as exc:
            await error(exc.status_code, str(exc.detail), exc.headers)(scope, receive, send)
            return
        except UNAVAILABLE:
            await unavailable(STORE_DOWN)(scope, receive, send)
            return
        except ServiceUnavailable as exc:
            await unavailable(exc.detail)(scope, receive, send)
            return
        extra = [(name.encode(), value.encode()) for name, value in sink.headers.items() if name != "content-length"]
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode()), *extra]
        await send({"type": "http.response.start", "status": 202, "headers": raw})
        await send({"type": "http.response.body", "body": answer})
