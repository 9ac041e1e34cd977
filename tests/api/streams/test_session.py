"""What an event stream is asked for (filters and the resume point, parsed and refused as both transports need), and
how it sends its backlog, then live events."""

from __future__ import annotations

import anyio
import pytest
from starlette.datastructures import QueryParams

from api.streams.request import parse_request
from api.streams.session import BACKLOG_PAGE, EventStream
from api.streams.wire import Outgoing, Refused
from conveyor.events import id_key
from conveyor.topics import TopicPolicy
from tests.api.streams.test_hub import OWNER, event
from tests.events_support import OWNER as PUBLISHER
from tests.events_support import publish
from tests.inprocess import Api


def test_parse_request_filters_and_resume_point() -> None:
    request = parse_request(QueryParams("job_id=a&job_id=b&topic=t&last_event_id=5-1"))
    assert request.jobs == ("a", "b") and request.topics == ("t",) and request.resume == "5-1"
    assert parse_request(QueryParams("last_event_id=5-1"), "7-0").resume == "7-0"
    assert request.selection(OWNER, TopicPolicy([])).matches(event("1-0", job_id="b"))
    assert not request.selection(OWNER, TopicPolicy([])).matches(event("1-0", job_id="c"))
    for bad in ("last_event_id=yesterday", "job_id=" + "x" * 65, "&".join(f"topic={i}" for i in range(101))):
        with pytest.raises(Refused) as refused:
            parse_request(QueryParams(bad))
        assert refused.value.ws_code == 1008 and refused.value.http_status == 400


class RacingSender:
    """A :class:`~api.streams.session.Sender` that publishes while the backlog is being sent: when it sends the
    event ``during_first_page`` (a page of the backlog is still to be read) and again when it sends ``last`` (the
    backlog's last page is read), it appends 5 events to the stream and waits until the api's hub has read them,
    so that they sit in the stream's mailbox — the first five in the next backlog page too."""

    def __init__(self, api: Api, during_first_page: str, last: str) -> None:
        self.api = api
        self.triggers = {during_first_page, last}
        self.sent: list[str] = []
        self.raced: list[str] = []

    async def send(self, item: Outgoing) -> None:
        assert item.event is not None, item.text
        self.sent.append(item.event.event_id)
        if item.event.event_id in self.triggers:
            self.triggers.discard(item.event.event_id)
            ids = publish(self.api.settings.effective_redis_url, 5, topic="race")
            self.raced += ids
            hub = self.api.state.hub
            with anyio.fail_after(10):
                while hub.last_id is None or id_key(hub.last_id) < id_key(ids[-1]):
                    await anyio.sleep(0.005)

    async def heartbeat(self) -> None:
        return None


@pytest.mark.anyio
async def test_events_published_during_a_resumed_backlog_arrive_once_in_order(api: Api) -> None:
    """A resumed stream whose backlog spans two pages, with events published while each page is sent (forced by
    the sender, see :class:`RacingSender`): every event after the resume point arrives once, in stream order —
    those that were in a backlog page and the mailbox once, those only in the mailbox not lost."""
    redis_url = api.settings.effective_redis_url
    resume = publish(redis_url, 1, topic="race")[0]
    backlog = publish(redis_url, BACKLOG_PAGE + 100, topic="race")
    request = parse_request(QueryParams(f"topic=race&last_event_id={resume}"))
    stream = EventStream(api.state)
    await stream.open(request.selection(PUBLISHER, api.state.topics), None)
    try:
        sender = RacingSender(api, during_first_page=backlog[10], last=backlog[-1])
        await stream.run(sender, await stream.start_point(request), until_idle=True)
    finally:
        stream.close()
    assert len(sender.raced) == 10 and not sender.triggers
    assert sender.sent == backlog + sender.raced
