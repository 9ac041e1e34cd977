"""Streaming a multipart upload straight to a spool file, hashing as it goes, within a size cap.

The body is never held in memory: each chunk from the socket is parsed, hashed and written, then dropped.
Any failure (too large, malformed, client gone) removes the partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from conveyor.spool import PARTIAL_SUFFIX, spool_path

MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
#: Room for boundaries and part headers on top of the file itself, when judging Content-Length.
MULTIPART_OVERHEAD = 64 * 1024
FILE_FIELD = "file"


class UploadError(Exception):
    """The upload cannot be accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Spooled:
    """A complete upload in the spool."""

    name: str
    path: Path
    size: int
    sha256: str
    filename: str | None
    content_type: str | None
    fields: dict[str, str]


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    header_bytes: int = 0
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    value: bytearray = field(default_factory=bytearray)
    is_file: bool = False


class _Receiver:
    """python-multipart callbacks writing the ``file`` part to the spool file."""

    def __init__(self, partial: Path, max_bytes: int) -> None:
        self.partial = partial
        self.max_bytes = max_bytes
        self.part = _Part()
        self.parts = 0
        self.handle: IO[bytes] | None = None
        self.digest = hashlib.sha256()
        self.size = 0
        self.file_done = False
        self.filename: str | None = None
        self.content_type: str | None = None
        self.fields: dict[str, str] = {}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(400, f"too many parts (at most {MAX_PARTS})")
        self.part = _Part()

    def _count_header(self, length: int) -> None:
        self.part.header_bytes += length
        if self.part.header_bytes > MAX_HEADER_BYTES:
            raise UploadError(400, f"part headers larger than {MAX_HEADER_BYTES} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self.part.header_name.decode("latin-1").strip().lower()
        self.part.headers[name] = self.part.header_value.decode("latin-1")
        self.part.header_name.clear()
        self.part.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self.part.headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadError(400, "each part needs Content-Disposition: form-data with a name")
        self.part.name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:
            self.part.filename = params[b"filename"].decode("utf-8", "replace")
        self.part.content_type = self.part.headers.get("content-type")
        if self.part.name == FILE_FIELD:
            if self.handle is not None or self.file_done:
                raise UploadError(400, f"only one part may be named {FILE_FIELD!r}")
            self.part.is_file = True
            self.filename = self.part.filename
            self.content_type = self.part.content_type
            self.handle = self.partial.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.is_file:
            assert self.handle is not None
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise UploadError(413, f"file larger than the limit of {self.max_bytes} bytes")
            self.digest.update(chunk)
            self.handle.write(chunk)
        else:
            self.part.value += chunk
            if len(self.part.value) > MAX_FIELD_BYTES:
                raise UploadError(400, f"form field {self.part.name!r} larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part.is_file:
            self.file_done = True
        elif self.part.name is not None:
            self.fields[self.part.name] = self.part.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.close()


def _finish(handle: IO[bytes], partial: Path, final: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(partial, final)


async def spool_upload(request: Request, spool_dir: Path, name: str, max_bytes: int) -> Spooled:
    """Receive the request's ``file`` part into ``spool_dir/name``, durably, and return what was received.

    Raises :class:`UploadError` (4xx) for a body that is not multipart, too large, malformed, or has no
    ``file`` part; also when the client goes away. In every failure case no file is left behind.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UploadError(415, "send multipart/form-data with one part named 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data needs a boundary")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise UploadError(413, f"body of {declared} bytes exceeds the upload limit of {max_bytes} bytes")
    final = spool_path(spool_dir, name)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    receiver = _Receiver(partial, max_bytes)
    callbacks = {
        attr: getattr(receiver, attr)
        for attr in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not receiver.file_done or receiver.handle is None:
            raise UploadError(422, f"a part named {FILE_FIELD!r} with the file is required")
        await anyio.to_thread.run_sync(_finish, receiver.handle, partial, final)
    except UploadError:
        raise
    except Exception as exc:
        from starlette.requests import ClientDisconnect

        if isinstance(exc, ClientDisconnect):
            raise UploadError(400, "client disconnected before the upload finished") from exc
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    finally:
        receiver.close()
        if not final.exists():
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return Spooled(
        name=name,
        path=final,
        size=receiver.size,
        sha256=receiver.digest.hexdigest(),
        filename=receiver.filename,
        content_type=receiver.content_type,
        fields=receiver.fields,
    )
