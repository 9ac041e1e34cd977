"""Building multipart bodies by hand, for inputs no well-behaved client would send."""

from __future__ import annotations

import httpx

BOUNDARY = "conveyor-test-7f3a"


def part(disposition: str, data: bytes, content_type: str | None = "application/octet-stream") -> bytes:
    headers = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


#: The ``Content-Type`` of a body made by :func:`body`.
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def post(client: httpx.AsyncClient, content: bytes, **headers: str) -> httpx.Response:
    return await client.post("/uploads", content=content, headers={**MULTIPART, **headers})
