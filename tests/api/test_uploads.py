"""Uploads against a real api and worker: names, types, dedup, download, hostile multipart."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.uploads_support import BOUNDARY, body, finished, part, post
from tests.conftest import Stack

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def upload(client: httpx.Client, stack: Stack, data: bytes, disposition: str, ctype: str = "text/plain") -> dict:  # type: ignore[type-arg]
    response = post(client, body(part(disposition, data, ctype)))
    assert response.status_code == 202, response.text
    event = finished(stack.ws_url, response.json()["job_id"], headers=stack.headers)
    assert event["type"] == "job.succeeded", event
    return event["result"]  # type: ignore[no-any-return]


def spool_is_clean(stack: Stack) -> bool:
    return not any(p.suffix == ".part" for p in (stack.data_dir / "spool").iterdir())


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
def test_client_names_are_sanitised_metadata(
    client: httpx.Client, stack: Stack, disposition: str, stored_as: str | None
) -> None:
    result = upload(client, stack, os.urandom(64), disposition)
    assert result["filename"] == stored_as
    assert result["storage_key"] == f"sha256/{result['sha256'][:2]}/{result['sha256']}"
    stored = stack.data_dir / "storage" / result["storage_key"]
    assert stored.resolve().is_relative_to((stack.data_dir / "storage").resolve())


def test_content_type_is_sniffed_not_trusted(client: httpx.Client, stack: Stack) -> None:
    result = upload(client, stack, PNG, 'form-data; name="file"; filename="cat.txt"', ctype="text/plain")
    assert result["content_type"] == "image/png"
    result = upload(client, stack, b"just words\n", 'form-data; name="file"; filename="a.png"', ctype="image/png")
    assert result["content_type"] == "text/plain"


def test_same_content_twice_is_stored_once(client: httpx.Client, stack: Stack) -> None:
    data = os.urandom(100_000)
    first = upload(client, stack, data, 'form-data; name="file"; filename="one.bin"')
    second = upload(client, stack, data, 'form-data; name="file"; filename="two.bin"')
    assert first["upload_id"] != second["upload_id"]
    assert first["storage_key"] == second["storage_key"]
    assert (first["filename"], second["filename"]) == ("one.bin", "two.bin")
    prefix = stack.data_dir / "storage" / "sha256" / first["sha256"][:2]
    assert [p.name for p in prefix.iterdir() if p.name == first["sha256"]] == [first["sha256"]]


def test_download_with_etag_range_and_conditional_requests(client: httpx.Client, stack: Stack) -> None:
    data = os.urandom(50_000)
    result = upload(client, stack, data, 'form-data; name="file"; filename="r\u00e9sum\u00e9.bin"')
    url = f"/uploads/{result['upload_id']}/content"
    full = client.get(url)
    assert full.status_code == 200 and full.content == data
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    assert full.headers["etag"] == etag
    assert full.headers["accept-ranges"] == "bytes"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in full.headers["content-disposition"]
    assert full.headers["x-content-type-options"] == "nosniff"

    part_ = client.get(url, headers={"Range": "bytes=100-199"})
    assert part_.status_code == 206 and part_.content == data[100:200]
    assert part_.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(url, headers={"Range": "bytes=-10"}).content == data[-10:]
    assert client.get(url, headers={"Range": "bytes=49990-"}).content == data[49990:]
    assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}).status_code == 200
    assert client.get("/uploads/01a207a2-fb69-7023-9247-baa030751cb3/content").status_code == 404


def test_list_uploads_newest_first(client: httpx.Client, stack: Stack) -> None:
    ids = [upload(client, stack, os.urandom(10), 'form-data; name="file"')["upload_id"] for _ in range(3)]
    page = client.get("/uploads", params={"limit": 2}).json()
    assert [u["upload_id"] for u in page["uploads"]] == ids[::-1][:2]
    rest = client.get("/uploads", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert rest["uploads"][0]["upload_id"] == ids[0]
    assert client.get("/uploads", params={"cursor": "nope!"}).status_code == 400


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
def test_hostile_multipart_gets_a_clear_4xx(
    client: httpx.Client, stack: Stack, content: bytes, status: int, words: str
) -> None:
    response = post(client, content)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert spool_is_clean(stack)


def test_not_multipart_is_415(client: httpx.Client) -> None:
    response = client.post("/uploads", content=b"raw", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 415 and "multipart" in response.json()["detail"]
    response = client.post("/uploads", content=b"raw", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400 and "boundary" in response.json()["detail"]


def test_client_that_disconnects_mid_upload_leaves_no_job_and_no_file(client: httpx.Client, stack: Stack) -> None:
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
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not spool_is_clean(stack) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool_is_clean(stack), list((stack.data_dir / "spool").iterdir())
    after = client.get("/jobs", params={"kind": "upload", "limit": 1}).json()["jobs"]
    assert after == before
