"""The hub's routing and mailboxes, and the WebSocket text frame: plain functions, no processes."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from api.streams.hub import Full, Hub, Selection, Subscription
from api.streams.wire import Outgoing, text_frame
from conveyor.events import StreamEvent
from conveyor.schemas import Event, EventType, JobStatus
from conveyor.topics import TopicPolicy

OWNER = "o"


def event(event_id: str, type_: EventType = EventType.PROGRESS, job_id: str = "j1", **extra: object) -> StreamEvent:
    extra.setdefault("owner", OWNER)
    made = Event(event_id=event_id, type=type_, job_id=job_id, status=JobStatus.STARTED, ts=time.time(), **extra)  # type: ignore[arg-type]
    return StreamEvent.of(made)


def drain(subscription: Subscription) -> list[str]:
    out = []
    while (item := subscription.pop()) is not None:
        out.append(item.event.event_id if item.event else item.text)
    return out


def test_backed_up_progress_keeps_only_the_latest_and_never_drops_other_events() -> None:
    box = Subscription(Selection(OWNER), limit=10)
    box.offer(Outgoing.of(event("1-0", EventType.STARTED)))
    for seq in range(1, 6):
        box.offer(Outgoing.of(event(f"2-{seq}", progress=seq)))
    box.offer(Outgoing.of(event("3-0", job_id="j2")))
    box.offer(Outgoing.of(event("4-0", EventType.SUCCEEDED)))
    assert drain(box) == ["1-0", "2-5", "3-0", "4-0"]


def test_superseded_progress_does_not_count_towards_the_limit() -> None:
    box = Subscription(Selection(OWNER), limit=3)
    for seq in range(100):
        box.offer(Outgoing.of(event(f"5-{seq}")))
    assert not box.overflowed
    assert drain(box) == ["5-99"]


def test_a_full_mailbox_overflows_empties_and_calls_back() -> None:
    calls = []
    box = Subscription(Selection(OWNER), limit=3)
    box.on_end = lambda reason: calls.append(1)
    for seq in range(4):
        box.offer(Outgoing.of(event(f"6-{seq}", EventType.STARTED, job_id=f"j{seq}")))
    assert box.overflowed and calls == [1] and box.pop() is None


def test_hub_routes_by_job_topic_and_all_jobs_each_once() -> None:
    hub = Hub(events=None, queue_size=100)  # type: ignore[arg-type]
    everything = hub.add(Selection(OWNER))
    one_job = hub.add(Selection(OWNER, jobs=["j1"]))
    topic = hub.add(Selection(OWNER, topics=["o/news"]))
    hub.watch(everything, job_id="j1")
    hub.publish_local(event("1-0", EventType.STARTED, job_id="j1"))
    hub.publish_local(event("2-0", EventType.STARTED, job_id="j2"))
    hub.publish_local(event("3-0", EventType.TOPIC_MESSAGE, job_id="j1", topic="news", message="hi"))
    assert drain(everything) == ["1-0", "2-0"]
    assert drain(one_job) == ["1-0"]
    assert drain(topic) == ["3-0"]
    hub.unwatch(one_job, job_id="j1")
    hub.remove(topic)
    hub.publish_local(event("4-0", EventType.STARTED, job_id="j1"))
    hub.publish_local(event("5-0", EventType.TOPIC_MESSAGE, topic="news"))
    assert drain(one_job) == [] and drain(topic) == [] and drain(everything) == ["4-0"]


def test_hub_never_hands_one_owners_events_to_another() -> None:
    policy = TopicPolicy.parse("news:*")
    hub = Hub(events=None, queue_size=100, topic_key=policy.key, max_per_holder=1)  # type: ignore[arg-type]
    mine = hub.add(Selection("a", topic_key=policy.key), holder="key-a")
    theirs_by_id = hub.add(Selection("b", jobs=["ja"], topic_key=policy.key))
    their_room = hub.add(Selection("b", topics=[policy.key("b", "room")], topic_key=policy.key))
    shared = hub.add(Selection("b", topics=[policy.key("b", "news")], topic_key=policy.key))
    hub.publish_local(event("1-0", EventType.STARTED, job_id="ja", owner="a"))
    hub.publish_local(event("2-0", EventType.TOPIC_MESSAGE, topic="room", owner="a"))
    hub.publish_local(event("3-0", EventType.TOPIC_MESSAGE, topic="news", owner="a"))
    assert drain(mine) == ["1-0"]
    assert drain(theirs_by_id) == [] and drain(their_room) == [] and drain(shared) == ["3-0"]
    assert not theirs_by_id.selection.matches(event("1-0", EventType.STARTED, job_id="ja", owner="a"))
    with pytest.raises(Full, match="this key holds its limit of 1"):
        hub.add(Selection("a"), holder="key-a")
    hub.remove(mine)
    hub.add(Selection("a"), holder="key-a")


def test_hub_caps_connections_and_listeners_per_topic() -> None:
    hub = Hub(events=None, queue_size=10, max_connections=3, max_per_topic=1)  # type: ignore[arg-type]
    hub.add(Selection(OWNER, topics=["o/a"]))
    with pytest.raises(Full, match="topic 'a'"):
        hub.add(Selection(OWNER, topics=["o/a"]))
    second = hub.add(Selection(OWNER))
    with pytest.raises(Full, match="topic 'a'"):
        hub.watch(second, topic="o/a")
    hub.add(Selection(OWNER))
    with pytest.raises(Full, match="limit of 3"):
        hub.add(Selection(OWNER))


def test_direct_delivery_bypasses_the_mailbox() -> None:
    hub = Hub(events=None, queue_size=10)  # type: ignore[arg-type]
    box = hub.add(Selection(OWNER))
    written: list[bytes] = []
    box.direct = lambda item: written.append(item.frame)
    hub.publish_local(event("1-0", EventType.STARTED))
    assert box.pop() is None and len(written) == 1 and written[0].startswith(b"\x81")


def test_wait_returns_when_an_item_arrives() -> None:
    async def scenario() -> list[str]:
        box = Subscription(Selection(OWNER), limit=10)
        waiting = asyncio.ensure_future(box.wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        box.offer(Outgoing.of(event("1-0", EventType.STARTED)))
        await asyncio.wait_for(waiting, 1)
        return drain(box)

    assert asyncio.run(scenario()) == ["1-0"]


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_text_frame_lengths(size: int) -> None:
    frame = text_frame(b"x" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size < 65_536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size


def test_the_hub_counts_deliveries_and_slow_consumers_for_metrics() -> None:
    hub = Hub(events=None, queue_size=3)  # type: ignore[arg-type]
    slow = hub.add(Selection(OWNER))
    quick = hub.add(Selection(OWNER, jobs=["j0"]))
    for seq in range(4):
        hub.publish_local(event(f"7-{seq}", EventType.STARTED, job_id=f"j{seq}"))
    assert hub.delivered == 5  # four to the one following every job, one to the one following j0
    assert slow.overflowed and not quick.overflowed
    hub.remove(quick)
    assert hub.slow_dropped == 0
    hub.remove(slow)
    hub.remove(slow)  # harmless, and counted once
    assert hub.slow_dropped == 1
