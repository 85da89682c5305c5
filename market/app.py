"""The market's HTTP API (FastAPI). Routes are thin: parse, authenticate, call
:mod:`meshcompute.market.service`, answer. The contract is docs/market-api.md; ``/openapi.json`` is the
generated reference.

``create_app(settings)`` builds the app; the runtime (Redis, chain, blob store) is created on
first use, so the API starts even while the chain or Redis is still coming up and answers 503
until they are reachable.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from meshcompute.market import service
from meshcompute.market.blobs import BlobTooLarge, HashMismatch, StoreFull
from meshcompute.market.runtime import MarketRuntime
from meshcompute.market.schemas import (
    SHA256_PATTERN,
    BlobOut,
    BundleOut,
    ErrorOut,
    FailIn,
    FetchIn,
    GroupOut,
    HealthOut,
    HeartbeatIn,
    HeartbeatOut,
    InfoOut,
    JobOut,
    LeaseIn,
    LeaseOut,
    LeasesOut,
    OkOut,
    RegisterIn,
    ResultIn,
    ResultOut,
    ResultsIn,
    ResultsOut,
    SpecIn,
    SpecOut,
    SpecsIn,
    SpecsOut,
    WorkerOut,
)
from prometheus_client import CONTENT_TYPE_LATEST

from meshcompute.core.spec import JobSpec
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
from meshcompute.settings import Settings
from meshcompute.wire.auth import verify_signed_request
from meshcompute.wire.bundle import BundleHashMismatch, BundleTooLarge, bundle_size

log = logging.getLogger("market.api")
_RECURSION_LIMIT = 4000

Sha256Path = Annotated[str, Path(pattern=SHA256_PATTERN, description="lowercase sha256 hex")]
JobIdPath = Annotated[int, Path(ge=0, le=2**63 - 1)]
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

_ERRORS: dict[int, dict[str, Any]] = {
    code: {"model": ErrorOut}
    for code in (400, 401, 403, 404, 409, 413, 422, 503, 507)
}


def _runtime(request: Request) -> MarketRuntime:
    return request.app.state.runtime.get()


Runtime = Annotated[MarketRuntime, Depends(_runtime)]


async def _signer(request: Request, runtime: Runtime) -> str:
    """The address that signed this request (body read raw, before JSON parsing)."""
    body = await request.body()
    return await _authenticate(request, runtime, body=body)


Signer = Annotated[str, Depends(_signer)]


class _LazyRuntime:
    """Builds the runtime on first use (and again after a failed attempt)."""

    def __init__(self, factory: Callable[[], MarketRuntime]) -> None:
        self._factory = factory
        self._runtime: MarketRuntime | None = None
        self._lock = threading.Lock()

    def get(self) -> MarketRuntime:
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    try:
                        self._runtime = self._factory()
                    except (ChainError, ConfigError, DeploymentNotFound, redis.RedisError) as exc:
                        raise ServiceUnavailable(f"market not ready: {exc}") from exc
        return self._runtime


def create_app(settings: Settings, *, runtime: MarketRuntime | None = None) -> FastAPI:
    """The market API for ``settings`` (``runtime`` injects a prebuilt one, for tests)."""
    # py_ecc (imported with eth_account) raises the interpreter's recursion limit to 100000:
    # json.loads of a body nested that deep then overflows the C stack and kills the whole
    # process, before any signature is checked. The market needs no deep recursion; with
    # this limit such a body is refused with 400 like any unparsable one.
    sys.setrecursionlimit(min(sys.getrecursionlimit(), _RECURSION_LIMIT))
    lazy = _LazyRuntime(lambda: runtime or MarketRuntime.from_settings(settings))
    app = FastAPI(
        title="meshcompute market",
        version="1",
        description="Operator service of the meshcompute marketplace; see docs/market-api.md.",
        responses=_ERRORS,
    )
    app.state.runtime = lazy
    _install_error_handlers(app)

    # ------------------------------------------------------------------ public
    @app.get("/health", response_model=HealthOut, tags=["public"])
    def health(runtime: Runtime) -> dict[str, Any]:
        return service.health(runtime)

    @app.get("/metrics", tags=["public"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics(runtime: Runtime) -> Response:
        from meshcompute.market.metrics import render_metrics

        return Response(render_metrics(runtime), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", response_model=InfoOut, tags=["public"])
    def info(runtime: Runtime) -> dict[str, Any]:
        return service.info(runtime)

    @app.get("/blobs/{sha256}", tags=["blobs"], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_blob(sha256: Sha256Path, runtime: Runtime) -> FileResponse:
        path = runtime.blobs.path(sha256)
        if not path.is_file():
            raise NotFound(f"blob {sha256} is not in the store")
        return FileResponse(path, media_type="application/octet-stream")

    @app.post("/blobs/fetch", tags=["blobs"], response_class=Response,
              responses=_BINARY_ANSWER)
    def fetch_blobs(body: FetchIn, runtime: Runtime) -> Response:
        """The blobs named, in that order, as one bundle (docs/market-api.md)."""
        entries = service.bundle_entries(runtime, body.sha256)
        return StreamingResponse(
            service.bundle_chunks(runtime, entries),
            media_type="application/octet-stream",
            headers={"Content-Length": str(bundle_size(entries))},
        )

    @app.get("/jobs/{job_id}", response_model=JobOut, tags=["public"])
    def job(job_id: JobIdPath, runtime: Runtime) -> dict[str, Any]:
        return service.job_view(runtime, job_id)

    @app.get("/groups/{group}", response_model=GroupOut, tags=["public"])
    def group(group: Sha256Path, runtime: Runtime) -> dict[str, Any]:
        return service.group_view(runtime, group)

    @app.get("/groups/{group}/output", tags=["public"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def group_output(group: Sha256Path, runtime: Runtime) -> Response:
        return Response(service.group_output(runtime, group),
                        media_type="application/octet-stream")

    # ------------------------------------------------------------------ signed
    @app.put("/blobs/{sha256}", response_model=BlobOut, status_code=201, tags=["blobs"],
             openapi_extra=_BINARY_BODY)
    async def put_blob(
        sha256: Sha256Path, request: Request, response: Response, runtime: Runtime
    ) -> dict[str, Any]:
        # signed over the blob's name as the body hash; the store checks the bytes
        await _authenticate(request, runtime, body=b"", body_sha256=sha256)
        if runtime.blobs.exists(sha256):
            response.status_code = 200
            return {"sha256": sha256, "size": runtime.blobs.size(sha256), "created": False}
        declared = request.headers.get("content-length")
        created = await runtime.blobs.put_stream(
            sha256,
            request.stream(),
            declared_size=int(declared) if declared and declared.isdigit() else None,
        )
        response.status_code = 201 if created else 200
        return {"sha256": sha256, "size": runtime.blobs.size(sha256), "created": created}

    @app.post("/blobs/bundle", response_model=BundleOut, status_code=201, tags=["blobs"],
              openapi_extra=_BINARY_BODY)
    async def put_bundle(request: Request, response: Response, runtime: Runtime) -> dict[str, Any]:
        """Many blobs in one bundle body (docs/market-api.md), each hash-checked."""
        body = await _read_capped(request, runtime.settings.max_bundle_bytes)
        digest = await run_in_threadpool(_sha256_hex, body)
        await _authenticate(request, runtime, body=b"", body_sha256=digest)
        blobs = await run_in_threadpool(service.store_bundle, runtime, body)
        response.status_code = 201 if any(blob["created"] for blob in blobs) else 200
        return {"blobs": blobs}

    @app.post("/specs", response_model=SpecOut, status_code=201, tags=["clients"])
    def put_spec(body: SpecIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        spec = JobSpec.from_json(body.model_dump())
        return {"spec_sha256": service.store_spec(runtime, spec)}

    @app.post("/specs/batch", response_model=SpecsOut, status_code=201, tags=["clients"])
    def put_specs(body: SpecsIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        specs = []
        for index, item in enumerate(body.specs):
            try:
                specs.append(JobSpec.from_json(item.model_dump()))
            except BadInput as exc:
                raise BadInput(f"spec {index}: {exc}") from None
        return {"spec_sha256": service.store_specs(runtime, specs)}

    @app.post("/workers", response_model=WorkerOut, tags=["workers"])
    def register(body: RegisterIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        worker = service.register_worker(
            runtime,
            address,
            hardware=body.hardware.model_dump(),
            price_wei=int(body.price_wei),
            slots=body.slots,
            operator=printable(body.operator) if body.operator is not None else None,
            now=time.time(),
        )
        return {
            "address": worker.address,
            "operator": worker.operator,
            "price_wei": str(worker.price_wei),
            "slots": worker.slots,
            "hardware": worker.hardware,
        }

    @app.post("/workers/heartbeat", response_model=HeartbeatOut, tags=["workers"])
    def heartbeat(body: HeartbeatIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        return {"lease_s": service.heartbeat(runtime, address, body.running, time.time())}

    @app.post("/leases", response_model=LeasesOut, tags=["workers"])
    def lease(body: LeaseIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        leases = service.take_leases(runtime, address, body.max_jobs, time.time())
        return {"leases": [item.to_json() for item in leases]}

    @app.post("/leases/{job_id}/renew", response_model=LeaseOut, tags=["workers"])
    def renew(job_id: JobIdPath, address: Signer, runtime: Runtime) -> dict[str, Any]:
        return service.renew_lease(runtime, address, job_id, time.time()).to_json()

    @app.post("/leases/{job_id}/release", response_model=OkOut, tags=["workers"])
    def release(job_id: JobIdPath, address: Signer, runtime: Runtime) -> dict[str, Any]:
        service.release_lease(runtime, address, job_id, time.time())
        return {"ok": True}

    @app.post("/leases/{job_id}/fail", response_model=OkOut, tags=["workers"])
    def fail(job_id: JobIdPath, body: FailIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        service.fail_lease(runtime, address, job_id, printable(body.reason), time.time())
        return {"ok": True}

    # before /results/{job_id}, which would take "batch" for a job id
    @app.post("/results/batch", response_model=ResultsOut, tags=["workers"])
    def results(body: ResultsIn, address: Signer, runtime: Runtime) -> dict[str, Any]:
        items = [(item.job_id, item.output_sha256) for item in body.results]
        return {"results": service.submit_results(runtime, address, items, time.time())}

    @app.post("/results/{job_id}", response_model=ResultOut, tags=["workers"])
    def result(
        job_id: JobIdPath, body: ResultIn, address: Signer, runtime: Runtime
    ) -> dict[str, Any]:
        return service.submit_result(runtime, address, job_id, body.output_sha256, time.time())

    return app


async def _authenticate(
    request: Request, runtime: MarketRuntime, *, body: bytes, body_sha256: str | None = None
) -> str:
    now = time.time()
    signed = verify_signed_request(
        request.headers,
        request.method,
        request.url.path,
        body,
        runtime.chain_id,
        now=now,
        body_sha256=body_sha256,
    )
    # the nonce and expiry that were signed, never the headers read again
    await run_in_threadpool(
        runtime.state.claim_nonce, signed.address, signed.nonce, expires=signed.expires, now=now
    )
    return signed.address


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


def _status_of(exc: Exception) -> int:
    for cls, status in (
        (HashMismatch, 400),
        (BundleHashMismatch, 400),
        (BlobTooLarge, 413),
        (BundleTooLarge, 413),
        (StoreFull, 507),
        (service.Forbidden, 403),
        (AuthError, 401),
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeshError)
    async def mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        status = _status_of(exc)
        if status >= 500:
            log.error("request failed", exc_info=exc,
                      extra={"fields": {"path": request.url.path}})
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("redis unavailable", extra={"fields": {"error": str(exc)}})
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(exc)}, status_code=422)


def printable(text: str) -> str:
    """``text`` with control and format characters (ANSI escapes, bidi overrides) written as
    escapes: a worker's failure reason and operator label are shown to other people's
    terminals, which must not take orders from them. Newlines and tabs stay."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


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
