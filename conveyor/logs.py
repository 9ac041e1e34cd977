"""Structured logs: one event per line, ``key=value`` text (the default) or JSON (``CONVEYOR_LOG_FORMAT=json``).

Conveyor's own code logs an event name and fields, never a formatted sentence::

    log = logs.get("conveyor.worker")
    log.info("job started", job_id=job.job_id, owner=job.owner, attempt=2)

which prints ``ts=… proc=worker-notifications level=info logger=conveyor.worker event="job started"
job_id=… owner=… attempt=2`` or, as JSON, ``{"ts": …, "proc": …, "level": "info", "logger": …, "event": "job
started", "job_id": …, "owner": …, "attempt": 2}``. Lines of other libraries (Celery, uvicorn) become events with
their message as ``event``. Every line names its process, and every API key secret, ticket and Authorization
credential in it is masked (:func:`redact`), whichever field it is in.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

#: Credentials that must never reach a log line: API keys, tickets, bearer and basic authorization values.
_SECRETS = re.compile(
    r"(?P<key>cvk_[A-Za-z0-9]+_)[A-Za-z0-9_-]+"
    r"|(?P<ticket>cvt_)[A-Za-z0-9_-]+"
    r"|(?P<auth>(?:[Bb]earer|[Bb]asic)\s+)[A-Za-z0-9._~+/=-]+"
)
#: The ``LogRecord`` attribute holding an event's fields.
FIELDS = "conveyor_fields"
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def _mask(match: re.Match[str]) -> str:
    return (match.group("key") or match.group("ticket") or match.group("auth")) + "[redacted]"


def redact(text: str) -> str:
    """``text`` with every API key secret, ticket and Authorization credential replaced by ``[redacted]``
    (a key's public id is kept, so that a line still tells which key it was)."""
    return _SECRETS.sub(_mask, text)


class Logger(logging.LoggerAdapter[logging.Logger]):
    """A stdlib logger whose calls take an event name and keyword fields: ``log.warning("x failed", job_id=…)``.
    ``exc_info`` and ``stack_info`` keep their stdlib meaning."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        passed = {name: kwargs.pop(name) for name in ("exc_info", "stack_info", "stacklevel") if name in kwargs}
        fields = dict(kwargs)
        kwargs.clear()
        kwargs.update(passed)
        kwargs["extra"] = {FIELDS: fields}
        return msg, kwargs


def get(name: str) -> Logger:
    """The structured logger called ``name``."""
    return Logger(logging.getLogger(name))


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields: Mapping[str, Any] = getattr(record, FIELDS, {})
    return fields


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if _PLAIN.match(text) else orjson.dumps(text).decode()


class KeyValueFormatter(logging.Formatter):
    """``key=value`` lines: ``ts proc level logger event``, then the event's fields, then ``exc``."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"proc={self.process_name}", f"level={record.levelname.lower()}"]
        parts += [f"logger={record.name}", f"event={_kv(record.getMessage())}"]
        parts += [f"{name}={_kv(value)}" for name, value in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_kv(self.formatException(record.exc_info))}")
        return redact(" ".join(parts))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (epoch seconds), ``proc``, ``level``, ``logger``, ``event``, the event's
    fields, and ``exc`` (the traceback) when there is one."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": record.created,
            "proc": self.process_name,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name, value in _fields(record).items():
            data.setdefault(name, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(data, default=str).decode())


def configure(process_name: str, level: str = "INFO", fmt: str = "kv") -> None:
    """Send every log record of this process to stderr, one line each, tagged with ``process_name``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else KeyValueFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-task lines from Celery repeat what Conveyor logs with the job id; keep their warnings only.
    for noisy in ("httpx", "httpcore", "alembic", "celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # At DEBUG, websockets logs every handshake header; those are credentials (redacted anyway) and noise.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))
