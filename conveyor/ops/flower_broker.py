"""Flower's Broker page and ``/api/queues/length`` for Conveyor's Redis: the depth of every Conveyor queue.

Flower picks its broker client from the scheme of the broker URL Celery reports, and Conveyor's is its own
transport's (``conveyor.queue.transport:Transport://…``), which Flower does not know: both paths answered
"'redis' broker is not supported" (404). :class:`ConveyorFlower` reports the Redis URL itself (``redis://`` or
``rediss://``, with its password, so an embedded Redis with a generated password and a ``CONVEYOR_REDIS_URL``
with a user and password both work), so Flower's own Redis client (``LLEN`` of each queue's list, priorities
included) answers.

Flower lists only the queues that live workers consume (from ``inspect``), all of them only when no worker is
known: a queue with no worker, the one whose depth matters most, would vanish. :class:`BrokerPage` and
:class:`QueueLengths` (routed in place of Flower's by :class:`conveyor.ops.flower.Gate`) always list every queue of
:data:`conveyor.names.QUEUES`, then any other queue a worker consumes.
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from flower.api.tasks import GetQueueLengths
from flower.app import Flower
from flower.views.broker import BrokerView
from tornado.web import RequestHandler

from conveyor import names


def masked(url: str) -> str:
    """``url`` with its password (if any) shown as ``**``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:**@{host}{port}"))


class ConveyorFlower(Flower):  # type: ignore[misc]  # flower ships no type hints
    """Flower, told the Redis URL Conveyor's broker uses (Celery reports the transport's class path instead), and
    inspecting the workers it hears one by one instead of broadcasting to whoever answers (which, with no worker
    up yet, logged an "Inspect method … failed" warning per method at every start)."""

    def __init__(self, *args: Any, redis_url: str, **kwargs: Any) -> None:
        self.redis_url = redis_url
        super().__init__(*args, **kwargs)

    @cached_property
    def broker_uri(self) -> str:
        return masked(self.redis_url)

    @cached_property
    def broker_uri_with_password(self) -> str:
        return self.redis_url

    def update_workers(self, workername: str | None = None) -> Any:
        """Inspect ``workername``, or each worker alive in Flower's state; awaitable."""
        if workername is not None:
            return super().update_workers(workername=workername)
        alive = [name for name, worker in self.events.state.workers.items() if worker.alive]
        return asyncio.gather(*(super(ConveyorFlower, self).update_workers(workername=name) for name in alive))


class _EveryQueue(RequestHandler):
    """Lists every Conveyor queue, and any other queue a live worker consumes."""

    def get_active_queue_names(self) -> list[str]:
        consumed = {
            queue["name"]
            for info in self.application.workers.values()  # type: ignore[attr-defined]
            for queue in info.get("active_queues", [])
        }
        return [*names.QUEUES, *sorted(consumed - set(names.QUEUES))]


class BrokerPage(_EveryQueue, BrokerView):  # type: ignore[misc]
    """Flower's Broker page: each queue's name and how many messages wait in it."""


class QueueLengths(_EveryQueue, GetQueueLengths):  # type: ignore[misc]
    """``GET /api/queues/length``: ``{"active_queues": [{"name", "messages"}, …]}``, every queue."""


#: The paths whose handlers :class:`conveyor.ops.flower.Gate` replaces, and the handler serving each.
HANDLERS: Final[dict[str, type[RequestHandler]]] = {"/broker": BrokerPage, "/api/queues/length": QueueLengths}
