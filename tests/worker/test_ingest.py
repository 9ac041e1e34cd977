"""Ingest: verified, content-addressed, recorded once, harmless to repeat."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conveyor.files.storage import content_key
from conveyor.schemas import JobStatus, UploadRef
from tests.worker.conftest import make_job
from worker.ingest import ingest
from worker.runner import run_job
from worker.runtime import Runtime


def spool(rt: Runtime, data: bytes, sha256: str | None = None) -> str:
    from conveyor.ids import new_id

    name = new_id()
    rt.settings.spool_dir.mkdir(parents=True, exist_ok=True)
    (rt.settings.spool_dir / name).write_bytes(data)
    ref = UploadRef(
        spool_name=name,
        size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        filename="a.bin",
        client_content_type="application/octet-stream",
    )
    job = make_job(rt, {"upload": ref.model_dump()}, kind="upload")
    return job.job_id


def test_ingest_stores_verifies_and_records(rt: Runtime) -> None:
    data = b"x" * 3_000_000
    job_id = spool(rt, data)
    job = run_job(rt, job_id, ingest)
    assert job is not None and job.status is JobStatus.SUCCEEDED, job
    digest = hashlib.sha256(data).hexdigest()
    assert job.result is not None and job.result["sha256"] == digest and job.result["upload_id"] == job_id
    assert Path(rt.storage.path(content_key(digest))).read_bytes() == data
    assert list(rt.settings.spool_dir.iterdir()) == []


def test_same_content_is_stored_once(rt: Runtime) -> None:
    first, second = spool(rt, b"same bytes"), spool(rt, b"same bytes")
    a, b = run_job(rt, first, ingest), run_job(rt, second, ingest)
    assert a is not None and b is not None and a.result is not None and b.result is not None
    assert a.result["storage_key"] == b.result["storage_key"]
    assert len(list(rt.settings.storage_dir.rglob("*.*"))) == 0
    assert len([p for p in rt.settings.storage_dir.rglob("*") if p.is_file()]) == 1


def test_rerun_after_a_crash_between_store_and_record(rt: Runtime) -> None:
    data = b"crash in the middle"
    job_id = spool(rt, data)
    job = rt.store.get(job_id)
    assert job is not None
    ref = UploadRef.model_validate(job.request["upload"])
    rt.storage.put_file(rt.settings.spool_dir / ref.spool_name, content_key(ref.sha256))
    done = run_job(rt, job_id, ingest)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert rt.ledger.upload(job_id) is not None


def test_corrupted_spool_file_fails_the_job(rt: Runtime) -> None:
    job_id = spool(rt, b"what arrived", sha256="00" * 32)
    job = run_job(rt, job_id, ingest)
    assert job is not None and job.status is JobStatus.FAILED
    assert "does not match" in (job.error or "")
    assert list(rt.settings.spool_dir.iterdir()) == []
