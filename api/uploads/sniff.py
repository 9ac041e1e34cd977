"""Content types from the bytes themselves, never from what the client claims."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

#: How many leading bytes :func:`sniff` looks at (tar's magic sits at offset 257).
SNIFF_BYTES = 4096

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"(\xb5/\xfd", "application/zstd"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (257, b"ustar", "application/x-tar"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"MZ", "application/vnd.microsoft.portable-executable"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (0, b"\x00asm", "application/wasm"),
    (0, b"wOFF", "font/woff"),
    (0, b"wOF2", "font/woff2"),
)

_TEXT_MARKERS: tuple[tuple[bytes, str], ...] = (
    (b"<?xml", "application/xml"),
    (b"<svg", "image/svg+xml"),
    (b"<!doctype html", "text/html"),
    (b"<html", "text/html"),
    (b"{", "application/json"),
    (b"[", "application/json"),
)


def _riff(head: bytes) -> str | None:
    if head[:4] != b"RIFF" or len(head) < 12:
        return None
    return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(head[8:12])


def _iso_media(head: bytes) -> str | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in (b"avif", b"avis"):
        return "image/avif"
    if brand in (b"heic", b"heix", b"mif1"):
        return "image/heic"
    if brand.startswith(b"qt"):
        return "video/quicktime"
    return "audio/mp4" if brand == b"M4A " else "video/mp4"


def _text(head: bytes) -> str | None:
    if not head or b"\x00" in head:
        return None
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # only a character cut at the end of the sample is fine
            return None
    stripped = body.lstrip().lower()
    for marker, content_type in _TEXT_MARKERS:
        if stripped.startswith(marker):
            return content_type
    return "text/plain"


def sniff(head: bytes) -> str:
    """The content type the leading bytes show; ``application/octet-stream`` when they show none.

    Pure and total: any input gives an answer. Only the first :data:`SNIFF_BYTES` bytes are looked at.
    """
    head = head[:SNIFF_BYTES]
    for offset, magic, content_type in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return content_type
    return _riff(head) or _iso_media(head) or _text(head) or "application/octet-stream"


def allowed(content_type: str, patterns: Iterable[str]) -> bool:
    """Whether ``content_type`` matches the allow-list (``image/*`` style patterns); an empty list allows all."""
    patterns = list(patterns)
    return not patterns or any(fnmatch.fnmatchcase(content_type, pattern.strip().lower()) for pattern in patterns)
