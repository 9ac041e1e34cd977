"""Ingesting an upload: verify the spooled bytes, move them into content-addressed storage, record them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from conveyor import logs
from conveyor.files.spool import spool_path
from conveyor.files.storage import content_key
from conveyor.schemas import Job, UploadRef
from conveyor.store import ledger
from worker.runner import Progress, Recorded
from worker.runtime import Runtime

log = logs.get("conveyor.ingest")
CHUNK = 1024 * 1024


class IntegrityError(Exception):
    """The spooled bytes are not what the api received."""


def sha256_file(path: Path, size: int, progress: Progress, share: float = 90.0) -> str:
    """The file's sha256, reporting progress up to ``share`` percent as it reads."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if size:
                progress(share * done / size)
    return digest.hexdigest()


def ingest(rt: Runtime, job: Job, progress: Progress) -> dict[str, Any] | Recorded:
    """Verify and store the job's upload; returns the upload's metadata.

    Idempotent: a re-run after success, or after a crash between storing and recording, records the upload
    once and leaves no spool file behind. The upload's record is written with the job's success (:class:`Recorded`).
    """
    ref = UploadRef.model_validate(job.request["upload"])
    recorded = rt.ledger.upload(job.job_id)
    source = spool_path(rt.settings.spool_dir, ref.spool_name)
    if recorded is not None:
        source.unlink(missing_ok=True)
        return recorded
    key = content_key(ref.sha256)
    if source.is_file():
        digest = sha256_file(source, ref.size, progress)
        size = source.stat().st_size
        if digest != ref.sha256 or size != ref.size:
            source.unlink(missing_ok=True)
            raise IntegrityError(f"spooled file does not match: sha256 {digest}, {size} bytes")
        newly = rt.storage.put_file(source, key)
        log.info("upload stored", job_id=job.job_id, owner=job.owner, key=key, new_content=newly)
    elif not rt.storage.exists(key):
        raise IntegrityError("spooled file is gone and the content was never stored")
    upload: dict[str, Any] = {"owner": job.owner, "filename": ref.filename, "size": ref.size, "sha256": ref.sha256}
    upload |= {"content_type": ref.sniffed_type, "storage_key": key}
    return Recorded(lambda connection: ledger.record_upload(connection, job.job_id, **upload))
