"""The native ``/ws`` writes the frames the hub delivers in one go with one write, in delivery order, and anything
else it writes (the pump's frames, the protocol's own) after them."""

from __future__ import annotations

import asyncio

import pytest

from api.streams.native import WebSocketProtocol
from api.streams.wire import Outgoing
from conveyor.events import StreamEvent
from conveyor.schemas import EventType

pytestmark = pytest.mark.anyio


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


def _protocol() -> tuple[WebSocketProtocol, _Transport]:
    transport = _Transport()
    protocol = WebSocketProtocol(config=None, server_state=None, app_state={})
    protocol.transport = transport  # type: ignore[assignment]
    return protocol, transport


def _event(n: int, *, more: bool = True) -> Outgoing:
    item = Outgoing.of(StreamEvent(f"1-{n}", EventType.PROGRESS, "job", "owner", None, f'{{"n":{n}}}'))
    item.more = more
    return item


async def test_the_events_of_one_read_are_written_together_in_order() -> None:
    protocol, transport = _protocol()
    events = [_event(1), _event(2), _event(3, more=False)]
    protocol._deliver(events[0])
    protocol._deliver(events[1])
    protocol._deliver(events[0])  # a repeat (an earlier id) is skipped
    assert transport.writes == []  # held: more follow in this read
    protocol._deliver(events[2])  # the read's last event: all of them at once
    assert transport.writes == [b"".join(item.frame for item in events)]
    protocol._deliver(_event(4, more=False))  # a lone event: at once
    assert transport.writes[1:] == [_event(4).frame]


async def test_frames_held_for_a_read_whose_last_event_is_not_this_connection_s_go_out_after_it() -> None:
    protocol, transport = _protocol()
    protocol._deliver(_event(1))
    protocol._deliver(_event(2))
    assert transport.writes == []
    await asyncio.sleep(0)  # the hub is done with the read
    assert transport.writes == [_event(1).frame + _event(2).frame]


async def test_another_write_comes_after_the_frames_delivered_before_it() -> None:
    protocol, transport = _protocol()
    protocol._deliver(_event(1))
    protocol._deliver(_event(2))
    notice = Outgoing.notice('{"type":"resync"}')
    await protocol.send(notice)  # the pump's path, before the hub's batch was written
    await asyncio.sleep(0)
    assert transport.writes == [_event(1).frame + _event(2).frame, notice.frame]
