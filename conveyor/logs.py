"""Structured logs: one event per line, ``key=value`` or JSON, each line naming its process."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

#: Credentials that must never reach a log line: API keys, tickets, bearer and basic authorization values.
_SECRETS = re.compile(
    r"(?P<key>cvk_[A-Za-z0-9]+_)[A-Za-z0-9_-]+"
    r"|(?P<ticket>cvt_)[A-Za-z0-9_-]+"
    r"|(?P<auth>(?:[Bb]earer|[Bb]asic)\s+)[A-Za-z0-9._~+/=-]+"
)


def _mask(match: re.Match[str]) -> str:
    return (match.group("key") or match.group("ticket") or match.group("auth")) + "[redacted]"


def redact(text: str) -> str:
    """``text`` with every API key secret, ticket and Authorization credential replaced by ``[redacted]``
    (a key's public id is kept, so that a line still tells which key it was)."""
    return _SECRETS.sub(_mask, text)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} proc={self.process_name} level={record.levelname.lower()} logger={record.name} "
        line += f"msg={record.getMessage()!r}" if " " in record.getMessage() else f"msg={record.getMessage()}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return redact(line)


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": record.created,
            "proc": self.process_name,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(data).decode())


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
