"""The lean load generator against a tiny HTTP/1.1 server on loopback: kept-alive requests, status and body."""

from __future__ import annotations

import asyncio

import pytest

from bench import loadgen


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request with its method, path and body length, over one kept-alive connection."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        line, *fields = head.decode().split("\r\n")
        headers = dict(field.split(": ", 1) for field in fields if field)
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
        method, path, _ = line.split(" ")
        answer = (
            f'{{"method": "{method}", "path": "{path}", "size": {len(body)}, "auth": "{headers.get("Authorization")}"}}'
        )
        status = b"202 Accepted" if method == "POST" else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: %d\r\n\r\n" % len(answer) + answer.encode())
        await writer.drain()
    writer.close()


def test_requests_go_over_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, loadgen.pool(f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}, 2) as pool:
            async with pool.connection() as connection:
                first = await connection.request("POST", "/jobs", b'{"a": 1}')
                second = await connection.request("GET", "/jobs/42")
            assert first.status == 202
            assert first.json() == {"method": "POST", "path": "/jobs", "size": 8, "auth": "Bearer k"}
            assert second.status == 200 and second.json()["path"] == "/jobs/42"

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_an_answer_without_content_length_is_refused() -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(bare, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, loadgen.pool(f"http://127.0.0.1:{port}", {}, 1) as pool:
            async with pool.connection() as connection:
                with pytest.raises(RuntimeError, match="Content-Length"):
                    await connection.request("GET", "/")

    asyncio.run(asyncio.wait_for(scenario(), 10))
