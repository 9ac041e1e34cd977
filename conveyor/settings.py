"""The one settings object: environment variables prefixed ``CONVEYOR_``, also read from ``.env``."""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor import names
from conveyor.private import read_secret, secret

GiB = 1024**3
#: Heartbeats a run may miss before it counts as dead (see ``Settings.dead_after_seconds``).
HEARTBEAT_MISSES = 3


class Settings(BaseSettings):
    """Every knob Conveyor has. Validated once at start-up; processes share it through the environment."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var")

    redis_url: str | None = Field(
        default=None,
        description="External Redis (redis://…, or sentinel://host:port,host:port/db?master=NAME for one managed by "
        "Sentinel); unset starts the embedded one",
    )
    broker_url: str | None = Field(
        default=None,
        description="Redis for Celery's queues alone (redis:// or sentinel://); unset: the one Redis (redis_url) "
        "serves the queues, the event stream and everything else",
    )
    redis_port: int = Field(default=6380, description="Port of the embedded Redis (only when redis_url is unset)")

    database_url: str | None = Field(default=None, description="SQLAlchemy URL; unset means SQLite under data_dir")

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "conveyor"
    flower_password: SecretStr | None = None

    # Security: API keys, browser origins, rate limits, request limits (docs/SECURITY.md).
    auth: Literal["keys", "off"] = Field(
        default="keys", description="keys: every route but the public ones needs a key; off: open (not in production)"
    )
    auth_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long an api process trusts a key it checked (a revoke takes this long)"
    )
    allowed_origins: str = Field(
        default="", description="Comma-separated browser origins allowed to open /ws and /events; the api's own always"
    )
    ws_ticket_seconds: int = Field(default=30, ge=1, le=3600, description="Lifetime of a single-use WebSocket ticket")
    shared_topics: str = Field(
        default="",
        description="Topics every owner shares, as pattern:publishers[:subscribers] items, comma-separated "
        "(owners |-separated, * for any); other topics are private to each owner",
    )
    rate_limit_per_second: float = Field(default=100.0, gt=0, description="Requests per second per key, sustained")
    rate_limit_burst: int = Field(default=200, ge=1, description="Requests a key may make at once after idling")
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest request body except uploads")
    max_streams_per_key: int = Field(
        default=100, ge=1, description="Open /ws and /events streams per key, across every api process"
    )
    max_uploads_per_key: int = Field(
        default=8, ge=1, description="Uploads one key may send at once, across every api process (more: 429)"
    )
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest a request may take (uploads: longest pause between body chunks)"
    )
    min_upload_bytes_per_second: int = Field(
        default=1024, ge=0, description="Slowest an upload body may arrive, averaged over the window (408); 0: any"
    )
    upload_rate_window_seconds: float = Field(
        default=30.0, gt=0, description="The window over which an upload's rate is averaged"
    )
    # Connections (the HTTP protocol, api/connections.py): before a request, between requests, per client address.
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest a request's line and headers may take to arrive once begun (408)"
    )
    keepalive_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest a connection may stay open with no request (a new one included)"
    )
    max_connections_per_ip: int = Field(
        default=512,
        ge=0,
        description="Connections one client address may hold open per api process before a request on them is "
        "authenticated (more: refused with 429); 0: no cap (behind a proxy, which is every client's address)",
    )
    stream_send_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest an event stream's client may leave what was sent unread before it is closed as too "
        "slow (WebSocket 1013, SSE a last error message)",
    )

    max_upload_bytes: int = Field(default=2 * GiB, gt=0)
    upload_allowed_types: str = Field(
        default="", description="Comma-separated content types (image/* patterns) uploads may have; empty: any"
    )

    worker_concurrency: int = Field(default=2, ge=1, description="Processes of an uploads worker")
    notification_threads: int = Field(
        default=32,
        ge=1,
        description="Threads of a notifications worker: deliveries wait on the network side by side, and the runs "
        "of one process share its job-store commits (more threads, larger groups)",
    )
    task_soft_time_limit: int = Field(default=600, ge=1)
    task_time_limit: int = Field(default=660, ge=1)
    visibility_timeout: int = Field(
        default=45, ge=10, description="Seconds before Redis gives a message a dead worker held to another worker"
    )
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="How often a run touches its job's row")
    max_crashes: int = Field(default=3, ge=1, description="Runs that may die holding a job before it is poisoned")
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_base: float = Field(default=1.0, gt=0, description="Seconds; attempt n waits up to base * 2**n")
    retry_backoff_cap: float = Field(default=300.0, gt=0, description="Longest wait between attempts (Retry-After too)")

    # Notifications: webhooks (Standard Webhooks signatures) and e-mail (SMTP).
    webhook_secret: SecretStr | None = Field(default=None, description="whsec_<base64>; a request may bring its own")
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Key sealing webhook secrets in the job store (conveyor keys secret-key); made in development",
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect, and to wait for each read")
    webhook_allow_private: bool = Field(default=False, description="Allow loopback/private/link-local targets")
    webhook_max_response_bytes: int = Field(default=65_536, ge=0, description="Most of a response body read")
    http_max_response_bytes: int = Field(
        default=1024 * 1024, ge=0, description="Most of an http notification's answer kept in the job's result"
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "conveyor@localhost"
    smtp_timeout: float = Field(default=30.0, gt=0)
    catcher_smtp_port: int = Field(default=1025, ge=1, le=65535, description="Development: the catcher's SMTP port")
    catcher_http_port: int = Field(default=1080, ge=1, le=65535, description="Development: the catcher's HTTP port")

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from conveyor.webhooks import signing_key

            signing_key(value.get_secret_value())
        return value

    events_max_len: int = Field(default=100_000, ge=1000)
    events_max_age_seconds: int = Field(default=7 * 86400, ge=60)
    ws_send_queue: int = Field(default=1000, ge=10)
    # Event streams (WebSocket /ws and SSE /events): caps per api process, keep-alives.
    stream_max_connections: int = Field(default=10_000, ge=1, description="Open event streams per api process")
    stream_max_per_topic: int = Field(default=5_000, ge=1, description="Streams subscribed to one topic, per process")
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, description="Idle seconds before an SSE comment line")
    ws_ping_interval: float = Field(default=20.0, ge=0, description="Seconds between WebSocket pings; 0: none")
    ws_ping_timeout: float = Field(default=20.0, gt=0, description="Seconds to wait for a pong before closing")
    ws_native: bool = Field(default=True, description="Serve /ws on Conveyor's own protocol (false: the ASGI route)")

    write_lock_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest a writer waits for SQLite's write lock before it answers 503"
    )
    room_max_items: int = Field(default=100, ge=1, le=10_000, description="Items one room may hold")
    room_max_ttl_seconds: int = Field(default=86_400, ge=1, description="Longest ttl_seconds a room may be made with")
    room_commands_per_second: float = Field(
        default=10.0, gt=0, description="Changes one room participant may send per second (twice as many at once)"
    )
    max_schedules_per_owner: int = Field(default=100, ge=0, description="Schedules one owner (API key's) may have")
    dispatch_grace_seconds: float = Field(default=5.0, ge=0)
    dispatch_interval_seconds: float = Field(default=5.0, gt=0)
    announce_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a recorded outcome may wait for its event before beat publishes it (a worker's own "
        "publish is retried for about 25 s)",
    )
    bundle_max: int = Field(
        default=50, ge=1, le=1000, description="Most log notifications one task message carries (1: one message each)"
    )
    spool_max_age_seconds: int = Field(default=86400, ge=60)

    # Observability (docs/OBSERVABILITY.md).
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token a Prometheus scraper sends to GET /metrics (unset: /metrics answers 401)",
    )

    health_queues: str = Field(
        default="",
        description="Comma-separated queues that must have a live worker for /health to say ok (conveyor run: all)",
    )

    stats_file: Path | None = Field(
        default=None, description="Each conveyor process appends its job-store counts here at exit (benchmarks)"
    )

    log_level: str = "INFO"
    log_format: Literal["kv", "json"] = "kv"

    # The command-line client: conveyor submit, upload, watch, jobs… (conveyor/client/).
    api_url: str | None = Field(
        default=None, description="The api the client commands talk to (--api); unset: http://api_host:api_port"
    )
    api_key: SecretStr | None = Field(
        default=None, description="The key the client commands send (--key); unset: data_dir/dev-api-key if any"
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("sentinel://"):
            from conveyor.redis_client import parse_sentinel_url

            parse_sentinel_url(value)
        return value

    @field_validator("shared_topics")
    @classmethod
    def _shared_topics(cls, value: str) -> str:
        from conveyor.topics import TopicPolicy

        TopicPolicy.parse(value)
        return value

    @field_validator("health_queues")
    @classmethod
    def _health_queues(cls, value: str) -> str:
        unknown = {item.strip() for item in value.split(",") if item.strip()} - set(names.QUEUES)
        if unknown:
            raise ValueError(f"unknown queues {sorted(unknown)}; known: {', '.join(names.QUEUES)}")
        return value

    @model_validator(mode="after")
    def _secure_in_production(self) -> Settings:
        if self.environment == "production" and self.auth == "off":
            raise ValueError("CONVEYOR_AUTH=off is refused in production")
        return self

    @property
    def origins(self) -> frozenset[str]:
        """Browser origins allowed to open event streams: the setting's, plus the api's own address."""
        own = {f"http://{self.api_host}:{self.api_port}"}
        if self.api_host in ("127.0.0.1", "0.0.0.0", "localhost"):  # noqa: S104 - a comparison, not a bind
            own |= {f"http://localhost:{self.api_port}", f"http://127.0.0.1:{self.api_port}"}
        listed = {item.strip().rstrip("/").lower() for item in self.allowed_origins.split(",") if item.strip()}
        return frozenset(own | listed)

    @property
    def dead_after_seconds(self) -> float:
        """How old a run's heartbeat must be for the run to count as dead: ``HEARTBEAT_MISSES`` beats missed."""
        return self.heartbeat_seconds * HEARTBEAT_MISSES

    @property
    def embedded_redis(self) -> bool:
        """True when Conveyor runs its own redis-server (no ``CONVEYOR_REDIS_URL``)."""
        return self.redis_url is None

    @property
    def effective_redis_url(self) -> str:
        """The Redis every process talks to: the configured one, else the embedded server's address with its
        password (from :attr:`redis_password_file`, once ``conveyor run`` or ``conveyor redis`` made it)."""
        if self.redis_url:
            return self.redis_url
        password = read_secret(self.redis_password_file)
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    @property
    def effective_broker_url(self) -> str:
        """The Redis holding Celery's queues: ``broker_url``, else the one Redis (:attr:`effective_redis_url`)."""
        return self.broker_url or self.effective_redis_url

    @property
    def separate_broker(self) -> bool:
        """True when the queues live on another Redis than the event stream (``CONVEYOR_BROKER_URL`` set)."""
        return self.effective_broker_url != self.effective_redis_url

    @property
    def required_queues(self) -> tuple[str, ...]:
        """The queues that need a live worker for ``/health`` to say ok (``health_queues``), in ``QUEUES`` order."""
        listed = {item.strip() for item in self.health_queues.split(",")}
        return tuple(queue for queue in names.QUEUES if queue in listed)

    @property
    def effective_database_url(self) -> str:
        """The job store's SQLAlchemy URL: the configured one, else SQLite under ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'conveyor.db'}"

    @property
    def allowed_upload_types(self) -> list[str]:
        """The upload allow-list as patterns; empty means every type is accepted."""
        return [item.strip().lower() for item in self.upload_allowed_types.split(",") if item.strip()]

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def redis_password_file(self) -> Path:
        """Where the embedded Redis's generated password is kept (0600)."""
        return self.data_dir / "redis-password"

    @property
    def flower_password_file(self) -> Path:
        """Where Flower's generated password is kept (0600) when ``flower_password`` is unset."""
        return self.data_dir / "flower-password"

    def flower_credentials(self) -> tuple[str, str]:
        """Flower's basic-auth pair: from settings, else generated once and kept under ``data_dir``."""
        if self.flower_password is not None:
            return self.flower_user, self.flower_password.get_secret_value()
        if self.environment == "production":
            raise RuntimeError("CONVEYOR_FLOWER_PASSWORD must be set in production (no generated default)")
        password, _made = secret(self.flower_password_file, lambda: secrets.token_urlsafe(18))
        return self.flower_user, password


#: ``CONVEYOR_`` variables that are not settings (read elsewhere: process names, the test suite, compose).
OTHER_VARIABLES = frozenset(
    {"CONVEYOR_PROCESS_NAME", "CONVEYOR_TEST_POSTGRES_URL", "CONVEYOR_IMAGE"}
    # The test suite's job store (tests/postgres.py), compose's PostgreSQL password (compose.yaml).
    | {"CONVEYOR_TEST_STORE", "CONVEYOR_POSTGRES_PASSWORD"}
)


def unknown_variables(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """The ``CONVEYOR_`` names among ``names`` that no setting reads, each with the closest setting's name (a
    misspelling is otherwise silently ignored)."""
    known = {f"CONVEYOR_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(name for name in set(names) if name.startswith("CONVEYOR_") and name.upper() not in known)
    found = []
    for name in unknown:
        if name.upper() in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        found.append((name, close[0] if close else None))
    return found


def env_file_names(path: Path = Path(".env")) -> list[str]:
    """The variable names a ``.env`` file sets (none when there is no such file)."""
    if not path.is_file():
        return []
    from dotenv import dotenv_values

    return list(dotenv_values(path))


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests override the FastAPI dependency instead of this cache."""
    return Settings()
