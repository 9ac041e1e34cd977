"""Where stored files live. Content-addressed: the key is the sha256, so identical content is kept once."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path


def content_key(sha256: str) -> str:
    """The storage key for content with this digest."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256 hex digest")
    return f"sha256/{sha256[:2]}/{sha256}"


class Storage(ABC):
    """A place to keep uploaded files by key. Backends: a local directory (object storage can follow)."""

    @abstractmethod
    def put_file(self, source: Path, key: str) -> bool:
        """Move ``source`` under ``key``. If the key already holds content, drop ``source`` instead.

        Returns ``True`` when the bytes were newly stored. Atomic: readers see the whole file or none.
        """

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def path(self, key: str) -> Path:
        """A local file holding the content, for reading it back (a remote backend would cache it here).

        Raises ``ValueError`` for a key that would escape the store.
        """


class LocalStorage(Storage):
    """Files under one directory; on the same filesystem as the spool, so storing is a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise ValueError("key escapes the storage root")
        return target

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put_file(self, source: Path, key: str) -> bool:
        target = self.path(key)
        if target.is_file():
            source.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return True
