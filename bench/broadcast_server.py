"""The baseline: a minimal ``websockets`` server that reads the event stream and calls ``broadcast()``.

``python -m bench.broadcast_server PORT REDIS_URL``. It reads ``conveyor:events`` with one ``XREAD BLOCK``
loop, like Conveyor's hub, and sends each entry's JSON to every connected client with
``websockets.asyncio.server.broadcast`` (on uvloop, compression off, default keep-alive pings).
"""

from __future__ import annotations

import resource
import sys
from typing import cast

import redis.asyncio as aioredis
import redis.exceptions
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

STREAM = "conveyor:events"
CLIENTS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CLIENTS.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        CLIENTS.discard(websocket)


async def relay(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await client.xrevrange(STREAM, count=1))
    last: bytes = entries[0][0] if entries else b"0-0"
    while True:
        try:
            reply = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await client.xread({STREAM: last}, block=1000, count=1000),
            )
        except (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError):
            continue  # the loop was busy (thousands of handshakes); read again from the same id
        for _stream, batch in reply:
            for entry_id, fields in batch:
                last = entry_id
                broadcast(CLIENTS, fields[b"e"].decode())


async def main(port: int, redis_url: str) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print("ready", flush=True)
        await relay(redis_url)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
