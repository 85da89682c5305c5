"""Leases, for the worker holding them: take the offers waiting for it, renew, release, or
report a run that failed."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from meshcompute.market import operations
from meshcompute.market.api.deps import JobIdPath, Runtime, Signer
from meshcompute.market.api.schemas import FailIn, LeaseIn, LeaseOut, LeasesOut, OkOut

router = APIRouter(tags=["workers"])


@router.post("/leases", response_model=LeasesOut)
def lease(body: LeaseIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    leases = operations.take_leases(runtime, address, body.max_jobs, time.time(),
                                    reserved_only=body.reserved_only)
    return {"leases": [item.to_json() for item in leases]}


@router.post("/leases/{job_id}/renew", response_model=LeaseOut)
def renew(job_id: JobIdPath, address: Signer, runtime: Runtime) -> dict[str, Any]:
    return operations.renew_lease(runtime, address, job_id, time.time()).to_json()


@router.post("/leases/{job_id}/release", response_model=OkOut)
def release(job_id: JobIdPath, address: Signer, runtime: Runtime) -> dict[str, Any]:
    operations.release_lease(runtime, address, job_id, time.time())
    return {"ok": True}


@router.post("/leases/{job_id}/fail", response_model=OkOut)
def fail(job_id: JobIdPath, body: FailIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    partial = body.partial.model_dump() if body.partial is not None else None
    operations.fail_lease(runtime, address, job_id, body.reason, time.time(), partial=partial)
    return {"ok": True}
