"""Content sniffing and the type allow-list: pure functions, hostile inputs."""

from __future__ import annotations

import pytest

from api.uploads.sniff import allowed, sniff


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b"\x1f\x8b\x08\x00", "application/gzip"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (b"\x00" * 257 + b"ustar\x0000", "application/x-tar"),
        (b"hello, world\n", "text/plain"),
        ("h\u00e9llo".encode(), "text/plain"),
        (b'  {"a": 1}', "application/json"),
        (b"<?xml version='1.0'?><a/>", "application/xml"),
        (b"<!DOCTYPE html><html>", "text/html"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'>", "image/svg+xml"),
        (b"\x00\x01\x02\x03", "application/octet-stream"),
        (b"\xff\xfe\xfa", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_sniff(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


def test_sniff_tolerates_a_character_cut_at_the_end() -> None:
    assert sniff(("a" * 4094 + "\u00e9").encode()[:4095]) == "text/plain"


def test_allow_list_patterns() -> None:
    assert allowed("image/png", [])
    assert allowed("image/png", ["image/*"])
    assert allowed("text/plain", ["image/png", "text/plain"])
    assert not allowed("application/pdf", ["image/*", "text/plain"])
