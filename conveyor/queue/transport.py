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

Selected by ``broker_transport = "conveyor.queue.transport:Transport"`` (``conveyor/celery_app.py``).
"""

from __future__ import annotations

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
    """kombu's Redis channel with :class:`QoS`."""

    QoS = QoS


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
