"""Redis clients: the one factory every process uses, and decoding Redis's byte replies.

Creating a client opens no connection: its pool connects on first use. After a Redis restart every pooled
connection is stale; each command is tried again on a fresh one with exponential backoff, for a short while on
request paths (the caller answers 503 soon) or long enough to ride out a restart in background work.

Redis can also answer and refuse: ``MISCONF`` when it cannot write its append-only file (a full disk), ``OOM`` at
its memory limit, ``READONLY`` on a replica after a failover. Those arrive as ``ResponseError``, not as connection
errors, and no retry of the client hides them: whoever calls Redis catches :data:`REDIS_ERRORS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, overload
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: The port of a Sentinel named without one.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """A Sentinel-managed Redis: where its Sentinels listen, the master's name, the database and the password of the
    Redis servers (the Sentinels themselves take none)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None

    def kombu_url(self) -> str:
        """The broker URL kombu's Sentinel transport reads: one ``sentinel://`` URL per Sentinel, ``;``-separated
        (the master's name goes in the transport options)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)


def is_sentinel(url: str) -> bool:
    """True when ``url`` names a Sentinel-managed Redis."""
    return url.startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``sentinel://[:password@]host[:port][,host[:port]…][/db]?master=NAME``: every Sentinel of one deployment,
    comma-separated, and the master's name (required)."""
    parts = urlsplit(url)
    if parts.scheme != "sentinel":
        raise ValueError(f"not a sentinel:// URL: {url.split('@')[-1]}")
    auth, _, hosts = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError("a sentinel:// URL names at least one Sentinel, host[:port]")
        sentinels.append((host, int(port) if port else SENTINEL_PORT))
    master = parse_qs(parts.query).get("master", [""])[0]
    if not master:
        raise ValueError("a sentinel:// URL needs the master's name: ?master=NAME")
    db = int(parts.path.strip("/") or 0)
    return SentinelUrl(tuple(sentinels), master, db, password)


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
    if is_sentinel(url):
        return _sentinel_client(parse_sentinel_url(url), asynchronous, backoff, retries, options)
    if asynchronous:
        return aioredis.Redis.from_url(url, retry=AsyncRetry(backoff, retries), **options)
    return redis.Redis.from_url(url, retry=Retry(backoff, retries), **options)


def _sentinel_client(
    target: SentinelUrl, asynchronous: bool, backoff: ExponentialBackoff, retries: int, options: dict[str, Any]
) -> redis.Redis | aioredis.Redis:
    """A client of ``target``'s current master: each new connection asks the Sentinels where it is. Asking opens no
    connection until the first command."""
    timeouts = {"socket_timeout": 3, "socket_connect_timeout": 3}
    server = {**options, "db": target.db, "password": target.password}
    if asynchronous:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        async_manager = AsyncSentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
        async_client: aioredis.Redis = async_manager.master_for(
            target.master, retry=AsyncRetry(backoff, retries), **server
        )
        return async_client
    from redis.sentinel import Sentinel

    manager = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
        target.master, retry=Retry(backoff, retries), **server
    )
    return client


def display_url(url: str) -> str:
    """``url`` without its password, for logs."""
    if is_sentinel(url):
        target = parse_sentinel_url(url)
        hosts = ",".join(f"{host}:{port}" for host, port in target.sentinels)
        return f"sentinel://{hosts}/{target.db}?master={target.master}"
    return url.split("@")[-1]


def text(reply: bytes | str) -> str:
    """A Redis reply (bytes, or already text) as text."""
    return reply.decode() if isinstance(reply, bytes) else reply
