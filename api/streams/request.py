"""What a client asks of an event stream when it connects: who it is (admission) and what it wants (filters and a
resume point), checked before anything is sent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.auth import Unauthenticated
from api.errors import REDIS_DOWN
from api.streams.hub import Selection
from api.streams.wire import CLOSE_POLICY, CLOSE_TRY_AGAIN, Refused
from conveyor.events import id_key
from conveyor.redis_client import REDIS_ERRORS
from conveyor.store.apikeys import Principal
from conveyor.topics import TopicPolicy

if TYPE_CHECKING:
    from api.state import AppState

#: Most jobs plus topics one stream may follow.
MAX_FOLLOWED = 100


@dataclass(frozen=True)
class StreamRequest:
    """What a client asked for when it connected: jobs and topics (none: every job event), and a resume point."""

    jobs: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    resume: str | None = None
    #: With ``publish=text``: the (one) topic the client's plain text messages are published to.
    text_topic: str | None = None

    def selection(self, owner: str | None, topics: TopicPolicy) -> Selection:
        """What the stream listens to as ``owner``. Raises :class:`Refused` (1008 / 403) for a shared topic
        the owner may not read."""
        for topic in self.topics:
            check_subscribe(topics, owner, topic)
        return Selection(owner, self.jobs, (topics.key(owner, topic) for topic in self.topics), topics.key)


def check_subscribe(topics: TopicPolicy, owner: str | None, topic: str) -> None:
    """Raise :class:`Refused` (1008 / 403) unless ``owner`` may read ``topic``."""
    if not topics.may_subscribe(owner, topic):
        raise Refused(f"topic {topic!r} is not readable with this key", CLOSE_POLICY, 403)


def _values(query: Mapping[str, str], name: str, max_length: int) -> tuple[str, ...]:
    getlist = getattr(query, "getlist", None)
    values: Sequence[str] = getlist(name) if getlist is not None else ([query[name]] if name in query else [])
    for value in values:
        if not 0 < len(value) <= max_length:
            raise Refused(f"{name} must be 1 to {max_length} characters")
    return tuple(dict.fromkeys(values))


def parse_request(query: Mapping[str, str], last_event_id_header: str | None = None) -> StreamRequest:
    """The filters and resume point of a stream request (``job_id`` and ``topic`` may repeat).

    The ``Last-Event-ID`` header, when given, wins over the ``last_event_id`` parameter. Raises
    :class:`Refused` (1008 / 400) for a malformed id or too many filters.
    """
    jobs = _values(query, "job_id", 64)
    topics = _values(query, "topic", 200)
    if len(jobs) + len(topics) > MAX_FOLLOWED:
        raise Refused(f"at most {MAX_FOLLOWED} job_id and topic filters")
    text_topic = None
    publish = query.get("publish")
    if publish is not None:
        if publish != "text":
            raise Refused("publish takes one value: text (each plain text message is published to the topic)")
        if len(topics) != 1:
            raise Refused("publish=text needs exactly one topic (?topic=…&publish=text)")
        text_topic = topics[0]
    resume = last_event_id_header if last_event_id_header is not None else query.get("last_event_id")
    if resume is not None:
        try:
            if len(resume) > 64:
                raise ValueError(resume)
            id_key(resume)
        except ValueError:
            raise Refused("last_event_id is not an event id") from None
    return StreamRequest(jobs, topics, resume, text_topic)


async def admit(state: AppState, headers: Mapping[str, str], ticket: str | None) -> Principal:
    """Authenticate a WebSocket stream (bearer header or ``?ticket=``) and take a token from its key's rate
    limit. Raises :class:`Refused`: 1008 (401) without valid credentials, 1013 (429) over the rate limit, 1013 (503)
    when Redis cannot be asked for a ticket."""
    try:
        principal = await state.auth.stream(headers, ticket)
    except Unauthenticated as exc:
        raise Refused(exc.detail, CLOSE_POLICY, 401) from None
    except REDIS_ERRORS:
        raise Refused(REDIS_DOWN, CLOSE_TRY_AGAIN, 503) from None
    if await state.limiter.take(principal.key_id) > 0:
        raise Refused("rate limit reached for this key; try again later", CLOSE_TRY_AGAIN, 429)
    return principal
