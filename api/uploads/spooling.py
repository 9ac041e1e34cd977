"""Streaming a multipart upload straight to a spool file, hashing as it goes, within a size cap.

The body is never held in memory: each chunk from the socket is parsed on the event loop and its file bytes
are hashed and written by a thread, one block behind. Any failure (too large, a refused type, malformed,
client gone, a disk that is full or fails) removes the partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.uploads.sniff import SNIFF_BYTES, allowed, sniff
from conveyor import logs
from conveyor.files.spool import PARTIAL_SUFFIX, spool_path

log = logs.get("conveyor.uploads")
MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
MAX_FIELDS = 8
#: The file's bytes are hashed and written in blocks of this size, on a thread, while the next arrives.
BLOCK_BYTES = 1024 * 1024
#: Every this many bytes, writeback of the spool file starts in the background.
WRITEBACK_BYTES = 32 * 1024 * 1024
#: Room for boundaries and part headers on top of the file itself, when judging Content-Length.
MULTIPART_OVERHEAD = 64 * 1024
FILE_FIELD = "file"
MAX_BOUNDARY = 70
#: ``errno`` values of a write that found no room: the disk (or the data directory's quota) is full.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_SPACE = "not enough storage space to take this upload now; try again later"


class UploadError(Exception):
    """The upload cannot be accepted; ``status`` is the HTTP status to answer with: 4xx for what the client sent,
    507 when the spool's disk is full, 503 when it failed otherwise. ``detail`` never names a path."""

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
    sniffed_type: str


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


class _SpoolWriter:
    """Hashes and writes the file's bytes on worker threads, one block behind the parser.

    The event loop only parses and hands over blocks of :data:`BLOCK_BYTES`; hashing and writing each run
    on a thread, in parallel with each other and with receiving the next block. At most two blocks are held
    at a time, so memory stays flat.
    """

    def __init__(self, path: Path) -> None:
        self.handle: IO[bytes] = path.open("wb", buffering=0)
        self.digest = hashlib.sha256()
        self.block: list[memoryview] = []
        self.block_bytes = 0
        self.ready: list[list[memoryview]] = []
        self.pending: asyncio.Future[tuple[None, None]] | None = None
        self.written = 0
        self.advised = 0

    def feed(self, chunk: memoryview) -> None:
        """Queue a piece of the file (a view into the received chunk: no copy is made)."""
        self.block.append(chunk)
        self.block_bytes += len(chunk)
        if self.block_bytes >= BLOCK_BYTES:
            self.ready.append(self.block)
            self.block, self.block_bytes = [], 0

    def _hash(self, block: list[memoryview]) -> None:
        for view in block:
            self.digest.update(view)

    def _write(self, block: list[memoryview]) -> None:
        size = sum(len(view) for view in block)
        done = os.writev(self.handle.fileno(), block)
        if done < size:  # a short write: finish piece by piece
            for view in block:
                skip = min(done, len(view))
                done -= skip
                _write_all(self.handle, view[skip:])
        self.written += size
        if self.written - self.advised >= WRITEBACK_BYTES:
            # Start writing these pages to disk now, so the final fsync has little left to do and the
            # page cache does not fill up with one upload.
            os.posix_fadvise(self.handle.fileno(), self.advised, self.written - self.advised, os.POSIX_FADV_DONTNEED)
            self.advised = self.written

    async def pump(self) -> None:
        """Hand every full block to two threads, one hashing and one writing it, after the previous block is
        done (so both see the blocks in order)."""
        while self.ready:
            block = self.ready.pop(0)
            if self.pending is not None:
                await self.pending
            loop = asyncio.get_running_loop()
            self.pending = asyncio.gather(
                loop.run_in_executor(None, self._hash, block), loop.run_in_executor(None, self._write, block)
            )

    async def finish(self) -> None:
        """Write what is left, then fsync and close: once this returns the bytes are on disk."""
        if self.block:
            self.ready.append(self.block)
            self.block, self.block_bytes = [], 0
        await self.pump()
        if self.pending is not None:
            await self.pending
            self.pending = None
        await anyio.to_thread.run_sync(_sync_and_close, self.handle)

    async def aclose(self) -> None:
        """Stop without finishing (after a failure): wait for the thread, then close."""
        if self.pending is not None:
            with contextlib.suppress(Exception):
                await self.pending
            self.pending = None
        self.handle.close()


def _write_all(handle: IO[bytes], view: memoryview) -> None:
    while view:
        written = handle.write(view)
        if not written:
            raise OSError("the spool file took no bytes")
        view = view[written:]


def _sync_and_close(handle: IO[bytes]) -> None:
    os.fsync(handle.fileno())
    handle.close()


class _Receiver:
    """python-multipart callbacks: the ``file`` part goes to a :class:`_SpoolWriter`, other fields are kept."""

    def __init__(self, partial: Path, max_bytes: int, allowed_types: list[str]) -> None:
        self.partial = partial
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types
        self.part = _Part()
        self.parts = 0
        self.writer: _SpoolWriter | None = None
        self.size = 0
        self.head = bytearray()
        self.sniffed: str | None = None
        self.file_done = False
        self.filename: str | None = None
        self.content_type: str | None = None
        self.fields = 0

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
            if self.writer is not None:
                raise UploadError(400, f"only one part may be named {FILE_FIELD!r}")
            self.part.is_file = True
            self.filename = self.part.filename
            self.content_type = self.part.content_type
            self.writer = _SpoolWriter(self.partial)
        elif self.part.filename is not None:
            raise UploadError(422, f"a file must be sent in the part named {FILE_FIELD!r}, not {self.part.name!r}")
        elif self.fields >= MAX_FIELDS:
            raise UploadError(400, f"too many form fields (at most {MAX_FIELDS})")

    def _sniff(self) -> None:
        self.sniffed = sniff(bytes(self.head))
        if not allowed(self.sniffed, self.allowed_types):
            raise UploadError(415, f"content type {self.sniffed} is not accepted here")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.is_file:
            assert self.writer is not None
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadError(413, f"file larger than the limit of {self.max_bytes} bytes")
            chunk = memoryview(data)[start:end]
            if self.sniffed is None:
                self.head += chunk[: SNIFF_BYTES - len(self.head)]
                if len(self.head) >= SNIFF_BYTES:
                    self._sniff()
            self.writer.feed(chunk)
        else:
            self.part.value += data[start:end]
            if len(self.part.value) > MAX_FIELD_BYTES:
                raise UploadError(400, f"form field {self.part.name!r} larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part.is_file:
            if self.sniffed is None:
                self._sniff()
            self.file_done = True
        else:
            self.fields += 1


async def spool_upload(
    request: Request, spool_dir: Path, name: str, max_bytes: int, allowed_types: list[str] | None = None
) -> Spooled:
    """Receive the request's ``file`` part into ``spool_dir/name``, durably, and return what was received.

    Raises :class:`UploadError`: 4xx for a body that is not multipart, too large, malformed, or has no ``file``
    part, and when the client goes away; 507 when the spool's disk has no room for it (at once when
    ``Content-Length`` says so) and 503 when the disk failed otherwise, both logged at ERROR. In every failure case
    no file is left behind.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UploadError(415, "send multipart/form-data with one part named 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data needs a boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise UploadError(400, f"a multipart boundary is at most {MAX_BOUNDARY} characters (RFC 2046)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise UploadError(413, f"body of {declared} bytes exceeds the upload limit of {max_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > _free_bytes(spool_dir):
        log.error("upload refused: no space left in the spool", name=name, bytes=int(declared))
        raise UploadError(507, NO_SPACE)
    final = spool_path(spool_dir, name)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    receiver = _Receiver(partial, max_bytes, allowed_types or [])
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
    started = time.monotonic()
    try:
        receive = request.receive
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            more = message.get("more_body", False)
            parser.write(message.get("body", b""))
            if receiver.writer is not None and receiver.writer.ready:
                await receiver.writer.pump()
        parser.finalize()
        if not receiver.file_done or receiver.writer is None:
            raise UploadError(422, f"a part named {FILE_FIELD!r} with the file is required")
        flush_started = time.monotonic()
        await receiver.writer.finish()
        os.replace(partial, final)
        log.info(
            "upload spooled",
            name=name,
            bytes=receiver.size,
            seconds=round(time.monotonic() - started, 3),
            flush_seconds=round(time.monotonic() - flush_started, 3),
        )
    except UploadError:
        raise
    except OSError as exc:
        raise _storage_error(exc, name) from None
    except Exception as exc:
        if isinstance(exc, ClientDisconnect):
            raise UploadError(400, "client disconnected before the upload finished") from exc
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    finally:
        if receiver.writer is not None:
            await receiver.writer.aclose()
        if not final.exists():
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return Spooled(
        name=name,
        path=final,
        size=receiver.size,
        sha256=receiver.writer.digest.hexdigest(),
        filename=receiver.filename,
        content_type=receiver.content_type,
        sniffed_type=receiver.sniffed or "application/octet-stream",
    )


def _free_bytes(directory: Path) -> int:
    """Bytes the spool's file system has free (as many as asked when that cannot be told)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 1 << 62


def _storage_error(exc: OSError, name: str) -> UploadError:
    """The answer for a spool write that failed: 507 for a full disk, 503 otherwise. Logged at ERROR with the errno,
    never with the path (the client's answer names neither)."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno in _NO_SPACE:
        log.error("upload not stored: no space left in the spool", name=name, errno=code)
        return UploadError(507, NO_SPACE)
    log.error("upload not stored: the spool's disk failed", name=name, errno=code, error=exc.strerror)
    return UploadError(503, "the upload could not be stored; try again shortly")
