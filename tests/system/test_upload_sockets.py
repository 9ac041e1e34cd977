"""Uploads over a real socket to uvicorn: an api with a small size limit refuses early and leaves nothing behind,
and a client whose connection drops mid-upload leaves no job and no file. (The same rules in-process:
tests/api/routes/test_uploads.py.)"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.ops.redis_server import free_port
from tests.conftest import Stack
from tests.support import base_env, conveyor, create_key, wait_until_healthy
from tests.uploads_support import BOUNDARY, part

pytestmark = pytest.mark.system

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
    deadline = time.monotonic() + 10
    while spool_files(data_dir) and time.monotonic() < deadline:  # the refused upload's file is removed
        time.sleep(0.02)
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


def test_client_that_disconnects_mid_upload_leaves_no_job_and_no_file(stack: Stack) -> None:
    def spool_is_clean() -> bool:
        return not any(p.suffix == ".part" for p in (stack.data_dir / "spool").iterdir())

    with stack.client() as client:
        before = client.get("/jobs", params={"kind": "upload", "limit": 1}).json()["jobs"]
        port = int(stack.base_url.rsplit(":", 1)[1])
        head = part('form-data; name="file"; filename="cut.bin"', b"")[:-2]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /uploads HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {stack.key}\r\n".encode()
                + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
                + b"Content-Length: 10000000\r\n\r\n"
                + head
                + os.urandom(3_000_000)
            )
            deadline = time.monotonic() + 10
            while spool_is_clean():  # the upload is being written to the spool: now the client goes away
                assert time.monotonic() < deadline, "the upload never reached the spool"
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while not spool_is_clean() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool_is_clean(), list((stack.data_dir / "spool").iterdir())
        after = client.get("/jobs", params={"kind": "upload", "limit": 1}).json()["jobs"]
        assert after == before
