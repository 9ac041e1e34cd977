"""A request's headers as a plain dict, made once per request and kept in its scope.

Starlette's ``Headers`` scans the whole header list on every lookup (and raises, then catches, ``KeyError`` for a
header that is absent); the guard and the submission lane look up five or six headers per request, so the list is
read once here instead.
"""

from __future__ import annotations

from starlette.types import Scope

_KEY = "conveyor.headers"


def headers_of(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI servers send names in lower case; lowered again anyway),
    latin-1 decoded; where a name repeats, its first value, as ``Headers[name]`` gives. The same dict for the whole
    request: do not change it."""
    found: dict[str, str] | None = scope.get(_KEY)
    if found is None:
        found = {}
        for name, value in scope["headers"]:
            found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        scope[_KEY] = found
    return found
