"""The Celery app object. It imports no task code: the api sends tasks by name, workers import ``worker.tasks``.

Each setting below is deliberate; docs/ARCHITECTURE.md explains the numbers.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu.entity import Exchange, Queue

from conveyor import names
from conveyor.redis_client import is_sentinel, parse_sentinel_url
from conveyor.settings import Settings, get_settings


def _broker(url: str) -> tuple[str, str, dict[str, object]]:
    """The broker URL, transport and extra transport options for ``url``: kombu's Redis transport, or its Sentinel
    transport for a ``sentinel://`` URL (every Sentinel in the URL, the master's name in the options)."""
    if not is_sentinel(url):
        return url, "conveyor.queue.transport:Transport", {}
    target = parse_sentinel_url(url)
    options: dict[str, object] = {
        "master_name": target.master,
        "sentinel_kwargs": {"socket_timeout": 3, "socket_connect_timeout": 3},
    }
    return target.kombu_url(), "conveyor.queue.transport:SentinelTransport", options


def create_celery(settings: Settings) -> Celery:
    """A configured Celery app. Creating it opens no connection."""
    app = Celery("conveyor", set_as_current=False)
    broker_url, transport, sentinel_options = _broker(settings.effective_broker_url)
    app.conf.update(
        broker_url=broker_url,
        # kombu's Redis transport (or its Sentinel transport), minus a restore-on-close that can kill a worker after a
        # Redis restart.
        broker_transport=transport,
        # A worker (and beat) that loses Redis keeps reconnecting, however long it is gone.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # ... and so does a worker whose Redis answers but refuses: ``MISCONF`` when Redis cannot write its append-only
        # file (a full disk), ``OOM``, ``READONLY``. kombu counts those ``ResponseError``s as channel errors, which
        # Celery's consumer treats as fatal ("Unrecoverable error", the worker exits) unless this is on; with it, the
        # consumer reconnects with the same backoff as after a lost connection (2 s, growing to 30 s) and resumes
        # once Redis takes writes again.
        broker_channel_error_retry=True,
        broker_transport_options={
            # A message a worker took but never acknowledged goes back to the queue after this long. A job's claim
            # and heartbeat make a redelivery harmless (a live run keeps its job), so this is tuned for recovery:
            # it bounds how long a message held by a dead worker before its job was claimed stays lost.
            "visibility_timeout": settings.visibility_timeout,
            # Look for such messages every 5 s (kombu's default sweep is every ~100 s) ...
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # ... and don't let a sweeper that died holding the sweep lock stop the others for long.
            "unacked_mutex_expire": 30,
            # Connecting to a Redis host that is gone fails in seconds instead of hanging.
            "socket_connect_timeout": 5,
            **sentinel_options,
        },
        # JSON only: a pickled message pushed into a queue is refused, never executed.
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        # The job store is the one place for results; Celery keeps none.
        result_backend=None,
        task_ignore_result=True,
        # Acknowledge after the task ran, and give the message back if its worker process died,
        # so a crash loses nothing; tasks are idempotent, keyed by job id.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process, on every queue: uploads are long, and a prefetched message waits
        # behind them; and a message held but not yet claimed is the one thing only the visibility timeout recovers.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        # No Celery task events, from workers or the api: Flower learns every job's life from the job event stream
        # (conveyor/ops/flower_feed.py), at no cost per task. Workers still send their heartbeats (``worker-*``
        # events), so Flower lists them; and no task sends an event even if told to (``celery control
        # enable_events``, or another Flower).
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_annotations={"*": {"send_events": False}},
        # Explicit queues and routes; anything unrouted goes to housekeeping.
        task_queues=[
            Queue(queue, Exchange(queue, type="direct"), routing_key=queue)  # type: ignore[no-untyped-call]
            for queue in names.QUEUES
        ],
        task_default_queue=names.QUEUE_HOUSEKEEPING,
        task_create_missing_queues=False,
        task_routes={
            names.TASK_INGEST_UPLOAD: {"queue": names.QUEUE_UPLOADS},
            names.TASK_SEND_NOTIFICATION: {"queue": names.QUEUE_NOTIFICATIONS},
            names.TASK_SEND_NOTIFICATIONS: {"queue": names.QUEUE_NOTIFICATIONS},
            "housekeeping.*": {"queue": names.QUEUE_HOUSEKEEPING},
        },
        # A publish to a Redis that is down fails fast; the dispatcher sends it again later.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        # If the broker connection drops, running tasks go on and record their outcome in the job store; their
        # messages come back after the visibility timeout and find the job finished. Cancelling them would kill a
        # run for a Redis blip (and count a crash).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        imports=("worker.tasks",),
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "dispatch-pending": {
                "task": names.TASK_DISPATCH_PENDING,
                "schedule": timedelta(seconds=settings.dispatch_interval_seconds),
                "options": {"expires": settings.dispatch_interval_seconds * 2},
            },
            "reap-stale": {
                "task": names.TASK_REAP_STALE,
                "schedule": timedelta(seconds=settings.heartbeat_seconds * 2),
                "options": {"expires": settings.heartbeat_seconds * 4},
            },
            # Users' schedules (conveyor/store/schedules.py): due ones fire within about a second of their time.
            "fire-schedules": {
                "task": names.TASK_FIRE_SCHEDULES,
                "schedule": timedelta(seconds=1),
                "options": {"expires": 2},
            },
            "purge-spool": {"task": names.TASK_PURGE_SPOOL, "schedule": timedelta(minutes=15)},
            "trim-events": {"task": names.TASK_TRIM_EVENTS, "schedule": timedelta(minutes=10)},
        },
    )
    return app


#: The module-level app for ``celery -A conveyor.queue.app`` (workers, beat, Flower).
app = create_celery(get_settings())
