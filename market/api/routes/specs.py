"""Job specs, stored as blobs once their program and inputs are (signed by the client)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from meshcompute.core.spec import JobSpec
from meshcompute.errors import BadInput
from meshcompute.market import operations
from meshcompute.market.api.deps import Runtime, Signer
from meshcompute.market.api.schemas import SpecIn, SpecOut, SpecsIn, SpecsOut

router = APIRouter(tags=["clients"])


@router.post("/specs", response_model=SpecOut, status_code=201)
def put_spec(body: SpecIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    spec = JobSpec.from_json(body.model_dump())
    return {"spec_sha256": operations.store_spec(runtime, spec, address, time.time())}


@router.post("/specs/batch", response_model=SpecsOut, status_code=201)
def put_specs(body: SpecsIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    specs = []
    for index, item in enumerate(body.specs):
        try:
            specs.append(JobSpec.from_json(item.model_dump()))
        except BadInput as exc:
            raise BadInput(f"spec {index}: {exc}") from None
    return {"spec_sha256": operations.store_specs(runtime, specs, address, time.time())}
