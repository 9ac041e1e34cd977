"""Uploads at the edge of what the api takes, in-process: a body slower than the minimum rate (408), a key sending its
cap of uploads at once (429, across api processes), a spool whose disk is full (507; a small tmpfs is mounted over
the spool directory, which needs root). Nothing of a refused upload is left: no spool file, no job."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from api.leases import Leases
from conveyor.names import LEASE_UPLOAD
from conveyor.redis_client import redis_client
from conveyor.settings import Settings
from tests.inprocess import Api, serve
from tests.uploads_support import BOUNDARY, MULTIPART, body, part, post

pytestmark = pytest.mark.anyio

HEAD = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'.encode()


def settings_for(tmp_path: Path, redis_url: str, **extra: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "var", redis_url=redis_url, **extra)  # type: ignore[call-arg]


def key_id(key: str) -> str:
    """The public id of a key ``cvk_<id>_<secret>``."""
    return key.split("_")[1]


def leftovers(api: Api) -> list[str]:
    spool = api.settings.spool_dir
    return [p.name for p in spool.iterdir()] if spool.exists() else []


async def jobs(api: Api) -> list[object]:
    found: list[object] = (await api.client.get("/jobs")).json()["jobs"]
    return found


async def test_an_upload_slower_than_the_minimum_rate_is_408(tmp_path: Path, private_redis_url: str) -> None:
    settings = settings_for(
        tmp_path, private_redis_url, min_upload_bytes_per_second=1000, upload_rate_window_seconds=0.5
    )

    async def trickle() -> AsyncIterator[bytes]:
        yield HEAD
        for _ in range(400):  # 20 bytes/s: far below 1000 bytes/s
            yield b"x"
            await anyio.sleep(0.05)

    async with serve(settings) as api:
        response = await api.client.post("/uploads", content=trickle(), headers=MULTIPART)
        assert response.status_code == 408, response.text
        assert "1000 bytes/s" in response.json()["detail"]
        assert leftovers(api) == [] and await jobs(api) == []


async def test_a_key_sending_its_cap_of_uploads_gets_429_whichever_process_holds_them(
    tmp_path: Path, private_redis_url: str
) -> None:
    settings = settings_for(tmp_path, private_redis_url, max_uploads_per_key=2)
    async with serve(settings) as api:
        other = Leases(redis_client(private_redis_url, asynchronous=True))  # another api process's, on the same Redis
        try:
            held = [await other.take(LEASE_UPLOAD, key_id(api.key), 2) for _ in range(2)]
            assert all(held)
            one = body(part('form-data; name="file"; filename="a.txt"', b"words\n"))
            refused = await post(api.client, one)
            assert refused.status_code == 429, refused.text
            assert "limit of 2 uploads" in refused.json()["detail"] and refused.headers["retry-after"] == "1"
            other.release(held[0])
            with anyio.fail_after(10):
                while (await post(api.client, one)).status_code != 202:
                    await anyio.sleep(0.01)  # the release reaches Redis in the background
            assert not api.state.leases.held, "an upload's lease is given back once it is received"
        finally:
            await other.aclose()
            await other.client.aclose()


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (root only; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


async def test_an_upload_to_a_full_disk_is_507_and_stores_nothing(
    tmp_path: Path, private_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, private_redis_url)
    big = os.urandom(2 * 1024 * 1024)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the disk fills up while it is written
        yield HEAD
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    with small_disk(settings.spool_dir, "1m"):
        async with serve(settings) as api:
            declared = await post(api.client, body(part('form-data; name="file"; filename="big.bin"', big)))
            streamed = await api.client.post("/uploads", content=chunked(), headers=MULTIPART)
            for response in (declared, streamed):
                assert response.status_code == 507, response.text
                detail = response.json()["detail"]
                assert "storage space" in detail and "/" not in detail and "Errno" not in detail
            assert leftovers(api) == [] and await jobs(api) == []
            errors = [r for r in caplog.records if r.levelno == logging.ERROR and "no space left" in r.getMessage()]
            assert len(errors) == 2 and all(str(settings.data_dir) not in r.getMessage() for r in errors)
            small = await post(api.client, body(part('form-data; name="file"; filename="small.txt"', b"fits\n")))
            assert small.status_code == 202, "the api takes what fits"
