"""The worker registry: registration (staked workers only), heartbeats, and the live fleet's
capacity in aggregate (public, no addresses)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from meshcompute.market import operations
from meshcompute.market.api.deps import Runtime, Signer
from meshcompute.market.api.schemas import (
    CapacityOut,
    HeartbeatIn,
    HeartbeatOut,
    RegisterIn,
    WorkerOut,
)

router = APIRouter(tags=["workers"])


@router.post("/workers", response_model=WorkerOut)
def register(body: RegisterIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    worker = operations.register_worker(
        runtime,
        address,
        hardware=body.hardware.model_dump(),
        price_wei=int(body.price_wei),
        slots=body.slots,
        operator=body.operator,
        now=time.time(),
    )
    return {
        "address": worker.address,
        "operator": worker.operator,
        "price_wei": str(worker.price_wei),
        "slots": worker.slots,
        "hardware": worker.hardware,
    }


@router.post("/workers/heartbeat", response_model=HeartbeatOut)
def heartbeat(body: HeartbeatIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
    return {"lease_s": operations.heartbeat(runtime, address, body.running, time.time())}


@router.get("/workers/capacity", response_model=CapacityOut)
def capacity(runtime: Runtime) -> dict[str, Any]:
    """The live workers in aggregate: distinct hardware and price rows with counts."""
    return operations.worker_capacity(runtime, time.time())
