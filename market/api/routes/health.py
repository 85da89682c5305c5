"""The market itself: health, Prometheus metrics, and what clients need to know (chain,
contract addresses, limits)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from meshcompute.market import operations
from meshcompute.market.api.deps import Runtime
from meshcompute.market.api.schemas import HealthOut, InfoOut
from meshcompute.market.metrics import render_metrics

router = APIRouter(tags=["public"])


@router.get("/health", response_model=HealthOut)
def health(runtime: Runtime) -> dict[str, Any]:
    return operations.health(runtime)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(runtime: Runtime) -> Response:
    return Response(render_metrics(runtime), media_type=CONTENT_TYPE_LATEST)


@router.get("/info", response_model=InfoOut)
def info(runtime: Runtime) -> dict[str, Any]:
    return operations.info(runtime)
