"""Every name two processes must agree on: queues, task names, Redis keys."""

from typing import Final

QUEUE_UPLOADS: Final = "uploads"
QUEUE_NOTIFICATIONS: Final = "notifications"
QUEUE_HOUSEKEEPING: Final = "housekeeping"
QUEUES: Final = (QUEUE_UPLOADS, QUEUE_NOTIFICATIONS, QUEUE_HOUSEKEEPING)

TASK_INGEST_UPLOAD: Final = "uploads.ingest"
TASK_SEND_NOTIFICATION: Final = "notifications.send"
#: Several ``log`` notifications in one message (conveyor/queue/messages.py: bundles).
TASK_SEND_NOTIFICATIONS: Final = "notifications.send_many"
TASK_DISPATCH_PENDING: Final = "housekeeping.dispatch_pending"
TASK_PURGE_SPOOL: Final = "housekeeping.purge_spool"
TASK_REAP_STALE: Final = "housekeeping.reap_stale"
TASK_TRIM_EVENTS: Final = "housekeeping.trim_events"
TASK_FIRE_SCHEDULES: Final = "housekeeping.fire_schedules"

KIND_UPLOAD: Final = "upload"
KIND_NOTIFICATION: Final = "notification"

#: The task and queue that run each kind of job.
TASK_FOR_KIND: Final = {
    KIND_UPLOAD: (TASK_INGEST_UPLOAD, QUEUE_UPLOADS),
    KIND_NOTIFICATION: (TASK_SEND_NOTIFICATION, QUEUE_NOTIFICATIONS),
}

REDIS_PREFIX: Final = "conveyor:"
EVENTS_STREAM: Final = REDIS_PREFIX + "events"
#: A WebSocket ticket, by the SHA-256 of its value; and the marker a ticket leaves once it was taken.
TICKET_KEY: Final = REDIS_PREFIX + "ticket:"
USED_TICKET_KEY: Final = REDIS_PREFIX + "ticket-used:"
#: + a queue name: a sorted set of the node names of that queue's live workers, scored by when each last said so.
WORKERS_PREFIX: Final = REDIS_PREFIX + "workers:"
#: Sorted sets of the leases each API key holds (api/leases.py): ``<prefix><kind>:<key id>``.
LEASES_PREFIX: Final = REDIS_PREFIX + "leases:"
#: Lease kinds: an open event stream, an upload being received (both per API key), a room's participant (per room).
LEASE_STREAM: Final = "stream"
LEASE_UPLOAD: Final = "upload"
LEASE_ROOM: Final = "room"


def workers_key(queue: str) -> str:
    """The Redis key listing the workers of ``queue`` (see :mod:`conveyor.liveness`)."""
    return WORKERS_PREFIX + queue
