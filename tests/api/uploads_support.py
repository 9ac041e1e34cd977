"""Building multipart bodies by hand, for inputs no well-behaved client would send."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from websockets.sync.client import connect

BOUNDARY = "conveyor-test-7f3a"


def part(disposition: str, data: bytes, content_type: str | None = "application/octet-stream") -> bytes:
    headers = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(client: httpx.Client, content: bytes, **headers: str) -> httpx.Response:
    return client.post(
        "/uploads", content=content, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **headers}
    )


def finished(ws_url: str, job_id: str, timeout: float = 60, *, headers: Mapping[str, str]) -> dict[str, Any]:
    """The job's final event, from the WebSocket."""
    with connect(f"{ws_url}/ws?job_id={job_id}", open_timeout=10, additional_headers=headers) as ws:
        while True:
            event: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
            if event["type"] in ("job.succeeded", "job.failed", "job.cancelled"):
                return event
