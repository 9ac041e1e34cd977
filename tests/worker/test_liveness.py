"""A worker's liveness thread: beats while it runs, withdraws on stop, and outlives an error it did not expect."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest
import redis

from conveyor import names
from worker.liveness import Liveness

pytestmark = pytest.mark.timeout(30)


def members(client: redis.Redis, queue: str) -> set[object]:
    return set(client.zrange(names.workers_key(queue), 0, -1))


def wait(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def test_beats_while_running_and_withdraws_on_stop(redis_url: str) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as observer:
        beating = Liveness(redis.Redis.from_url(redis_url), "w1@host", [queue], interval=0.05)
        beating.start()
        try:
            wait(lambda: members(observer, queue) == {b"w1@host"})
            first = observer.zscore(names.workers_key(queue), "w1@host")
            wait(lambda: (observer.zscore(names.workers_key(queue), "w1@host") or 0) > (first or 0))
        finally:
            beating.stop()
        assert members(observer, queue) == set()
        assert not beating.thread.is_alive()


def test_an_unexpected_error_is_logged_and_beating_goes_on(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = f"q-{secrets.token_hex(4)}"
    key = names.workers_key(queue)
    with redis.Redis.from_url(redis_url) as observer:
        observer.set(key, "not a sorted set")  # every beat now fails with WRONGTYPE
        beating = Liveness(redis.Redis.from_url(redis_url), "w2@host", [queue], interval=0.05)
        beating.start()
        try:
            wait(lambda: "worker liveness beat failed" in caplog.text)
            observer.delete(key)
            wait(lambda: members(observer, queue) == {b"w2@host"})
        finally:
            beating.stop()
