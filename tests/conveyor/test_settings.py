"""Settings: read from the environment, defaults derived from them (the embedded Redis with its password), the generated
Flower password."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.private import secret
from conveyor.settings import Settings, unknown_variables


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


def test_misspelled_variables_are_named_with_the_closest_setting() -> None:
    found = unknown_variables(
        ["CONVEYOR_API_PROT", "CONVEYOR_API_PORT", "CONVEYOR_PROCESS_NAME", "CONVEYOR_ZZZ", "HOME"]
    )
    assert found == [("CONVEYOR_API_PROT", "CONVEYOR_API_PORT"), ("CONVEYOR_ZZZ", None)]


def test_settings_give_the_embedded_redis_url_its_password(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_port=7002)  # type: ignore[call-arg]
    assert settings.effective_redis_url == "redis://127.0.0.1:7002/0"
    secret(settings.redis_password_file, lambda: "s3cret-pass")
    assert settings.effective_redis_url == "redis://:s3cret-pass@127.0.0.1:7002/0"
    external = Settings(_env_file=None, data_dir=tmp_path, redis_url="redis://elsewhere:6379/1")  # type: ignore[call-arg]
    assert external.effective_redis_url == "redis://elsewhere:6379/1"


def test_health_queues_are_checked_and_kept_in_queue_order(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, health_queues="notifications, uploads")  # type: ignore[call-arg]
    assert settings.required_queues == ("uploads", "notifications")
    assert Settings(_env_file=None, data_dir=tmp_path).required_queues == ()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown queues"):
        Settings(_env_file=None, data_dir=tmp_path, health_queues="uplods")  # type: ignore[call-arg]


def test_the_apis_own_address_is_an_allowed_origin(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, api_port=8123, allowed_origins="https://app.example/")  # type: ignore[call-arg]
    assert settings.origins == {"http://127.0.0.1:8123", "http://localhost:8123", "https://app.example"}
