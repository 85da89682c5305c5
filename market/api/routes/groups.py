"""Groups of shards: their state, and the merged output once every shard is final."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from meshcompute.market import operations
from meshcompute.market.api.deps import Runtime, Sha256Path
from meshcompute.market.api.schemas import GroupOut

router = APIRouter(tags=["public"])


@router.get("/groups/{group}", response_model=GroupOut)
def group(group: Sha256Path, runtime: Runtime) -> dict[str, Any]:
    return operations.group_view(runtime, group)


@router.get("/groups/{group}/output", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def group_output(group: Sha256Path, runtime: Runtime) -> Response:
    return Response(operations.group_output(runtime, group),
                    media_type="application/octet-stream")
