"""``/uploads``: receive a file into the spool and enqueue its ingest; read what was stored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse

from api.deps import IdempotencyKey, PrincipalDep, StateDep
from api.errors import ServiceUnavailable
from api.state import AppState
from api.submit import submit
from api.uploads.filenames import content_disposition, safe_filename
from api.uploads.spooling import UploadError, spool_upload
from conveyor.ids import new_id
from conveyor.names import KIND_UPLOAD, LEASE_UPLOAD
from conveyor.schemas import Accepted, Upload, UploadPage, UploadRef
from conveyor.store.jobstore import InvalidCursor

router = APIRouter(tags=["uploads"])
#: Seconds a key at its cap of uploads at once is asked to wait.
UPLOAD_RETRY_AFTER_SECONDS = 1
UploadId = Annotated[str, Path(min_length=1, max_length=64)]

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


@router.post(
    "/uploads",
    status_code=202,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"description": "Malformed multipart body"},
        413: {"description": "Larger than CONVEYOR_MAX_UPLOAD_BYTES"},
        415: {"description": "Not multipart/form-data"},
        422: {"description": "No part named 'file'"},
        429: {"description": "The key is sending its limit of uploads at once (see Retry-After)"},
        507: {"description": "No storage space left for the upload (nothing was stored); try again later"},
    },
)
async def create_upload(
    state: StateDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    key: IdempotencyKey = None,
) -> Accepted:
    """Stream the ``file`` part to the spool (sha256 on the fly, size capped) and enqueue its ingest.

    The file bytes never pass through Redis; the task gets the job id and finds the spool reference in the job.
    A key sends at most ``CONVEYOR_MAX_UPLOADS_PER_KEY`` uploads at once, across every api process (429).
    """
    settings = state.settings
    cap = settings.max_uploads_per_key
    lease = await state.leases.take(LEASE_UPLOAD, principal.key_id, cap)
    if lease is None:
        detail = f"this key is sending its limit of {cap} uploads at once; send this one when one has finished"
        raise HTTPException(429, detail, headers={"Retry-After": str(UPLOAD_RETRY_AFTER_SECONDS)})
    try:
        return await _receive(state, principal.owner, request, response, key)
    finally:
        state.leases.release(lease)


async def _receive(state: AppState, owner: str, request: Request, response: Response, key: str | None) -> Accepted:
    job_id = new_id()
    settings = state.settings
    try:
        spooled = await spool_upload(
            request, settings.spool_dir, job_id, settings.max_upload_bytes, settings.allowed_upload_types
        )
    except UploadError as exc:
        if exc.status == 503:
            raise ServiceUnavailable(exc.detail) from exc
        raise HTTPException(exc.status, exc.detail) from exc
    ref = UploadRef(
        spool_name=spooled.name,
        size=spooled.size,
        sha256=spooled.sha256,
        filename=safe_filename(spooled.filename),
        client_content_type=spooled.content_type,
        sniffed_type=spooled.sniffed_type,
    )
    summary: dict[str, Any] = {"upload": ref.model_dump(mode="json")}
    try:
        result, created = await submit(
            state,
            response,
            kind=KIND_UPLOAD,
            request=summary,
            owner=owner,
            idempotency_key=key,
            job_id=job_id,
            fingerprint={"sha256": ref.sha256, "size": ref.size, "filename": ref.filename},
        )
    except BaseException:
        spooled.path.unlink(missing_ok=True)
        raise
    if not created:
        spooled.path.unlink(missing_ok=True)
    return result


@router.get("/uploads", responses={400: {"description": "Bad cursor"}})
async def list_uploads(
    state: StateDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> UploadPage:
    """The caller's stored uploads, newest first. Pass ``next_cursor`` as ``cursor`` for the next page."""
    try:
        uploads, next_cursor = await state.db(
            lambda: state.ledger.uploads(owner=principal.owner, limit=limit, cursor=cursor)
        )
    except InvalidCursor as exc:
        raise HTTPException(400, "cursor is not one this api handed out") from exc
    return UploadPage(uploads=[Upload.model_validate(u) for u in uploads], next_cursor=next_cursor)


async def _find(state: AppState, upload_id: str, owner: str) -> Upload:
    found = await state.db(state.ledger.upload, upload_id, owner)
    if found is None:
        raise HTTPException(404, f"no upload {upload_id}")
    return Upload.model_validate(found)


@router.get("/uploads/{upload_id}", responses={404: {"description": "No such upload"}})
async def get_upload(state: StateDep, principal: PrincipalDep, upload_id: UploadId) -> Upload:
    """A stored upload's metadata (its id is the id of the job that ingested it). Another owner's is 404."""
    return await _find(state, upload_id, principal.owner)


@router.get(
    "/uploads/{upload_id}/content",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The stored bytes"},
        206: {"description": "The requested byte range"},
        304: {"description": "Unchanged (If-None-Match)"},
        404: {"description": "No such upload"},
        416: {"description": "Range not satisfiable"},
    },
)
async def get_upload_content(
    state: StateDep,
    principal: PrincipalDep,
    upload_id: UploadId,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The stored bytes, streamed. ``ETag`` is the sha256 (quoted); ``Range`` (one or more byte ranges) and
    ``If-Range`` are honoured; ``If-None-Match`` with the ETag answers 304."""
    upload = await _find(state, upload_id, principal.owner)
    etag = f'"{upload.sha256}"'
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")} | {"*"}:
        return Response(status_code=304, headers={"ETag": etag})
    path = state.storage.path(upload.storage_key)
    return FileResponse(
        path,
        media_type=upload.content_type or "application/octet-stream",
        headers={
            "ETag": etag,
            "Content-Disposition": content_disposition(upload.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )
