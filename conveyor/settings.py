"""The one settings object: environment variables prefixed ``CONVEYOR_``, also read from ``.env``."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3


class Settings(BaseSettings):
    """Every knob Conveyor has. Validated once at start-up; processes share it through the environment."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var")

    redis_url: str | None = Field(default=None, description="External Redis; unset starts the embedded one")
    redis_port: int = Field(default=6380, description="Port of the embedded Redis (only when redis_url is unset)")

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; unset means SQLite under data_dir")

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "conveyor"
    flower_password: SecretStr | None = None

    max_upload_bytes: int = Field(default=2 * GiB, gt=0)

    worker_concurrency: int = Field(default=2, ge=1)
    task_soft_time_limit: int = Field(default=600, ge=1)
    task_time_limit: int = Field(default=660, ge=1)
    visibility_timeout: int = Field(default=900, ge=60)
    max_attempts: int = Field(default=5, ge=1)

    events_max_len: int = Field(default=100_000, ge=1000)
    events_max_age_seconds: int = Field(default=7 * 86400, ge=60)
    ws_send_queue: int = Field(default=1000, ge=10)

    dispatch_grace_seconds: float = Field(default=5.0, ge=0)
    dispatch_interval_seconds: float = Field(default=5.0, gt=0)
    spool_max_age_seconds: int = Field(default=86400, ge=60)

    log_level: str = "INFO"
    log_format: Literal["kv", "json"] = "kv"

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def embedded_redis(self) -> bool:
        """True when Conveyor runs its own redis-server (no ``CONVEYOR_REDIS_URL``)."""
        return self.redis_url is None

    @property
    def effective_redis_url(self) -> str:
        """The Redis every process talks to: the configured one, else the embedded server's address."""
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def effective_database_url(self) -> str:
        """The job store's SQLAlchemy URL: the configured one, else SQLite under ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'conveyor.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    def flower_credentials(self) -> tuple[str, str]:
        """Flower's basic-auth pair: from settings, else generated once and kept under ``data_dir``."""
        if self.flower_password is not None:
            return self.flower_user, self.flower_password.get_secret_value()
        if self.environment == "production":
            raise RuntimeError("CONVEYOR_FLOWER_PASSWORD must be set in production (no generated default)")
        path = self.data_dir / "flower-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(18))
            path.chmod(0o600)
        return self.flower_user, path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests override the FastAPI dependency instead of this cache."""
    return Settings()
