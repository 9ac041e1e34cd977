"""A real redis-server that can be made to refuse writes with ``MISCONF``, as it does when its disk is full.

Redis refuses every write (and ``PING``) with ``MISCONF`` once a snapshot it was told to keep failed
(``stop-writes-on-bgsave-error``, on by default). :meth:`RefusingRedis.refusing` makes one fail for real — the
server is pointed at a directory where it cannot create its snapshot file — and undoes it on exit, after which a
snapshot succeeds and writes are taken again. No disk needs to fill up, so this runs as any user; the system test
of a full disk (tests/system/test_disk_full.py) fills a real one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from tests.support import redis_server

#: A directory where redis-server (even as root) cannot create its snapshot's temporary file.
UNWRITABLE = "/proc"


class RefusingRedis:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)

    def refuses_writes(self) -> bool:
        try:
            self.client.set("conveyor-tests:probe", "1")
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith("MISCONF"):
                return True
            raise
        return False

    @contextlib.contextmanager
    def refusing(self, timeout: float = 10) -> Iterator[None]:
        """Writes to this server answer ``MISCONF`` inside the block; they work again after it."""
        directory = str(self.client.config_get("dir")["dir"])
        self.client.config_set("save", "3600 1")
        self.client.config_set("dir", UNWRITABLE)
        self.client.bgsave()
        _until(self.refuses_writes, timeout, "redis-server refuses writes")
        try:
            yield
        finally:
            self.client.config_set("dir", directory)
            self.client.config_set("save", "")
            self.client.bgsave()
            _until(lambda: not self.refuses_writes(), timeout, "redis-server takes writes again")

    def close(self) -> None:
        self.client.close()


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


@contextlib.contextmanager
def refusing_redis(data_dir: Path) -> Iterator[RefusingRedis]:
    """A redis-server of its own (append-only file on, as the embedded one), for a test that makes it refuse."""
    with redis_server(data_dir) as url:
        server = RefusingRedis(url)
        try:
            yield server
        finally:
            server.close()
