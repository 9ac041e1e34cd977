"""The baseline of the job benchmarks: plain Celery, a no-op task, the Redis broker and the Redis result backend.

``celery -A bench.plain_celery worker`` runs it (the broker and backend are ``BENCH_REDIS_URL``); a client makes
its own app with :func:`create_app` and calls ``app.tasks[NOOP].apply_async()`` then ``.get()``. The worker settings
that matter for speed are Conveyor's (``conveyor.queue.app``): JSON, acks late, prefetch 1; the pool (prefork,
2 processes) is given on the command line, as ``conveyor worker`` gives it. Nothing else: no task events, no job
store, no event stream — that is what the ratios measure.
"""

from __future__ import annotations

import os

from celery import Celery

NOOP = "bench.noop"


def create_app(redis_url: str) -> Celery:
    """A Celery app on ``redis_url`` (broker and result backend) with the no-op task registered."""
    app = Celery("plain", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=NOOP, shared=False)  # type: ignore[untyped-decorator]
    def noop() -> None:
        """Do nothing: the round trip is all there is to measure."""

    return app


#: The worker's app (``celery -A bench.plain_celery worker``). Creating it opens no connection.
app = create_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
