"""Channel ``websocket``: one ``topic.message`` event on the stream, which every api process reads and passes
to its clients connected with ``/ws?topic=<topic>`` (and to no one else: the event names no job)."""

from __future__ import annotations

import time

import redis

from conveyor.events import EventLog
from conveyor.schemas import Event, EventType, Job, WebsocketNotification
from worker.channels import DeliveryError, Sent


def send(events: EventLog, job: Job, request: WebsocketNotification) -> Sent:
    """Publish the topic message. Returns its event id; a Redis error is transient."""
    event = Event(
        type=EventType.TOPIC_MESSAGE, topic=request.topic, message=request.message, ts=time.time(), owner=job.owner
    )
    try:
        event_id = events.publish(event)
    except redis.RedisError as exc:
        raise DeliveryError(f"event stream unavailable: {type(exc).__name__}: {exc}", transient=True) from exc
    return Sent(detail={"topic": request.topic, "event_id": event_id})
