"""An api with a small size limit and a type allow-list: refusals come early and leave nothing behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.ops.redis_server import free_port
from tests.api.uploads_support import BOUNDARY, body, part, post
from tests.support import base_env, bearer, conveyor, create_key, wait_until_healthy

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[str, Path, str]]:
    """An api (no workers needed: every request here is refused) with a 1 MiB limit and an allow-list; yields its
    URL, its data directory and an API key for it."""
    data_dir = tmp_path_factory.mktemp("limited")
    port = free_port()
    env = base_env(
        data_dir,
        CONVEYOR_REDIS_URL=redis_url.rsplit("/", 1)[0] + "/1",  # its own database: no worker takes its jobs
        CONVEYOR_API_PORT=str(port),
        CONVEYOR_MAX_UPLOAD_BYTES=str(LIMIT),
        CONVEYOR_UPLOAD_ALLOWED_TYPES="image/png, text/*",
    )
    key = create_key(env, "tests")
    api = conveyor("api", ["api"], env, data_dir / "logs")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 60, [api])
        yield f"http://127.0.0.1:{port}", data_dir, key
    finally:
        api.stop()


def spool_files(data_dir: Path) -> list[str]:
    spool = data_dir / "spool"
    return [p.name for p in spool.iterdir()] if spool.exists() else []


def test_over_the_limit_streamed_without_length_is_413_before_the_body_ends(limited: tuple[str, Path, str]) -> None:
    base_url, data_dir, key = limited
    port = int(base_url.rsplit(":", 1)[1])
    head = part('form-data; name="file"; filename="big.txt"', b"", "text/plain")[:-2]
    sent = 0
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /uploads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
        )
        chunk = b"a" * 65536
        sock.settimeout(0.01)
        # Offer up to 64 MiB; the api must answer long before that.
        while sent < 64 * LIMIT and not reply:
            data = (head if sent == 0 else b"") + chunk
            try:
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                pass
        sock.settimeout(10)
        while not reply.endswith(b"}"):
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"larger than the limit" in reply
    assert sent < 8 * LIMIT, f"the api read {sent} bytes before refusing"
    time.sleep(0.2)
    assert spool_files(data_dir) == []


def test_declared_length_over_the_limit_is_413_at_once(limited: tuple[str, Path, str]) -> None:
    base_url, data_dir, key = limited
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /uploads HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {key}\r\n".encode()
            + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
            + b"Content-Length: 99999999999\r\n\r\n"
        )
        reply = b""
        while not reply.endswith(b"}") and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"exceeds the upload limit" in reply
    assert spool_files(data_dir) == []


def test_exactly_the_limit_is_accepted(limited: tuple[str, Path, str]) -> None:
    base_url, data_dir, key = limited
    with httpx.Client(base_url=base_url, headers=bearer(key), timeout=30) as client:
        response = post(client, body(part('form-data; name="file"; filename="max.txt"', b"a" * LIMIT, "text/plain")))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"%PDF-1.7\n" + os.urandom(8000), 415),
        (b"\x7fELF" + os.urandom(100), 415),
        (b"\x89PNG\r\n\x1a\n" + os.urandom(100), 202),
        (b"plain words", 202),
    ],
)
def test_allow_list_is_checked_against_sniffed_type(limited: tuple[str, Path, str], data: bytes, status: int) -> None:
    base_url, data_dir, key = limited
    with httpx.Client(base_url=base_url, headers=bearer(key), timeout=30) as client:
        response = post(client, body(part('form-data; name="file"; filename="x.png"', data, "image/png")))
    assert response.status_code == status, response.text
    if status == 415:
        assert "is not accepted" in response.json()["detail"]
        assert not [name for name in spool_files(data_dir) if name.endswith(".part")]
