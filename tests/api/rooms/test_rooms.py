"""Rooms on the in-process api: making, reading and deleting them; joining with the token (WebSocket and SSE);
commands as JSON and plain text, each change delivered to every participant once with its version; refusals that
keep the connection; the cap; resuming from a version; a room that expires or is deleted closes its participants."""

from __future__ import annotations

from typing import Any

import pytest

from api.rooms.participant import parse_command
from tests.asgi import WebSocketClosed, WebSocketSession
from tests.inprocess import Api, serve

pytestmark = pytest.mark.anyio


async def make(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/rooms", json=body)
    assert response.status_code == 201, response.text
    room: dict[str, Any] = response.json()
    return room


def join_path(room: dict[str, Any], **query: Any) -> str:
    extra = "".join(f"&{name}={value}" for name, value in query.items())
    return f"/rooms/{room['room_id']}/ws?token={room['join_token']}{extra}"


async def next_of(session: WebSocketSession, kind: str) -> dict[str, Any]:
    """The next message, which must be of type ``kind``."""
    message = await session.receive_json()
    assert message["type"] == kind, message
    return message


async def test_make_read_and_delete_a_room(api: Api) -> None:
    room = await make(api, ttl_seconds=60, max_participants=3, state=["bread"])
    assert room["join_url"] == f"ws://api/rooms/{room['room_id']}/ws?token={room['join_token']}"
    assert room["events_url"].endswith(f"/rooms/{room['room_id']}/events?token={room['join_token']}")
    assert room["ttl_seconds"] == 60 and room["max_participants"] == 3
    shown = (await api.client.get(f"/rooms/{room['room_id']}")).json()
    assert shown["items"] == ["bread"] and shown["version"] == 0 and shown["participants"] == 0
    assert shown["max_participants"] == 3 and shown["ttl_seconds"] == 60
    other = {"Authorization": f"Bearer {api.new_key('someone-else')}"}
    assert (await api.client.get(f"/rooms/{room['room_id']}", headers=other)).status_code == 404
    assert (await api.client.delete(f"/rooms/{room['room_id']}", headers=other)).status_code == 404
    assert (await api.client.delete(f"/rooms/{room['room_id']}")).status_code == 204
    gone = await api.client.get(f"/rooms/{room['room_id']}")
    assert gone.status_code == 404 and "no room" in gone.json()["detail"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"ttl_seconds": 0}, "greater than or equal to 1"),
        ({"ttl_seconds": 10**9}, "ttl_seconds is at most"),
        ({"max_participants": 0}, "greater than or equal to 1"),
        ({"state": ["a", "a"]}, "items must be unique"),
        ({"state": ["x" * 201]}, "at most 200 characters"),
        ({"state": ["a\nb"]}, "pattern"),
        ({"state": [f"i{n}" for n in range(101)]}, "at most 100 items"),
        ({"color": "red"}, "Extra inputs"),
    ],
)
async def test_bad_rooms_are_422_naming_the_problem(api: Api, body: dict[str, Any], problem: str) -> None:
    response = await api.client.post("/rooms", json=body)
    assert response.status_code == 422 and problem in response.text, response.text


async def test_participants_share_every_change_in_order(api: Api) -> None:
    room = await make(api, state=["bread"])
    async with api.websocket(join_path(room), {}) as ann, api.websocket(join_path(room), {}) as bob:
        first = await next_of(ann, "room.state")
        assert first["items"] == ["bread"] and first["version"] == 0 and first["participants"] == 1
        assert (await next_of(bob, "room.state"))["participants"] == 2
        await ann.send_text("add:pizza")
        await bob.send_text('{"op": "add", "item": "milk"}')
        await ann.send_text("remove: bread")
        await bob.send_text('{"op": "set", "items": ["tea", "cake"]}')
        await ann.send_text("clear")
        seen = {}
        for name, session in (("ann", ann), ("bob", bob)):
            seen[name] = [await next_of(session, "room.changed") for _ in range(5)]
        # The two participants' commands interleave as they reach Redis; both see that one order, each change once.
        assert [c["version"] for c in seen["ann"]] == [1, 2, 3, 4, 5]
        assert seen["ann"] == seen["bob"]
        assert all(change["room_id"] == room["room_id"] and change["event_id"] for change in seen["bob"])
        ops = [(c["op"], c.get("item")) for c in seen["ann"]]
        assert sorted(ops, key=str) == sorted(
            [("add", "pizza"), ("add", "milk"), ("remove", "bread"), ("set", None), ("clear", None)], key=str
        )
        assert [op for op in ops if op[0] != "set" and op[1] != "milk"] == [
            ("add", "pizza"),
            ("remove", "bread"),
            ("clear", None),
        ]
        first_add = seen["ann"][ops.index(("add", "pizza"))]
        assert "pizza" in first_add["items"]
    shown = (await api.client.get(f"/rooms/{room['room_id']}")).json()
    assert shown["version"] == 5 and shown["items"] == seen["ann"][-1]["items"]


async def test_refused_commands_keep_the_connection(api: Api) -> None:
    room = await make(api, state=["pizza"])
    async with api.websocket(join_path(room), {}) as ann:
        await next_of(ann, "room.state")
        for command, detail in [
            ("add:pizza", "already there"),
            ("remove:soup", "not there"),
            ("dance:now", "unknown command"),
            ('{"op": "add"}', "add takes an item"),
            ('{"op": "set", "items": ["a", "a"]}', "unique"),
            ("add:" + "x" * 300, "at most 200 characters"),
        ]:
            await ann.send_text(command)
            refused = await next_of(ann, "refused")
            assert detail in refused["detail"], (command, refused)
        await ann.send_text("add:soup")
        assert (await next_of(ann, "room.changed"))["version"] == 1  # still open, still changing
        await ann.send_bytes(b"\x00")
        error = await next_of(ann, "error")
        assert "binary" in error["detail"]
        with pytest.raises(WebSocketClosed) as closed:
            await ann.receive()
        assert closed.value.code == 1003


async def test_a_wrong_token_or_a_missing_room_is_refused_alike(api: Api) -> None:
    room = await make(api)
    for path in (
        f"/rooms/{room['room_id']}/ws?token=not-the-token",
        f"/rooms/{room['room_id']}/ws",
        f"/rooms/01a207a2-fb69-7023-9247-baa030751cb3/ws?token={room['join_token']}",
    ):
        async with api.websocket(path, {}, subscribed=False) as stranger:
            error = await next_of(stranger, "error")
            assert "no room" in error["detail"]
            with pytest.raises(WebSocketClosed) as closed:
                await stranger.receive()
            assert closed.value.code == 1008


async def test_the_cap_refuses_one_more_participant(api: Api) -> None:
    room = await make(api, max_participants=2)
    async with api.websocket(join_path(room), {}) as one, api.websocket(join_path(room), {}) as two:
        await next_of(one, "room.state")
        await next_of(two, "room.state")
        async with api.websocket(join_path(room), {}, subscribed=False) as three:
            error = await next_of(three, "error")
            assert "full: at most 2 participants" in error["detail"]
            with pytest.raises(WebSocketClosed) as closed:
                await three.receive()
            assert closed.value.code == 1008
        assert (await api.client.get(f"/rooms/{room['room_id']}")).json()["participants"] == 2
    # Places are given back when participants leave.
    async with api.websocket(join_path(room), {}) as again:
        assert (await next_of(again, "room.state"))["participants"] >= 1


async def test_resuming_from_a_version_replays_only_what_was_missed(api: Api) -> None:
    room = await make(api)
    async with api.websocket(join_path(room), {}) as ann:
        await next_of(ann, "room.state")
        for item in ("a", "b", "c"):
            await ann.send_text(f"add:{item}")
            await next_of(ann, "room.changed")
    async with api.websocket(join_path(room, version=1), {}) as back:
        replayed = [await next_of(back, "room.changed") for _ in range(2)]
        assert [c["version"] for c in replayed] == [2, 3] and replayed[-1]["items"] == ["a", "b", "c"]
        await back.send_text("add:d")
        assert (await next_of(back, "room.changed"))["version"] == 4
    async with api.websocket(join_path(room, version=4), {}) as current:
        await current.send_text("add:e")  # nothing missed: the next message is the next change
        assert (await next_of(current, "room.changed"))["version"] == 5


async def test_an_expired_room_closes_its_participants_with_a_last_message(api: Api) -> None:
    room = await make(api, ttl_seconds=1)
    async with api.websocket(join_path(room), {}) as ann:
        await next_of(ann, "room.state")
        closed_message = await next_of(ann, "room.closed")  # after about a second without activity
        assert closed_message == {"type": "room.closed", "room_id": room["room_id"], "reason": "expired"}
        with pytest.raises(WebSocketClosed) as closed:
            await ann.receive()
        assert closed.value.code == 1000
    assert (await api.client.get(f"/rooms/{room['room_id']}")).status_code == 404


async def test_a_deleted_room_closes_its_participants_at_once(api: Api) -> None:
    room = await make(api)
    async with api.websocket(join_path(room), {}) as ann:
        await next_of(ann, "room.state")
        assert (await api.client.delete(f"/rooms/{room['room_id']}")).status_code == 204
        assert (await next_of(ann, "room.closed"))["reason"] == "deleted"
        with pytest.raises(WebSocketClosed) as closed:
            await ann.receive()
        assert closed.value.code == 1000


async def test_changes_are_rate_limited_per_participant(api: Api) -> None:
    async with serve(api.settings.model_copy(update={"room_commands_per_second": 0.01})) as slow:
        room = await make(slow)
        async with slow.websocket(join_path(room), {}) as ann:
            await next_of(ann, "room.state")
            await ann.send_text("add:a")  # the bucket holds one change
            assert (await next_of(ann, "room.changed"))["version"] == 1
            await ann.send_text("add:b")
            assert "too many changes" in (await next_of(ann, "refused"))["detail"]


async def test_a_room_read_as_server_sent_events_needs_only_the_token(api: Api) -> None:
    room = await make(api, state=["x"])
    path = f"/rooms/{room['room_id']}/events?token={room['join_token']}"
    async with api.events(path, {"Authorization": ""}) as events, api.websocket(join_path(room), {}) as ann:
        _id, state = await events.next_data()
        assert state["type"] == "room.state" and state["items"] == ["x"]
        await next_of(ann, "room.state")
        await ann.send_text("add:y")
        event_id, change = await events.next_data()
        assert event_id == "1" and change["version"] == 1 and change["items"] == ["x", "y"]
    async with api.anonymous() as stranger:
        refused = await stranger.get(f"/rooms/{room['room_id']}/events?token=wrong")
        assert refused.status_code == 404 and "no room" in refused.json()["detail"]
        tokenless = await stranger.get(f"/rooms/{room['room_id']}/events")
        assert tokenless.status_code == 401 and "join token" in tokenless.json()["detail"]


def test_plain_text_commands() -> None:
    assert parse_command("add:pizza").item == "pizza"
    assert parse_command("ADD: pizza with ham ").item == "pizza with ham"
    assert parse_command("remove:x").op == "remove"
    assert parse_command("clear").op == "clear"
    with pytest.raises(ValueError, match="unknown command"):
        parse_command("add")
    with pytest.raises(ValueError, match="unknown command"):
        parse_command("clear:x")
