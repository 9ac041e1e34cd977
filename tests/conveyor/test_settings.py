"""Pure pieces: ids, storage keys and the local storage, settings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor.files.spool import spool_path
from conveyor.files.storage import LocalStorage, content_key
from conveyor.ids import new_id
from conveyor.settings import Settings


def test_ids_are_uuid7_and_sort_by_time() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id())
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert ids == sorted(ids)
    assert len(set(ids)) == 50


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


def test_spool_names_are_job_ids_only(tmp_path: Path) -> None:
    assert spool_path(tmp_path, new_id()).parent == tmp_path
    for bad in ("../x", "a/b", "", "01a207a2-fb69-7023-9247-baa030751cb3/../x"):
        with pytest.raises(ValueError):
            spool_path(tmp_path, bad)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONVEYOR_REDIS_PORT", "7001")
    monkeypatch.delenv("CONVEYOR_REDIS_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_DATABASE_URL", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.embedded_redis
    assert settings.effective_redis_url == "redis://127.0.0.1:7001/0"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'conveyor.db'}"
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://elsewhere:6379/1")
    assert Settings(_env_file=None).effective_redis_url == "redis://elsewhere:6379/1"  # type: ignore[call-arg]


def test_flower_password_is_generated_once(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    user, password = settings.flower_credentials()
    assert user == "conveyor" and len(password) >= 20
    assert settings.flower_credentials() == (user, password)
    assert (tmp_path / "flower-password").stat().st_mode & 0o077 == 0
