"""Request and response bodies of the market API (docs/market-api.md).

Requests refuse unknown fields (422 naming them). Amounts are decimal strings (they can exceed
2**53); job records use the wire form of :func:`meshcompute.wire.market_client.record_to_json`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from meshcompute.core.spec import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIME_LIMIT_S,
    DEFAULT_TOLERANCE,
    SPEC_VERSION,
)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="lowercase sha256 hex")]
MAX_AMOUNT = 2**96 - 1
MAX_BATCH_ITEMS = 65_536
"""Schema bound on the lists of the bulk endpoints: the upper bound of the
``max_bundle_blobs`` setting, which the service enforces (422 past it)."""
JobId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------- requests
class SpecIn(Strict):
    """A JobSpec (meshcompute.core.spec) as JSON."""

    version: int = SPEC_VERSION
    program: Sha256
    inputs: Sha256
    device: Literal["cpu", "cuda"] = "cpu"
    tolerance: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    group: Sha256 | None = None
    shard: int = 0
    shards: int = 1
    training: dict[str, Any] | None = Field(
        default=None, description="a training job's plan (version 2 specs); None: inference")
    state: Sha256 | None = None


class GpuIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    memory_mb: int = Field(ge=0, le=2**31)


class HardwareIn(Strict):
    device: Literal["cpu", "cuda"]
    cores: int = Field(ge=1, le=4096)
    memory_mb: int = Field(ge=0, le=2**31)
    gpus: list[GpuIn] = Field(default_factory=list, max_length=64)
    torch: str = Field(default="", max_length=100)


def _amount(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an amount is a decimal string or an integer, not a boolean")  # noqa: TRY004
    if isinstance(value, str):
        if not (0 < len(value) <= 40 and all("0" <= c <= "9" for c in value)):
            raise ValueError(f"an amount must be a non-negative decimal string, got {value!r}")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"an amount must be an integer in [0, 2**96), got {value!r}")
    return value


class RegisterIn(Strict):
    hardware: HardwareIn
    price_wei: str | int = Field(description="asking price per job, wei of MESH, decimal string")
    slots: int = Field(ge=1, le=256)
    operator: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("price_wei")
    @classmethod
    def _price(cls, value: Any) -> str:
        return str(_amount(value))


class HeartbeatIn(Strict):
    running: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=1024)


class LeaseIn(Strict):
    max_jobs: int = Field(default=1, ge=1, le=64)
    reserved_only: bool = False
    """Only jobs reserved on chain for this worker (a worker yielding to its owner collects
    payment for work it already did, and takes nothing new)."""


class PartialIn(Strict):
    """The finished checkpoints of a training job handed back unfinished: its first
    ``end_step - start`` steps as a job of their own would give them (the manifest of the plan's
    part up to ``end_step``, uploaded with everything it names), and the state at ``end_step``."""

    end_step: int = Field(ge=1, le=2**31)
    manifest_sha256: Sha256
    state_sha256: Sha256


class FailIn(Strict):
    reason: str = Field(min_length=1, max_length=2000)
    partial: PartialIn | None = None


class ResultIn(Strict):
    output_sha256: Sha256


class EmptyIn(Strict):
    pass


class SpecsIn(Strict):
    """``POST /specs/batch``: job specs stored all or none."""

    specs: list[SpecIn] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class BatchResultIn(Strict):
    job_id: JobId
    output_sha256: Sha256


class ResultsIn(Strict):
    """``POST /results/batch``: results of held jobs, saved all or none."""

    results: list[BatchResultIn] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class FetchIn(Strict):
    """``POST /blobs/fetch``: blobs to answer as one bundle, in this order."""

    sha256: list[Sha256] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


# ---------------------------------------------------------------------- responses
class HealthOut(BaseModel):
    status: str
    chain_id: int
    head_block: int
    indexed_block: int
    redis: str


class InfoOut(BaseModel):
    chain_id: int
    addresses: dict[str, str]
    assigner: str
    max_blob_bytes: int
    lease_s: int
    max_bundle_bytes: int
    max_bundle_blobs: int
    min_job_reward_wei: str
    """A posted job paying less per shard is never offered (decimal string)."""


class BlobOut(BaseModel):
    sha256: str
    size: int
    created: bool


class BundleOut(BaseModel):
    blobs: list[BlobOut]


class SpecOut(BaseModel):
    spec_sha256: str


class SpecsOut(BaseModel):
    spec_sha256: list[str]


class WorkerOut(BaseModel):
    address: str
    operator: str
    price_wei: str
    slots: int
    hardware: dict[str, Any]


class HeartbeatOut(BaseModel):
    lease_s: int


class CapacityRowOut(BaseModel):
    device: str
    memory_mb: int
    gpu_memory_mb: int
    price_wei: str
    workers: int


class CapacityOut(BaseModel):
    live_workers: int
    rows: list[CapacityRowOut]
    truncated: bool


class TicketOut(BaseModel):
    worker: str
    job_ids: list[int]
    audit_bps: int
    lease_expiry: int


class LeaseOut(BaseModel):
    job_id: int
    spec_sha256: str
    spec: dict[str, Any]
    record: dict[str, Any]
    ticket: TicketOut
    signature: str
    lease_expiry: int


class LeasesOut(BaseModel):
    leases: list[LeaseOut]


class OkOut(BaseModel):
    ok: bool = True


class ResultOut(BaseModel):
    job_id: int
    output_sha256: str
    lease_expiry: int


class ResultsOut(BaseModel):
    results: list[ResultOut]


class FailureOut(BaseModel):
    worker: str
    reason: str


class JobOut(BaseModel):
    job_id: int
    state: str
    spec_sha256: str
    spec: dict[str, Any] | None
    client: str
    worker: str | None
    lease_holder: str | None = None
    """The worker currently holding the market's lease (before anything is on chain)."""
    lease_expiry: int | None = None
    output_sha256: str | None
    failure: str | None
    failures: list[FailureOut] = []
    """Every worker that failed to run the job, with its (latest) reason."""
    partials: list[dict[str, Any]] = []
    """Training work handed back unfinished: ``worker``, ``end_step``, ``manifest_sha256``,
    ``state_sha256`` (see ``PartialIn``); the client may pay for it (``postJobsFor``)."""
    given_up: bool = False
    """The market offers the job no more: as many workers as it allows failed to run it."""
    audited: bool
    group: str | None


class GroupOut(BaseModel):
    group: str
    job_ids: list[int]
    states: list[str]
    complete: bool


class ErrorOut(BaseModel):
    detail: str
