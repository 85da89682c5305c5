"""Jobs as the market sees them: the chain's record with the market's lease, result and
failure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from meshcompute.market import operations
from meshcompute.market.api.deps import JobIdPath, Runtime
from meshcompute.market.api.schemas import JobOut

router = APIRouter(tags=["public"])


@router.get("/jobs/{job_id}", response_model=JobOut)
def job(job_id: JobIdPath, runtime: Runtime) -> dict[str, Any]:
    return operations.job_view(runtime, job_id)
