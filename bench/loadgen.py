"""A lean HTTP/1.1 load generator: kept-alive connections that send prebuilt requests and read their answers.

A benchmark's client shares the machine with what it measures, so it must cost far less per request than the
server it loads: httpx spends a millisecond or more of CPU per request on this machine, more than plain Celery's
whole round trip. Here a request is bytes built once (method, path, headers, body) written to an asyncio stream,
and the answer is read as a status line, headers up to the blank line, and ``Content-Length`` bytes of body — the
only framing the servers measured here use for these routes. No redirects, no cookies, no chunked bodies (an
answer without ``Content-Length`` raises).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson


class Answer:
    """An HTTP answer: its status and body (headers are not kept)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    def json(self) -> Any:
        return orjson.loads(self.body)


class Connection:
    """One kept-alive HTTP/1.1 connection to ``host:port``; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head
        self._built: dict[tuple[str, str, bytes], bytes] = {}

    @classmethod
    async def open(cls, base_url: str, headers: Mapping[str, str]) -> Connection:
        """A connection to ``base_url`` (``http://host:port``) that sends ``headers`` with every request."""
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        head = f"Host: {host}:{port}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return cls(reader, writer, head.encode())

    def build(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The bytes of a request (JSON when it has a body), to pass to :meth:`send` as often as wanted."""
        line = f"{method} {path} HTTP/1.1\r\n".encode() + self.head
        if body is None:
            return line + b"\r\n"
        return line + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """Send a request and read its answer (a request with a body is built once per connection)."""
        if body is None:
            return await self.send(self.build(method, path))
        key = (method, path, body)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = self.build(method, path, body)
        return await self.send(built)

    async def send(self, request: bytes) -> Answer:
        """Write ``request`` (from :meth:`build`) and read its answer."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        start = head.lower().find(b"\r\ncontent-length:")
        if start < 0:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        end = head.find(b"\r\n", start + 2)
        length = int(head[start + 17 : end])
        return Answer(status, await self.reader.readexactly(length) if length else b"")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Pool:
    """``size`` kept-alive connections; :meth:`connection` lends one, waiting while every one is busy."""

    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        for connection in connections:
            self._idle.put_nowait(connection)

    @classmethod
    async def open(cls, base_url: str, headers: Mapping[str, str], size: int) -> Pool:
        return cls([await Connection.open(base_url, headers) for _ in range(size)])

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        connection = await self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


@contextlib.asynccontextmanager
async def pool(base_url: str, headers: Mapping[str, str], size: int) -> AsyncIterator[Pool]:
    """A :class:`Pool` of ``size`` connections, closed on exit."""
    opened = await Pool.open(base_url, headers, size)
    try:
        yield opened
    finally:
        await opened.close()
