"""Side effects are recorded once per job, whatever the number of runs."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from conveyor.store.ledger import Ledger

JOB = "01a207a2-fb69-7023-9247-baa030751cb3"


def test_log_notification_is_written_once(engine: Engine) -> None:
    ledger = Ledger(engine)
    first = ledger.log_notification(JOB, level="info", message="hello", data={"a": 1}, owner=None)
    second = ledger.log_notification(JOB, level="error", message="other", data=None, owner=None)
    assert first == second
    assert ledger.notification(JOB)["message"] == "hello"  # type: ignore[index]
    assert ledger.effect(JOB, "notification.log") == {"logged": True}
    assert ledger.effect(JOB, "upload.stored") is None


def test_upload_is_recorded_once(engine: Engine) -> None:
    ledger = Ledger(engine)
    sha = "ab" * 32
    kwargs = {"owner": None, "filename": "a.txt", "size": 3, "sha256": sha, "content_type": "text/plain"}
    first = ledger.record_upload(JOB, storage_key="k1", **kwargs)
    second = ledger.record_upload(JOB, storage_key="k2", **kwargs)
    assert first == second
    assert first["storage_key"] == "k1" and first["upload_id"] == JOB
    assert ledger.upload(JOB) == first
    assert ledger.upload("nope") is None
