"""The Redis broker transport: kombu's, made to survive a Redis restart while tasks are running.

When a worker's connection to Redis drops, Celery collects the old connection and opens a new one. With kombu 5.7,
anything that later touches the old channel (a task that was running acknowledges its message; the channel, when
closed, pushes back the messages it held) builds a new Redis client from the collected connection and raises an
``AttributeError`` (``'NoneType' object has no attribute 'client'`` / ``'hostname'`` in ``_connparams``). Celery
treats that as unrecoverable: the worker exits instead of reconnecting.

Here such acknowledgements, rejections and restores are skipped instead. Nothing is lost: the messages stay in
Redis's unacknowledged set, and Redis gives them back after the visibility timeout, where the job's claim drops
them (the job finished, or a live run holds it); a job whose message really vanished is re-sent by beat's
lost-message check (``Dispatcher.resend_lost``).

It also keeps one Redis client per channel instead of kombu's new one per command (:class:`Channel`).

Selected by ``broker_transport = "conveyor.queue.transport:Transport"`` (``conveyor/queue/app.py``), or
``…:SentinelTransport`` for a Redis managed by Sentinel (the same changes over kombu's Sentinel transport).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis, virtual

from conveyor import logs

log = logs.get("conveyor.queue.transport")


class QoS(redis.QoS):
    """kombu's Redis QoS, except on a channel whose connection is gone."""

    def _orphaned(self) -> bool:
        transport = self.channel.connection
        return transport is None or getattr(transport, "client", None) is None

    def ack(self, delivery_tag: Any) -> None:
        if self._orphaned():
            log.info("message not acknowledged: its connection is gone; Redis gives it back later", tag=delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._orphaned():
            log.info("message not rejected: its connection is gone; Redis gives it back later", tag=delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> Any:
        if self._orphaned():
            log.info("held messages left to the visibility timeout: the connection is gone")
            self._delivered.clear()
            return []
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]


class Channel(redis.Channel):
    """kombu's Redis channel with :class:`QoS`, reusing one client for its commands.

    kombu builds a new ``redis.Redis`` for every publish, acknowledgement and restore (``conn_or_acquire``), about a
    fifth of a worker's consumer time per message; the client is a thin handle on the channel's connection pool
    and is thread-safe, so one per channel serves them all."""

    QoS = QoS
    _shared: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared
        if shared is None:
            shared = self._shared = self._create_client()  # type: ignore[no-untyped-call]
        yield shared


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, redis.SentinelChannel):
    """:class:`Channel` on kombu's Sentinel channel: its connections go to the master the Sentinels name."""


class SentinelTransport(redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
