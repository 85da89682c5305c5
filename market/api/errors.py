"""How the API answers errors: the project's error tree mapped to HTTP statuses, Redis down as
503, and request validation as one sentence naming each problem (422)."""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from meshcompute.errors import (
    AuthError,
    BadInput,
    ChainError,
    ConfigError,
    Conflict,
    DeploymentNotFound,
    MeshError,
    NotFound,
    ServiceUnavailable,
)
from meshcompute.market.api.gate import BodyTimeout, BodyTooLarge
from meshcompute.market.api.schemas import ErrorOut
from meshcompute.market.blobs import BlobTooLarge, HashMismatch, StoreFull
from meshcompute.market.operations import Forbidden, JobPruned
from meshcompute.market.quotas import QuotaExceeded
from meshcompute.market.ratelimit import RateLimited
from meshcompute.wire.bundle import BundleHashMismatch, BundleTooLarge

log = logging.getLogger("market.api")

#: The error answers every route may give (documented in the OpenAPI schema).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut}
    for code in (400, 401, 403, 404, 408, 409, 410, 413, 422, 429, 503, 507)
}


def status_of(exc: Exception) -> int:
    for cls, status in (
        (HashMismatch, 400),
        (BundleHashMismatch, 400),
        (BlobTooLarge, 413),
        (BundleTooLarge, 413),
        (BodyTooLarge, 413),
        (BodyTimeout, 408),
        (StoreFull, 507),
        (QuotaExceeded, 429),
        (RateLimited, 429),
        (Forbidden, 403),
        (AuthError, 401),
        (JobPruned, 410),
        (NotFound, 404),
        (Conflict, 409),
        (BadInput, 422),
        (ServiceUnavailable, 503),
        (ChainError, 503),
        (DeploymentNotFound, 503),
        (ConfigError, 503),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def headers_of(exc: Exception) -> dict[str, str]:
    """Headers an error answer carries: Retry-After (whole seconds) for a rate limit."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return {}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeshError)
    async def mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.error("request failed", exc_info=exc,
                      extra={"fields": {"path": request.url.path}})
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers_of(exc))

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("redis unavailable", extra={"fields": {"error": str(exc)}})
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(exc)}, status_code=422)


def describe_validation(exc: RequestValidationError) -> str:
    """One sentence naming each problem: ``body.max_jobs: Input should be ...``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        if error.get("type") == "json_invalid":
            problems.append(f"malformed JSON body ({error.get('ctx', {}).get('error', '')})")
        elif error.get("type") == "extra_forbidden":
            problems.append(f"{where}: unknown field")
        else:
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"
