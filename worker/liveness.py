"""A worker says it is alive: from the moment it consumes until it stops, a thread of its main process beats in Redis.

``/health`` counts these beats per queue (:mod:`conveyor.liveness`). The beat comes from the worker's main process,
the one that takes messages from Redis, so it stops when that process dies or stops; a pool process dying does not
stop it (Celery replaces pool processes by itself). The loop is supervised: a Redis that does not answer is logged
once per outage and tried again at the next beat; any other error is logged with its traceback and the loop goes on.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from conveyor import liveness, logs
from conveyor.redis_client import redis_client
from conveyor.settings import get_settings

log = logs.get("conveyor.worker")


class Liveness:
    """Beats for worker ``node`` and its ``queues`` every ``interval`` seconds, from :meth:`start` to :meth:`stop`."""

    def __init__(
        self, client: redis.Redis, node: str, queues: list[str], interval: float = liveness.INTERVAL_SECONDS
    ) -> None:
        self.client = client
        self.node = node
        self.queues = queues
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="liveness", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop beating and leave the count at once (a Redis that does not answer: the beat simply expires)."""
        self.stopped.set()
        self.thread.join(timeout=5)
        try:
            liveness.leave(self.client, self.node, self.queues)
        except redis.RedisError as exc:
            log.warning("worker liveness not withdrawn; it expires by itself", error=repr(exc))
        self.client.close()

    def _loop(self) -> None:
        unreachable = False
        while True:
            try:
                liveness.beat(self.client, self.node, self.queues)
                if unreachable:
                    log.info("worker liveness recorded again", node=self.node)
                unreachable = False
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not unreachable:
                    log.warning("worker liveness not recorded: Redis unreachable", error=repr(exc))
                unreachable = True
            except Exception:
                log.exception("worker liveness beat failed; beating on")
            if self.stopped.wait(self.interval):
                return


_current: Liveness | None = None


@worker_ready.connect
def _started(sender: Any = None, **_kwargs: Any) -> None:
    """The worker consumes: start beating for its node name and queues."""
    global _current
    if _current is not None:
        return
    queues = sorted(sender.app.amqp.queues.consume_from)
    client = redis_client(get_settings().effective_redis_url)
    _current = Liveness(client, sender.hostname, queues)
    _current.start()
    log.info("worker liveness started", node=sender.hostname, queues=",".join(queues))


@worker_shutdown.connect
def _stopped(**_kwargs: Any) -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
