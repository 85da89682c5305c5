"""Groups of shards: their state (public), and the merged output once every shard is final
(for the group's client, signed: assembled once, then served from the blob store)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from meshcompute.market import operations
from meshcompute.market.api.deps import Runtime, Sha256Path, Signer
from meshcompute.market.api.schemas import GroupOut

router = APIRouter(tags=["public"])


@router.get("/groups/{group}", response_model=GroupOut)
def group(group: Sha256Path, runtime: Runtime) -> dict[str, Any]:
    return operations.group_view(runtime, group)


@router.get("/groups/{group}/output", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def group_output(group: Sha256Path, address: Signer, runtime: Runtime) -> FileResponse:
    sha = await run_in_threadpool(operations.group_output, runtime, group, address)
    return FileResponse(runtime.blobs.path(sha), media_type="application/octet-stream",
                        headers={"X-Mesh-Blob": sha})
