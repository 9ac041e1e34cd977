"""Credentials are masked in every log line (pure functions and a real formatter)."""

from __future__ import annotations

import json
import logging

from conveyor import logs
from conveyor.logs import KeyValueFormatter, redact

KEY = "cvk_AbCdEfGh1234_" + "s3cr3t-_" * 5 + "xyz"
TICKET = "cvt_" + "T1ck-et_" * 5


def test_keys_tickets_and_authorization_values_are_masked() -> None:
    line = f"GET /ws?ticket={TICKET} Authorization: Bearer {KEY} basic dXNlcjpwYXNz key={KEY}"
    masked = redact(line)
    assert "s3cr3t" not in masked and "T1ck" not in masked and "dXNlcjpwYXNz" not in masked
    assert "cvk_AbCdEfGh1234_[redacted]" in masked and "cvt_[redacted]" in masked
    assert redact("nothing secret here: job 0190a0a0") == "nothing secret here: job 0190a0a0"


def test_the_formatter_redacts_messages_and_arguments() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "header %s", (f"Bearer {KEY}",), None)
    assert "s3cr3t" not in KeyValueFormatter("api").format(record)


def capture(name: str) -> tuple[logs.Logger, list[logging.LogRecord]]:
    """A structured logger whose records land in the returned list (not on any stream)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    base = logging.getLogger(name)
    base.handlers[:] = [Keep()]
    base.propagate = False
    return logs.Logger(base), records


def test_json_lines_carry_the_event_and_its_fields_and_stay_redacted() -> None:
    log, records = capture("tests.logs.json")
    log.warning("job started", job_id="01a2", owner="ann", attempt=2, header=f"Bearer {KEY}")
    line = logs.JsonFormatter("worker-notifications").format(records[0])
    data = json.loads(line)
    assert data["event"] == "job started" and data["job_id"] == "01a2" and data["owner"] == "ann"
    assert data["attempt"] == 2 and data["proc"] == "worker-notifications" and data["level"] == "warning"
    assert "s3cr3t" not in line and "\n" not in line


def test_key_value_lines_quote_what_needs_quoting() -> None:
    log, records = capture("tests.logs.kv")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job failed", job_id="01a2", error="it broke: badly", key=KEY)
    line = KeyValueFormatter("api").format(records[0])
    assert ' event="job failed" job_id=01a2 error="it broke: badly" ' in line
    assert "s3cr3t" not in line and "exc=" in line and "ValueError: boom" in line and "\n" not in line


def test_other_libraries_lines_become_events() -> None:
    record = logging.LogRecord("celery.worker", logging.INFO, __file__, 1, "Connected to %s", ("redis://x",), None)
    data = json.loads(logs.JsonFormatter("worker").format(record))
    assert data["event"] == "Connected to redis://x" and data["logger"] == "celery.worker"
