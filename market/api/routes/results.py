"""Results: the output blob of a job the worker holds a lease on, one or many at a time."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from meshcompute.market import operations
from meshcompute.market.api.deps import JobIdPath, Runtime, Signer
from meshcompute.market.api.schemas import ResultIn, ResultOut, ResultsIn, ResultsOut

router = APIRouter(tags=["workers"])


# before /results/{job_id}, which would take "batch" for a job id
@router.post("/results/batch", response_model=ResultsOut)
def results(body: ResultsIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    items = [(item.job_id, item.output_sha256) for item in body.results]
    return {"results": operations.submit_results(runtime, address, items, time.time())}


@router.post("/results/{job_id}", response_model=ResultOut)
def result(job_id: JobIdPath, body: ResultIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    return operations.submit_result(runtime, address, job_id, body.output_sha256, time.time())
