"""Files only their owner may read: the secrets Conveyor generates and keeps under the data directory.

A secret file is created once, whole and with mode 0600 from its first byte (written under a temporary name and
linked into place, which fails if another process got there first), so no reader ever sees it empty, partly
written or readable by others; every later call reads it back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (made 0700, or set to 0700 when it exists). Returns it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret kept in ``path``: made with ``make()`` and stored (0600) the first time. Returns it with whether
    it was made by this call. Concurrent callers all get the one secret that was stored."""
    if not path.exists():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        text = make()
        temporary = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text + "\n")
            try:
                os.link(temporary, path)
                return text, True
            except FileExistsError:
                pass
        finally:
            temporary.unlink(missing_ok=True)
    return read_secret(path) or "", False


def read_secret(path: Path) -> str | None:
    """The secret kept in ``path`` (surrounding whitespace removed), or ``None`` when there is no such file."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def restrict(paths: Iterable[Path]) -> None:
    """Make each existing file of ``paths`` readable by its owner only (0600); missing ones are skipped."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.chmod(FILE_MODE)
