"""Redis clients: the one factory every process uses, and decoding Redis's byte replies.

Creating a client opens no connection: its pool connects on first use. After a Redis restart every pooled
connection is stale; each command is tried again on a fresh one with exponential backoff, for a short while on
request paths (the caller answers 503 soon) or long enough to ride out a restart in background work.

Redis can also answer and refuse: ``MISCONF`` when it cannot write its append-only file (a full disk), ``OOM`` at
its memory limit, ``READONLY`` on a replica after a failover. Those arrive as ``ResponseError``, not as connection
errors, and no retry of the client hides them: whoever calls Redis catches :data:`REDIS_ERRORS`.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: How a client waits for a Redis that does not answer: ``request`` tries once more at once, on a fresh connection
#: (hiding the stale pooled connections a Redis restart leaves), then gives up, so that an api request answers at
#: once; ``background`` retries with backoff for about 25 s (a worker rides out a Redis restart).
Patience = Literal["request", "background"]
_RETRIES: dict[Patience, tuple[float, float, int]] = {"request": (0.0, 0.0, 1), "background": (2.0, 0.1, 15)}


#: Every error a Redis call can raise: unreachable, timed out, or refused (``MISCONF``, ``OOM``, ``READONLY``,
#: ``LOADING``; a bug's ``WRONGTYPE`` too). A request path answers 503 or goes on without Redis where it can; background
#: work logs it and tries again later.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)


@overload
def redis_client(
    url: str,
    *,
    asynchronous: Literal[False] = False,
    patience: Patience = "request",
    max_connections: int | None = None,
) -> redis.Redis: ...
@overload
def redis_client(
    url: str, *, asynchronous: Literal[True], patience: Patience = "request", max_connections: int | None = None
) -> aioredis.Redis: ...
def redis_client(
    url: str, *, asynchronous: bool = False, patience: Patience = "request", max_connections: int | None = None
) -> redis.Redis | aioredis.Redis:
    """A client for ``url`` (asyncio's with ``asynchronous``) that retries commands as ``patience`` says, with a pool
    of its own of at most ``max_connections`` (default: redis-py's)."""
    cap, base, retries = _RETRIES[patience]
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 3, "health_check_interval": 30}
    if max_connections is not None:
        options["max_connections"] = max_connections
    backoff = ExponentialBackoff(cap=cap, base=base)
    if asynchronous:
        return aioredis.Redis.from_url(url, retry=AsyncRetry(backoff, retries), **options)
    return redis.Redis.from_url(url, retry=Retry(backoff, retries), **options)


def text(reply: bytes | str) -> str:
    """A Redis reply (bytes, or already text) as text."""
    return reply.decode() if isinstance(reply, bytes) else reply
