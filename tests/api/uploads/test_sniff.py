"""Content sniffing and file-name sanitising: pure functions, hostile inputs."""

from __future__ import annotations

import pytest

from api.uploads.filenames import MAX_NAME_BYTES, content_disposition, safe_filename
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


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Windows\\system32\\cmd.exe", "cmd.exe"),
        ("a\x00b.txt", "ab.txt"),
        ("line\nbreak.txt", "linebreak.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("..", None),
        ("   ", None),
        ("", None),
        (None, None),
        ("...hidden...", "hidden"),
        ("caf\u0065\u0301.txt", "caf\u00e9.txt"),
    ],
)
def test_safe_filename(name: str | None, expected: str | None) -> None:
    assert safe_filename(name) == expected


def test_very_long_names_are_cut_to_255_bytes_keeping_the_extension() -> None:
    cut = safe_filename("\u00e9" * 400 + ".tar.gz")
    assert cut is not None and cut.endswith(".gz")
    assert len(cut.encode()) <= MAX_NAME_BYTES
    assert safe_filename("x" * 1000) == "x" * 255


def test_content_disposition_has_an_ascii_fallback() -> None:
    assert content_disposition(None) == "attachment"
    header = content_disposition('r\u00e9sum\u00e9 "final".pdf')
    assert header.startswith('attachment; filename="r?sum? _final_.pdf"'.replace("?", "_"))
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf" in header
