"""kombu's Redis transport after Celery collects a broken connection, as ``conveyor.queue.transport`` relies on it.

``conveyor/queue/transport.py`` (selected by ``broker_transport`` in ``conveyor/queue/app.py``) subclasses
``kombu.transport.redis.QoS``. After a broker connection error Celery calls ``Connection.collect()`` and connects
again; a channel of the collected connection is left orphaned (``channel.connection`` is ``None``, or its
transport's ``client`` is). kombu's own ``QoS.ack``/``reject`` on such a channel build a Redis client from the
collected connection and raise ``AttributeError`` (``'NoneType' object has no attribute 'client'``), which Celery
does not survive. Our QoS recognises the orphaned channel, raises nothing and leaves the message to Redis's
visibility timeout.

What these tests pin, and what to do when one fails:

- ``test_kombu_still_raises_on_ack_after_collect`` fails with "kombu fixed ack-after-reconnect": kombu's QoS no
  longer dereferences a collected connection. Remove the workaround (``conveyor/queue/transport.py`` and the
  ``broker_transport`` line of ``conveyor/queue/app.py``) and this file, then run
  ``tests/system/test_outage_redis.py`` (workers must survive a Redis restart).
- ``test_a_collected_channel_is_orphaned`` fails: kombu changed what a collected channel looks like, so
  ``QoS._orphaned`` no longer recognises it; adapt it.
- ``test_our_qos_leaves_the_message_to_the_visibility_timeout`` fails: kombu changed the QoS internals the
  workaround overrides (``ack``/``reject``/``restore_unacked``, the unacked hash and index, ``restore_visible``).

Seen with kombu 5.7.0: a channel that still held messages when it was collected rebuilds its Redis pool while
pushing them back (``Channel.close`` restores after ``_disconnect_pools``), and kombu's own ``ack`` then goes through
that pool (it works once Redis is back; before, it raises ``redis.ConnectionError``, which Celery logs and survives).
The ``AttributeError`` needs a channel that held nothing when it was collected, which is what the test below builds.

Only the session's Redis is used; a loopback relay in front of it plays the Redis outage.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

from conveyor.queue import transport as ours

FIXED = "kombu fixed ack-after-reconnect: remove conveyor.queue.transport's workaround"
#: A database of the session's Redis that no worker consumes from.
DB = 6


class Relay:
    """A loopback TCP relay to Redis. :meth:`cut` makes Redis unreachable, as a crashed server looks to clients."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            server.settimeout(None)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True, name="relay-pump").start()

    def cut(self) -> None:
        """Refuse new connections and close the open ones."""
        for sock in (self.listener, *self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@dataclass
class Collected:
    """A channel of a connection Celery's way collected, the message it held (if any), and its Redis keys."""

    channel: Any
    tag: str | None
    queue: str
    options: dict[str, Any]


@pytest.fixture
def redis_db(redis_url: str) -> str:
    return f"{redis_url.rsplit('/', 1)[0]}/{DB}"


@pytest.fixture
def direct(redis_db: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_db)
    yield client
    client.close()


def _connection(url: str, transport: type[kombu_redis.Transport], options: dict[str, Any] | None = None) -> Any:
    """A kombu connection (``Any``: kombu has no annotations)."""
    return Connection(url, transport=transport, transport_options=options or {})  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def collected(
    transport: type[kombu_redis.Transport], redis_db: str, *, hold: bool, redis_down: bool
) -> Iterator[Collected]:
    """A real kombu connection through a relay to the session's Redis; its channel holds a message (``hold``),
    Redis goes away (``redis_down``) and the connection is collected as Celery's consumer does after a
    connection error (``Consumer.on_connection_error_after_connected``)."""
    address = urlsplit(redis_db)
    relay = Relay((address.hostname or "127.0.0.1", address.port or 6379))
    prefix = f"contract-kombu-{secrets.token_hex(4)}"
    options = {
        "unacked_key": f"{prefix}:unacked",
        "unacked_index_key": f"{prefix}:unacked_index",
        "unacked_mutex_key": f"{prefix}:unacked_mutex",
        "visibility_timeout": 3600,
    }
    connection = _connection(f"redis://127.0.0.1:{relay.port}/{DB}", transport, options)
    try:
        channel = connection.default_channel
        tag = None
        if hold:
            connection.Producer(channel).publish({"job_id": prefix}, routing_key=prefix)
            message = channel.basic_get(prefix, no_ack=False)
            assert message is not None
            tag = message.delivery_tag
        if redis_down:
            relay.cut()
        connection.collect(socket_timeout=1)
        yield Collected(channel, tag, prefix, options)
    finally:
        with contextlib.suppress(Exception):
            connection.release()
        relay.cut()
        with redis.Redis.from_url(redis_db) as client:
            client.delete(prefix, *(options[k] for k in ("unacked_key", "unacked_index_key", "unacked_mutex_key")))


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis-up", "redis-down"])
@pytest.mark.parametrize("hold", [False, True], ids=["idle", "holding"])
def test_a_collected_channel_is_orphaned(redis_db: str, hold: bool, redis_down: bool) -> None:
    live = _connection(redis_db, ours.Transport)
    try:
        assert isinstance(live.default_channel.qos, ours.QoS)
        assert not live.default_channel.qos._orphaned(), "a live channel is taken for an orphaned one"
    finally:
        live.release()
    with collected(ours.Transport, redis_db, hold=hold, redis_down=redis_down) as orphan:
        transport = orphan.channel.connection
        assert transport is None or transport.client is None, "kombu changed what a collected channel looks like"
        assert orphan.channel.qos._orphaned()


@pytest.mark.parametrize("method", ["ack", "reject"])
def test_kombu_still_raises_on_ack_after_collect(redis_db: str, method: str) -> None:
    """kombu's unpatched QoS on a channel Celery collected (it held nothing then, so closing it dropped its pool):
    acknowledging or rejecting a message through it dereferences the collected connection."""
    with collected(kombu_redis.Transport, redis_db, hold=False, redis_down=False) as orphan:
        qos = orphan.channel.qos
        assert type(qos) is kombu_redis.QoS
        try:
            getattr(qos, method)("tag-1")
        except AttributeError as exc:
            assert "NoneType" in str(exc), f"kombu fails differently now ({exc!r}): check the workaround"
        else:
            pytest.fail(FIXED)


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis-up", "redis-down"])
def test_our_qos_leaves_the_message_to_the_visibility_timeout(
    redis_db: str, direct: redis.Redis, redis_down: bool
) -> None:
    """With our transport nothing raises on the orphaned channel, and the message it held is not lost: it is back
    in its queue (kombu restored it while closing) or still in the unacked set, from which Redis's visibility
    timeout gives it back."""
    with collected(ours.Transport, redis_db, hold=True, redis_down=redis_down) as orphan:
        qos = orphan.channel.qos
        assert orphan.tag is not None and qos._orphaned()
        before = _where(direct, orphan)
        qos.ack(orphan.tag)
        qos.reject(orphan.tag, requeue=True)
        assert qos.restore_unacked() == []
        assert _where(direct, orphan) == before, "the orphaned channel touched Redis"
        assert before == ("unacked" if redis_down else "queue")

        if redis_down:
            connection = _connection(redis_db, ours.Transport, orphan.options)
            try:
                connection.default_channel.qos.visibility_timeout = 0
                connection.default_channel.qos.restore_visible()
            finally:
                connection.release()
            assert _where(direct, orphan) == "queue", "the visibility timeout did not give the message back"


def _where(client: redis.Redis, orphan: Collected) -> str:
    """Where the orphan's message is: ``queue``, ``unacked``, or ``lost``."""
    assert orphan.tag is not None
    if client.llen(orphan.queue):
        return "queue"
    if client.hexists(orphan.options["unacked_key"], orphan.tag):
        return "unacked"
    return "lost"
