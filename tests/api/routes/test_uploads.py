"""``/uploads`` on the in-process api: names, types, dedup, download, limits, hostile multipart; ingest run by the
burst worker. What needs a real socket (a body cut off mid-way by the network, uvicorn's handling of an early answer)
is in tests/system/test_upload_sockets.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.inprocess import Api, serve
from tests.uploads_support import BOUNDARY, MULTIPART, body, part, post

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
LIMIT = 1024 * 1024


async def upload(
    api: Api, worker: BurstWorker, data: bytes, disposition: str, ctype: str = "text/plain"
) -> dict[str, Any]:
    response = await post(api.client, body(part(disposition, data, ctype)))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert await worker.drain_async() == [job_id]
    job = (await api.client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "succeeded", job
    result: dict[str, Any] = job["result"]
    return result


def spool_files(data_dir: Path) -> list[str]:
    spool = data_dir / "spool"
    return [p.name for p in spool.iterdir()] if spool.exists() else []


def spool_is_clean(api: Api) -> bool:
    return not any(name.endswith(".part") for name in spool_files(api.settings.data_dir))


@pytest.mark.parametrize(
    ("disposition", "stored_as"),
    [
        ('form-data; name="file"; filename="../../etc/passwd"', "passwd"),
        ('form-data; name="file"; filename="/abs/path/x.txt"', "x.txt"),
        ('form-data; name="file"; filename="nul\x00byte.txt"', "nulbyte.txt"),
        ('form-data; name="file"; filename="safe.txt"; filename*=UTF-8\'\'..%2F..%2Fevil', "safe.txt"),
        ("form-data; name=\"file\"; filename*=UTF-8''..%2F..%2Fevil", None),
        ('form-data; name="file"; filename="' + "n" * 600 + '.txt"', "n" * 251 + ".txt"),
        ('form-data; name="file"', None),
    ],
)
async def test_client_names_are_sanitised_metadata(
    api: Api, burst_worker: BurstWorker, disposition: str, stored_as: str | None
) -> None:
    result = await upload(api, burst_worker, os.urandom(64), disposition)
    assert result["filename"] == stored_as
    assert result["storage_key"] == f"sha256/{result['sha256'][:2]}/{result['sha256']}"
    storage = api.settings.storage_dir
    stored = storage / result["storage_key"]
    assert stored.resolve().is_relative_to(storage.resolve())
    assert stored.is_file()


async def test_content_type_is_sniffed_not_trusted(api: Api, burst_worker: BurstWorker) -> None:
    result = await upload(api, burst_worker, PNG, 'form-data; name="file"; filename="cat.txt"', ctype="text/plain")
    assert result["content_type"] == "image/png"
    result = await upload(api, burst_worker, b"just words\n", 'form-data; name="file"; filename="a.png"', "image/png")
    assert result["content_type"] == "text/plain"


async def test_same_content_twice_is_stored_once(api: Api, burst_worker: BurstWorker) -> None:
    data = os.urandom(100_000)
    first = await upload(api, burst_worker, data, 'form-data; name="file"; filename="one.bin"')
    second = await upload(api, burst_worker, data, 'form-data; name="file"; filename="two.bin"')
    assert first["upload_id"] != second["upload_id"]
    assert first["storage_key"] == second["storage_key"]
    assert (first["filename"], second["filename"]) == ("one.bin", "two.bin")
    prefix = api.settings.storage_dir / "sha256" / first["sha256"][:2]
    assert [p.name for p in prefix.iterdir() if p.name == first["sha256"]] == [first["sha256"]]


async def test_download_with_etag_range_and_conditional_requests(api: Api, burst_worker: BurstWorker) -> None:
    data = os.urandom(50_000)
    result = await upload(api, burst_worker, data, 'form-data; name="file"; filename="r\u00e9sum\u00e9.bin"')
    url = f"/uploads/{result['upload_id']}/content"
    client = api.client
    full = await client.get(url)
    assert full.status_code == 200 and full.content == data
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    assert full.headers["etag"] == etag
    assert full.headers["accept-ranges"] == "bytes"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in full.headers["content-disposition"]
    assert full.headers["x-content-type-options"] == "nosniff"

    part_ = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part_.status_code == 206 and part_.content == data[100:200]
    assert part_.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert (await client.get(url, headers={"Range": "bytes=-10"})).content == data[-10:]
    assert (await client.get(url, headers={"Range": "bytes=49990-"})).content == data[49990:]
    assert (await client.get(url, headers={"Range": f"bytes={len(data)}-"})).status_code == 416
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})).status_code == 206
    assert (await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})).status_code == 200
    assert (await client.get("/uploads/01a207a2-fb69-7023-9247-baa030751cb3/content")).status_code == 404


async def test_list_uploads_newest_first(api: Api, burst_worker: BurstWorker) -> None:
    ids = [(await upload(api, burst_worker, os.urandom(10), 'form-data; name="file"'))["upload_id"] for _ in range(3)]
    page = (await api.client.get("/uploads", params={"limit": 2})).json()
    assert [u["upload_id"] for u in page["uploads"]] == ids[::-1][:2]
    rest = (await api.client.get("/uploads", params={"limit": 1, "cursor": page["next_cursor"]})).json()
    assert rest["uploads"][0]["upload_id"] == ids[0]
    assert (await api.client.get("/uploads", params={"cursor": "nope!"})).status_code == 400


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        (body(part('form-data; name="other"', b"x")), 422, "file"),
        (body(part('form-data; name="file"', b"1"), part('form-data; name="file"', b"2")), 400, "only one"),
        (body(*[part(f'form-data; name="f{i}"', b"x", None) for i in range(20)]), 400, "too many"),
        (body(part('form-data; name="f"; x="' + "a" * 20_000 + '"', b"x")), 400, "header"),
        (body(part('form-data; name="note"', b"x" * 70_000, None)), 400, "larger than"),
        (body(part("attachment", b"x")), 400, "form-data"),
        (b"--" + BOUNDARY.encode() + b"\r\ngarbage without end", 400, "malformed"),
    ],
)
async def test_hostile_multipart_gets_a_clear_4xx(api: Api, content: bytes, status: int, words: str) -> None:
    response = await post(api.client, content)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert spool_is_clean(api)
    assert (await api.client.get("/jobs")).json()["jobs"] == []


async def test_not_multipart_is_415(api: Api) -> None:
    response = await api.client.post("/uploads", content=b"raw", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415 and "multipart" in response.json()["detail"]
    response = await api.client.post("/uploads", content=b"raw", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400 and "boundary" in response.json()["detail"]


async def test_client_that_disconnects_mid_upload_leaves_no_job_and_no_file(api: Api) -> None:
    head = part('form-data; name="file"; filename="cut.bin"', b"")[:-2]
    chunks = [head, os.urandom(1_000_000), os.urandom(1_000_000)]
    sent: list[Message] = []

    async def receive() -> Message:
        message = (
            {"type": "http.request", "body": chunks.pop(0), "more_body": True}
            if chunks
            else {"type": "http.disconnect"}
        )
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in {**api.headers, **MULTIPART}.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/uploads",
        "raw_path": b"/uploads",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", b"10000000")],
        "client": ("127.0.0.1", 50000),
        "server": ("api", 80),
    }
    await api.app(scope, receive, send)
    assert spool_is_clean(api), spool_files(api.settings.data_dir)
    assert (await api.client.get("/jobs", params={"kind": "upload"})).json()["jobs"] == []


@pytest.fixture
async def limited(api_settings: Settings) -> AsyncIterator[Api]:
    """An api with a 1 MiB upload limit and a type allow-list."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=api_settings.data_dir,
        redis_url=api_settings.redis_url,
        max_upload_bytes=LIMIT,
        upload_allowed_types="image/png, text/*",
    )
    async with serve(settings) as running:
        yield running


async def test_over_the_limit_streamed_without_length_is_413_before_the_body_ends(limited: Api) -> None:
    head = part('form-data; name="file"; filename="big.txt"', b"", "text/plain")[:-2]
    offered = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal offered
        yield head
        while offered < 64 * LIMIT:  # up to 64 MiB; the api must answer long before that
            offered += 65536
            yield b"a" * 65536

    response = await limited.client.post("/uploads", content=endless(), headers=MULTIPART)
    assert response.status_code == 413, response.text
    assert "larger than the limit" in response.json()["detail"]
    assert offered < 8 * LIMIT, f"the api read {offered} bytes before refusing"
    assert spool_files(limited.settings.data_dir) == []


async def test_declared_length_over_the_limit_is_413_at_once(limited: Api) -> None:
    offered = 0

    async def never_read() -> AsyncIterator[bytes]:
        nonlocal offered
        offered += 1
        yield b"x"

    headers = {**MULTIPART, "Content-Length": "99999999999"}
    response = await limited.client.post("/uploads", content=never_read(), headers=headers)
    assert response.status_code == 413, response.text
    assert "exceeds the upload limit" in response.json()["detail"]
    assert offered == 0, "the api read the body of a request it refuses by its length"
    assert spool_files(limited.settings.data_dir) == []


async def test_exactly_the_limit_is_accepted(limited: Api) -> None:
    response = await post(
        limited.client, body(part('form-data; name="file"; filename="max.txt"', b"a" * LIMIT, "text/plain"))
    )
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
async def test_allow_list_is_checked_against_sniffed_type(limited: Api, data: bytes, status: int) -> None:
    response = await post(limited.client, body(part('form-data; name="file"; filename="x.png"', data, "image/png")))
    assert response.status_code == status, response.text
    if status == 415:
        assert "is not accepted" in response.json()["detail"]
        assert not [name for name in spool_files(limited.settings.data_dir) if name.endswith(".part")]
