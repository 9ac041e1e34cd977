"""Credentials are masked in every log line (pure functions and a real formatter)."""

from __future__ import annotations

import logging

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
