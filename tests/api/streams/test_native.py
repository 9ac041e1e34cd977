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


def _event(n: int) -> Outgoing:
    return Outgoing.of(StreamEvent(f"1-{n}", EventType.PROGRESS, "job", "owner", None, f'{{"n":{n}}}'))


async def test_frames_delivered_together_are_written_together_in_order() -> None:
    protocol, transport = _protocol()
    events = [_event(n) for n in range(1, 4)]
    for item in events:
        protocol._deliver(item)
    protocol._deliver(events[1])  # a repeat (an earlier id) is skipped
    assert transport.writes == []  # not before the hub's batch is done
    await asyncio.sleep(0)
    assert transport.writes == [b"".join(item.frame for item in events)]
    protocol._deliver(_event(4))
    await asyncio.sleep(0)
    assert transport.writes[1:] == [_event(4).frame]


async def test_another_write_comes_after_the_frames_delivered_before_it() -> None:
    protocol, transport = _protocol()
    protocol._deliver(_event(1))
    protocol._deliver(_event(2))
    notice = Outgoing.notice('{"type":"resync"}')
    await protocol.send(notice)  # the pump's path, before the hub's batch was written
    await asyncio.sleep(0)
    assert transport.writes == [_event(1).frame + _event(2).frame, notice.frame]
