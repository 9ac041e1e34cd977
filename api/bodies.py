"""Request bodies: read whole (within the guard's limits), and the JSON Conveyor refuses before any route sees it.

JSON that parses but that Conveyor cannot store faithfully, or that would break later on one backend, is refused at
the edge with a ``{"detail": …}`` naming the problem, never a 500 further in:

- a body that is not UTF-8, or a string with a lone surrogate (``"\\ud800"``): 400;
- ``NaN``, ``Infinity`` or a number too large for a double: 422 (JSON has no such numbers; they were stored as
  ``null``);
- an integer outside the 64-bit range (-2**63 to 2**64-1): 422 (it would come back as another number);
- a NUL character in any string or key: 422 (PostgreSQL cannot store it in text).

A body that is not JSON at all is left to the route, whose framework answers it (422 naming the position).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from starlette.types import Message, Receive

_LONG_NUMBER = re.compile(rb"\d{19}")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class BodyRefused(Exception):
    """The body is JSON Conveyor does not take: ``status`` and ``detail`` are the answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class NotJson(Exception):
    """The body does not parse as JSON at all (the route's framework says where)."""


def check_json(body: bytes) -> Any:
    """The body parsed, if it is JSON Conveyor takes; raises :class:`BodyRefused` for JSON it refuses (see the
    module docstring) and :class:`NotJson` for a body that is not JSON."""
    suspect = _LONG_NUMBER.search(body) is not None or b"\\u0000" in body
    if not suspect:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the slow path below says why (or that it is not JSON)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused(400, "the request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_constant, parse_int=_int, parse_float=_float)
    except BodyRefused:
        raise
    except ValueError:
        raise NotJson from None
    _strings(data)
    return data


def _constant(name: str) -> Any:
    raise BodyRefused(422, f"{name} is not a JSON number; send a finite number or null")


def _int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise BodyRefused(422, "an integer in the body is beyond 64 bits; send it as a string")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyRefused(422, f"the number {text[:40]} is too large; send it as a string")
    return value


def _strings(value: Any) -> None:
    """Refuse lone surrogates (400) and NUL characters (422) in every string and key."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _string(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _string(key)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _string(text: str) -> None:
    if "\x00" in text:
        raise BodyRefused(422, "a string in the body contains a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyRefused(400, "a string in the body contains a lone surrogate (an invalid \\u escape)") from None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` when the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then whatever the client sends next (its leaving)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
        return message

    return again
