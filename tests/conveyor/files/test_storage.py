"""Content-addressed storage keys and the local storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.files.storage import LocalStorage, content_key


def test_content_key_needs_a_digest() -> None:
    assert content_key("ab" * 32) == f"sha256/ab/{'ab' * 32}"
    for bad in ("", "xyz", "AB" * 32, "../" * 21 + "a"):
        with pytest.raises(ValueError):
            content_key(bad)


def test_local_storage_keeps_identical_content_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    key = content_key("cd" * 32)
    for expected in (True, False):
        source = tmp_path / "incoming"
        source.write_bytes(b"data")
        assert storage.put_file(source, key) is expected
        assert not source.exists()
    assert storage.path(key).read_bytes() == b"data"
    with pytest.raises(ValueError):
        storage.path("../../etc/passwd")
