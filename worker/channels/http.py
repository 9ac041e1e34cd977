"""Channel ``http``: one HTTP request in the background (GET a URL, call an API), made as every outbound request is
(:mod:`worker.channels.outbound`: pinned addresses, the same refusal of private addresses as webhooks, no
redirects, a capped read). The answer becomes the job's result: its status, selected headers, and its body (parsed
when JSON; cut at ``CONVEYOR_HTTP_MAX_RESPONSE_BYTES`` with ``body_cut``).

A status in ``expect`` (default: any 2xx) is success. Timeouts, connection errors, 408, 429 and 5xx are transient
(retried with backoff, ``Retry-After`` honoured); any other status is permanent.
"""

from __future__ import annotations

from typing import Any

import orjson

from conveyor import __version__
from conveyor.schemas import HttpNotification
from conveyor.settings import Settings
from worker.channels import DeliveryError, Sent, outbound

TRANSIENT_STATUS = frozenset({408, 429})
#: Response headers kept in the job's result.
KEPT_HEADERS = ("content-type", "content-length", "etag", "last-modified", "location", "retry-after", "date")
EXCERPT_CHARS = 200


def send(settings: Settings, request: HttpNotification) -> Sent:
    """Make the request once. Returns the expected answer; raises :class:`DeliveryError` otherwise."""
    headers = {"User-Agent": f"Conveyor/{__version__}", **request.headers}
    content: bytes | None = None
    if request.json_body is not None:
        content = orjson.dumps(request.json_body)
        headers.setdefault("Content-Type", "application/json")
    elif request.body is not None:
        content = request.body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    answer = outbound.request(
        request.method,
        str(request.url),
        headers=headers,
        content=content,
        timeout=request.timeout_seconds,
        cap=settings.http_max_response_bytes,
        allow_private=settings.webhook_allow_private,
    )
    status = answer.status
    text = answer.body.decode("utf-8", "replace")
    reply = f"{status} {answer.reason}".strip() + (f": {text[:EXCERPT_CHARS]}" if text else "")
    expected = status in request.expect if request.expect is not None else 200 <= status < 300
    if expected:
        return Sent(status, reply, result(request, answer, text))
    message = f"{request.method} {request.url} answered {status} {answer.reason}".strip()
    if status in TRANSIENT_STATUS or status >= 500:
        retry_after = outbound.parse_retry_after(answer.headers.get("retry-after"))
        raise DeliveryError(message, transient=True, status_code=status, reply=reply, retry_after=retry_after)
    raise DeliveryError(message, transient=False, status_code=status, reply=reply)


def result(request: HttpNotification, answer: outbound.Answer, text: str) -> dict[str, Any]:
    """What the job's result says of the answer."""
    body: Any = text
    if not answer.cut and "json" in answer.headers.get("content-type", ""):
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            body = text
    kept = {name: answer.headers[name] for name in KEPT_HEADERS if name in answer.headers}
    return {
        "method": request.method,
        "url": str(request.url),
        "status_code": answer.status,
        "headers": kept,
        "body": body,
        "body_cut": answer.cut,
    }
