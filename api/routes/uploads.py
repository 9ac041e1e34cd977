"""``/uploads``: receive a file into the spool and enqueue its ingest; read what was stored."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Request, Response

from api.deps import StateDep
from api.spooling import UploadError, spool_upload
from api.submit import submit
from conveyor.ids import new_id
from conveyor.names import KIND_UPLOAD
from conveyor.schemas import Accepted, UploadRef

router = APIRouter(tags=["uploads"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def safe_filename(name: str | None) -> str | None:
    """The client's filename as harmless metadata: last path component, no control characters, bounded."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    if cleaned in ("", ".", ".."):
        return None
    return cleaned[:255]


@router.post(
    "/uploads",
    status_code=202,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "Malformed multipart body"},
        413: {"description": "Larger than CONVEYOR_MAX_UPLOAD_BYTES"},
        415: {"description": "Not multipart/form-data"},
        422: {"description": "No part named 'file'"},
    },
)
async def create_upload(
    state: StateDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Accepted:
    """Stream the ``file`` part to the spool (sha256 on the fly, size capped) and enqueue its ingest.

    The file bytes never pass through Redis; the task gets the job id and finds the spool reference in the job.
    """
    job_id = new_id()
    settings = state.settings
    try:
        spooled = await spool_upload(request, settings.spool_dir, job_id, settings.max_upload_bytes)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from exc
    ref = UploadRef(
        spool_name=spooled.name,
        size=spooled.size,
        sha256=spooled.sha256,
        filename=safe_filename(spooled.filename),
        client_content_type=spooled.content_type,
    )
    summary: dict[str, Any] = {"upload": ref.model_dump(mode="json")}
    try:
        result, created = await submit(
            state,
            response,
            kind=KIND_UPLOAD,
            request=summary,
            owner=None,
            idempotency_key=idempotency_key,
            job_id=job_id,
            fingerprint={"sha256": ref.sha256, "size": ref.size, "filename": ref.filename},
        )
    except BaseException:
        spooled.path.unlink(missing_ok=True)
        raise
    if not created:
        spooled.path.unlink(missing_ok=True)
    return result


@router.get("/uploads/{upload_id}", responses={404: {"description": "No such upload"}})
async def get_upload(state: StateDep, upload_id: str) -> dict[str, Any]:
    """A stored upload's metadata (its id is the id of the job that ingested it)."""
    upload = await anyio.to_thread.run_sync(state.ledger.upload, upload_id)
    if upload is None:
        raise HTTPException(404, f"no upload {upload_id}")
    return upload
