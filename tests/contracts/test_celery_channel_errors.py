"""How a Celery worker meets a Redis that answers but refuses, as ``conveyor/queue/app.py`` relies on it.

When Redis cannot write its append-only file (a full disk) it refuses writes — ``BRPOP`` and ``PING`` included — with
``MISCONF``, a ``ResponseError``. kombu's Redis transport counts ``ResponseError`` as a *channel* error, not a
connection error; Celery's consumer treats channel errors as fatal ("Unrecoverable error: ResponseError", the worker
exits) unless ``broker_channel_error_retry`` is on, in which case it reconnects with its usual backoff and resumes
once Redis takes writes again. ``tests/system/test_disk_full.py`` shows the whole of it on a full disk.

When a test here fails, kombu or Celery changed that path: find what turns a ``ResponseError`` into a worker exit
now (``celery/worker/consumer/consumer.py``, ``Consumer.start``) and make the worker wait instead, then raise the
upper bound of ``celery``/``kombu`` in pyproject.toml.
"""

from __future__ import annotations

import inspect

import redis.exceptions
from celery.worker.consumer.consumer import Consumer

from conveyor.queue.app import create_celery
from conveyor.queue.transport import Transport
from conveyor.settings import Settings


def test_a_refused_command_is_a_channel_error_of_our_transport() -> None:
    misconf = redis.exceptions.ResponseError("MISCONF Errors writing to the AOF file: No space left on device")
    assert isinstance(misconf, Transport.channel_errors)
    assert not isinstance(misconf, Transport.connection_errors)


def test_the_consumer_retries_channel_errors_only_when_told_and_we_tell_it() -> None:
    source = inspect.getsource(Consumer.start)
    assert "broker_channel_error_retry" in source and "self.channel_errors" in source, "Consumer.start changed"
    app = create_celery(Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0"))  # type: ignore[call-arg]
    try:
        assert app.conf.broker_channel_error_retry is True
    finally:
        app.close()
