"""Client-supplied file names, made harmless: they are metadata, never a path."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_NAME_BYTES = 255


def safe_filename(name: str | None) -> str | None:
    """The client's file name as harmless metadata, or ``None`` when nothing usable is left.

    Keeps the last path component only (``/`` and ``\\`` both separate), drops control and format
    characters (NUL, newlines, right-to-left overrides), normalises to NFC, strips surrounding spaces and
    dots, and cuts to 255 UTF-8 bytes keeping the extension.
    """
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFC", base)
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().strip(".").strip()
    if not cleaned:
        return None
    if len(cleaned.encode()) <= MAX_NAME_BYTES:
        return cleaned
    stem, dot, extension = cleaned.rpartition(".")
    if not dot or len(extension.encode()) > 16:
        stem, extension = cleaned, ""
    suffix = f".{extension}" if extension else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    return stem.encode()[:budget].decode(errors="ignore") + suffix


def content_disposition(name: str | None) -> str:
    """An ``attachment`` Content-Disposition for a download, with an ASCII fallback and RFC 5987 UTF-8 name."""
    if not name:
        return "attachment"
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
