"""Blobs, addressed by their sha256: read one or a bundle of many (public); store one, streamed,
or a bundle of many (signed over the bytes' hash)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from meshcompute.errors import NotFound
from meshcompute.market import operations, quotas
from meshcompute.market.api.deps import Runtime, Sha256Path, authenticate
from meshcompute.market.api.gate import signed_request
from meshcompute.market.api.schemas import BlobOut, BundleOut, FetchIn
from meshcompute.wire.auth import check_body
from meshcompute.wire.bundle import BundleTooLarge, bundle_size

router = APIRouter(tags=["blobs"])

_BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}},
    }
}
_BINARY_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}}
}


@router.get("/blobs/{sha256}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_blob(sha256: Sha256Path, runtime: Runtime) -> FileResponse:
    path = runtime.blobs.path(sha256)
    if not path.is_file():
        raise NotFound(f"blob {sha256} is not in the store")
    operations.check_servable(runtime, [sha256])
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/blobs/fetch", response_class=Response, responses=_BINARY_ANSWER)
def fetch_blobs(body: FetchIn, runtime: Runtime) -> Response:
    """The blobs named, in that order, as one bundle (docs/market-api.md)."""
    entries = operations.bundle_entries(runtime, body.sha256)
    return StreamingResponse(
        operations.bundle_chunks(runtime, entries),
        media_type="application/octet-stream",
        headers={"Content-Length": str(bundle_size(entries))},
    )


@router.put("/blobs/{sha256}", response_model=BlobOut, status_code=201,
            openapi_extra=_BINARY_BODY)
async def put_blob(
    sha256: Sha256Path, request: Request, response: Response, runtime: Runtime
) -> dict[str, Any]:
    # signed over the blob's name as the body hash (checked by the gate); the store checks
    # that the bytes hash to it
    address = authenticate(request)
    now = time.time()
    stored_already = runtime.blobs.exists(sha256)
    declared = request.headers.get("content-length")
    length = int(declared) if declared and declared.isdigit() \
        and "transfer-encoding" not in request.headers else None
    # what this upload may store: the blob's size when it is there (uploading it again keeps
    # it longer, so it counts like a new one), else the declared length, else the largest
    # blob (a stream of unknown length is settled with what it turns out to be)
    reserve = runtime.blobs.size(sha256) if stored_already else (
        length if length is not None else runtime.blobs.max_bytes)
    admitted = await run_in_threadpool(quotas.admit, runtime, address, reserve, now=now)
    created = False
    try:
        if not stored_already:
            created = await runtime.blobs.put_stream(sha256, request.stream(),
                                                     declared_size=length)
    finally:  # the reservation becomes what is stored (nothing, when the upload failed)
        stored = created or runtime.blobs.exists(sha256)
        await run_in_threadpool(quotas.charge, runtime, admitted,
                                runtime.blobs.size_or_zero(sha256) if stored else 0, now=now)
    # uploaded: kept at least the grace period, for its job to be posted
    await run_in_threadpool(runtime.state.keep_blobs, [sha256],
                            now + runtime.settings.blob_grace_s)
    response.status_code = 201 if created else 200
    return {"sha256": sha256, "size": runtime.blobs.size(sha256), "created": created}


@router.post("/blobs/bundle", response_model=BundleOut, status_code=201,
             openapi_extra=_BINARY_BODY)
async def put_bundle(request: Request, response: Response, runtime: Runtime) -> dict[str, Any]:
    """Many blobs in one bundle body (docs/market-api.md), each hash-checked."""
    body = await _read_capped(request, runtime.settings.max_bundle_bytes)
    digest = await run_in_threadpool(_sha256_hex, body)
    check_body(signed_request(request), digest)
    address = authenticate(request)
    blobs = await run_in_threadpool(operations.store_bundle, runtime, body, address,
                                    time.time())
    response.status_code = 201 if any(blob["created"] for blob in blobs) else 200
    return {"blobs": blobs}


async def _read_capped(request: Request, limit: int) -> bytes:
    """The raw body, read as it arrives; BundleTooLarge (413) as soon as it passes ``limit``
    bytes (or up front when Content-Length says it will), so nothing unbounded is buffered."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BundleTooLarge(f"bundle of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BundleTooLarge(f"bundle exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
