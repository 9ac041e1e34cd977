"""A process holding many WebSocket clients, for the fan-out benchmark: ``python -m bench.wsclients URL COUNT``.

Each client is a real WebSocket client (the ``websockets`` library's sans-I/O protocol: handshake, frame
parsing, answering pings) on an asyncio protocol, without a task per connection, so that the client side
stays cheap. It reads commands on stdin, one per line, and answers with one JSON line on stdout:

- ``phase NAME EXPECT TIMEOUT``: count messages until every client has ``EXPECT`` more, or TIMEOUT seconds
  pass; write each message's latency (receipt time minus the ``ts`` in the event, microseconds, float32) to
  ``<out>.<NAME>`` and answer ``{"received", "first", "last"}`` (epoch seconds of the first and last receipt);
- ``quit``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import resource
import sys
import time

import orjson
import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class Counter:
    def __init__(self) -> None:
        self.received = 0
        self.expected = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies = array.array("f")
        self.done: asyncio.Future[None] | None = None

    def got(self, payload: bytes) -> None:
        now = time.time()
        self.received += 1
        if self.first == 0.0:
            self.first = now
        self.last = now
        try:
            ts = orjson.loads(payload).get("ts")
        except orjson.JSONDecodeError:
            ts = None
        if ts is not None:
            self.latencies.append((now - ts) * 1e6)
        if self.done is not None and self.received >= self.expected and not self.done.done():
            self.done.set_result(None)


class Client(asyncio.Protocol):
    __slots__ = ("protocol", "transport", "opened", "counter", "authorization")

    def __init__(self, uri: str, counter: Counter, opened: asyncio.Future[bool], authorization: str | None) -> None:
        self.protocol = ClientProtocol(parse_uri(uri), max_size=2**20)
        self.authorization = authorization
        self.counter = counter
        self.opened = opened
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = self.protocol.connect()
        if self.authorization:
            request.headers["Authorization"] = self.authorization
        self.protocol.send_request(request)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.counter.got(bytes(event.data))
            elif isinstance(event, Response) and not self.opened.done():
                self.opened.set_result(event.status_code == 101)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)


async def main(url: str, count: int, out: str, parallel: int, authorization: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    counter = Counter()
    gate = asyncio.Semaphore(parallel)
    clients: list[Client] = []
    failures = 0

    async def open_one() -> None:
        nonlocal failures
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, client = await loop.create_connection(
                    lambda: Client(url, counter, opened, authorization), uri.host, uri.port
                )
                if await asyncio.wait_for(opened, 30):
                    clients.append(client)
                    return
            except (OSError, TimeoutError):
                pass
            failures += 1

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    answer({"connected": len(clients), "failed": failures, "seconds": time.monotonic() - started})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "quit":
            break
        _, name, expect, timeout = line
        counter.received, counter.first, counter.last = 0, 0.0, 0.0
        counter.latencies = array.array("f")
        counter.expected = int(expect) * len(clients)
        counter.done = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(counter.done, float(timeout))
        with open(f"{out}.{name}", "wb") as handle:
            counter.latencies.tofile(handle)
        answer({"received": counter.received, "first": counter.first, "last": counter.last})
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def answer(data: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--parallel", type=int, default=100)
    parser.add_argument("--authorization", help="the Authorization header of every handshake")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(args.url, args.count, args.out, args.parallel, args.authorization))
