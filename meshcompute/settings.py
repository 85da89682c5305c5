"""Typed settings, read from ``MESH_*`` environment variables.

One :class:`Settings` for the whole project; components read the fields they need through
:func:`get_settings`. Add a field with a docstring (it becomes the field's description).
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshcompute.errors import ConfigError

DEV_MNEMONIC = "test test test test test test test test test test test junk"
"""The well-known development mnemonic (anvil/hardhat). Never holds real value."""

ENV_PREFIX = "MESH_"
REPO_ROOT = Path(__file__).resolve().parent.parent
_REPO_ANVIL = REPO_ROOT / "node_modules" / ".bin" / "anvil"


def _default_anvil_path() -> str:
    if _REPO_ANVIL.exists():
        return str(_REPO_ANVIL)
    return shutil.which("anvil") or "anvil"


class Settings(BaseSettings):
    """meshcompute configuration; each field reads ``MESH_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        use_attribute_docstrings=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    rpc_url: str | None = None
    """JSON-RPC endpoint of the chain; unset means a local anvil started on demand."""

    chain_id: int | None = None
    """Expected chain id; when set, a node reporting another id is refused."""

    data_dir: Path = Path("~/.mesh")
    """Where meshcompute keeps its local state (blobs, logs, deployments)."""

    deployments_dir: Path = Field(default_factory=lambda data: data["data_dir"] / "deployments")
    """Deployment records (contract addresses per chain); defaults to ``<data_dir>/deployments``."""

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MESH_REDIS_URL", "REDIS_URL")
    )
    """Redis/Valkey URL (``MESH_REDIS_URL`` or ``REDIS_URL``); unset means an embedded Valkey."""

    market_url: str = "http://127.0.0.1:8000"
    """Base URL of the market's HTTP API."""

    tx_receipt_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for a transaction receipt before giving up."""

    anvil_path: str = Field(default_factory=_default_anvil_path)
    """The anvil executable: the repo's ``node_modules/.bin/anvil`` if present, else PATH."""

    # --- market service (market/, `mesh market serve|tasks`)
    market_host: str = "127.0.0.1"
    """Interface the market's HTTP API listens on (``0.0.0.0`` inside a container)."""

    market_port: int = Field(default=8000, ge=1, le=65535)
    """TCP port of the market's HTTP API."""

    blob_root: Path = Field(default_factory=lambda data: data["data_dir"] / "blobs")
    """Root folder of the market's content-addressed blob store; defaults to ``<data_dir>/blobs``."""

    max_blob_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Largest blob the market accepts, in bytes (bigger uploads get HTTP 413)."""

    max_bundle_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest blob bundle in bytes, header included: a ``POST /blobs/bundle`` body or a
    ``POST /blobs/fetch`` answer (bigger gets HTTP 413)."""

    max_json_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest JSON request body the market reads (every route but the blob uploads); a
    bigger one gets HTTP 413 before it is read, or as soon as it passes the limit."""

    quota_window_s: int = Field(default=7 * 86_400, ge=60)
    """Upload quotas count the bytes of new blobs an address stored over this sliding window
    (the blob retention period)."""

    quota_base_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bytes any address may upload in the quota window, with no stake or escrow (enough for
    a first job's program and inputs)."""

    quota_bytes_per_credit: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bytes each whole credit of the address's stake or open escrow adds to its quota."""

    quota_strangers_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    """Bytes all addresses without stake or open escrow may upload together in the quota
    window: fresh keys fill this pool, never the disk."""

    rate_base_per_s: int = Field(default=10, ge=1)
    """Signed requests a second any address may make (an address with no stake or open
    escrow gets this rate)."""

    rate_per_credit_per_s: float = Field(default=1.0, ge=0)
    """What each whole credit of an address's stake or open escrow adds to its rate."""

    rate_max_per_s: int = Field(default=500, ge=1)
    """The most signed requests a second any one address may make."""

    rate_strangers_per_s: int = Field(default=200, ge=1)
    """Signed requests a second all addresses without stake or open escrow may make
    together: fresh keys share this rate, never what staked workers and clients need."""

    rate_lookups_per_s: int = Field(default=50, ge=1)
    """Signed requests a second, in all, from addresses whose standing is not cached (each
    costs the market a chain read; fresh keys are free to make). An address's standing stays
    cached ``stake_cache_s`` after its first request, so this bounds new addresses a second,
    not requests; those reads were most of what a flood of fresh keys cost the market
    (``mesh bench abuse``)."""

    rate_lookups_per_ip_per_s: int = Field(default=5, ge=1)
    """The same, per client IP (an IPv6 client's /64)."""

    rate_public_per_s: int = Field(default=500, ge=1)
    """Unsigned requests (reads: jobs, blobs, groups, health) a second per client IP."""

    market_public_hosts: str = ""
    """Comma-separated ``host[:port]`` names clients use to reach this market (as in their
    ``MESH_MARKET_URL``). A signed request names the market it is for and is refused unless it
    names one of these; empty accepts the request's own Host header, which stops a request
    replayed as it was sent but not one whose Host header was rewritten: set it for a public
    market."""

    market_stranger_concurrency: int = Field(default=2, ge=1)
    """Signed requests from addresses without stake or open escrow the market serves at
    once (the rest wait their turn), whatever their number."""

    market_stranger_wait_s: float = Field(default=5.0, gt=0)
    """How long a stranger's signed request waits for one of those places before it gets 429
    (a few slow strangers cannot queue the rest up without end)."""

    market_lookup_concurrency: int = Field(default=2, ge=1)
    """Chain reads of a signer's standing the market makes at once for addresses that had no
    stake or escrow lately (fresh keys cost nothing to make; their lookups queue among
    themselves, at most ``market_stranger_wait_s``, and never in front of known users')."""

    market_credited_memory_s: float = Field(default=3600.0, gt=0)
    """How long the market remembers that an address had stake or open escrow: its standing
    is still re-read every ``stake_cache_s``, but outside the queue of unknown addresses."""

    market_body_timeout_s: float = Field(default=30.0, gt=0)
    """A JSON body must arrive within this many seconds (408 otherwise)."""

    market_api_workers: int = Field(default=1, ge=1, le=64)
    """Processes of the market's HTTP API (uvicorn workers, sharing the port): each has its own
    event loop, so a flood of requests that one loop must refuse delays the others' callers
    less. Rates, quotas and nonces are shared in Redis; the per-process limits
    (``market_max_connections``, the strangers' and lookups' places) apply to each."""

    market_max_connections: int = Field(default=1024, ge=1)
    """Most connections and tasks the market's HTTP server holds at once; beyond it new ones
    get HTTP 503 (uvicorn's ``limit_concurrency``)."""

    market_max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    """Largest request head (request line and headers) the market's HTTP server buffers
    (uvicorn's ``h11_max_incomplete_event_size``)."""

    market_header_timeout_s: float = Field(default=10.0, gt=0)
    """A request head (request line and headers) must arrive whole within this many seconds of
    its first byte (or of the connection opening), or the market closes the connection: a
    client trickling headers cannot hold connections forever (market/api/connections.py)."""

    dashboard_stale_blocks: int = Field(default=10, ge=0)
    """The dashboard shows a "stale" sign when the market's index is more than this many blocks
    behind the chain's head (docs/dashboard-api.md)."""

    dashboard_tick_s: float = Field(default=1.0, gt=0)
    """How often the dashboard's event stream tells open pages whether the index moved."""

    dashboard_concurrency: int = Field(default=4, ge=1)
    """Dashboard pages (a job, a group, a provider, a verifier: each costs chain reads) computed
    at once per API process; more wait (``dashboard_queue_s``), so pages never take the CPU
    the market's own routes need."""

    dashboard_queue_s: float = Field(default=10.0, gt=0)
    """How long a dashboard page waits for its turn before it is answered 503 (busy)."""

    dashboard_stream_s: float = Field(default=300.0, gt=0)
    """How long one event-stream connection lasts; the browser reconnects by itself, so no
    connection is held forever."""

    market_max_connections_per_client: int = Field(default=256, ge=0)
    """Most open connections one client (an IPv4 address, an IPv6 /64) may hold on each API
    process; more are closed as they open. 0: no cap (behind a reverse proxy, which is then
    every client, cap there instead)."""

    max_bundle_blobs: int = Field(default=1024, ge=1, le=65_536)
    """Most blobs one bundle carries, and most entries of one ``POST /blobs/fetch``,
    ``POST /specs/batch`` or ``POST /results/batch`` request."""

    max_download_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Largest answer a worker, verifier or client reads from the market for one blob or one
    bundle; a (faulty or hostile) market sending more is cut off with a clear error instead
    of filling the node's memory."""

    lease_s: int = Field(default=300, ge=10, le=86_400)
    """Length of a job lease (and of the ticket's on-chain lease) in seconds."""

    heartbeat_timeout_s: float | None = Field(default=None, gt=0)
    """A worker silent this long gets no new work; unset means three lease periods."""

    offer_ttl_s: float = Field(default=60.0, gt=0)
    """How long a matched job waits for its worker to poll before it is matched again."""

    stake_cache_s: float = Field(default=5.0, ge=0)
    """How long the market reuses a worker's stake and record read from chain."""

    assigner_key: SecretStr | None = None
    """Private key that signs assignment tickets (``MESH_ASSIGNER_KEY``; needs ASSIGNER_ROLE).
    Unset on the dev chain (id 31337) means the dev mnemonic's account 1; elsewhere required."""

    canary_worker_key: SecretStr | None = None
    """Private key of the canary worker ``mesh canary start`` commits junk with
    (``MESH_CANARY_WORKER_KEY``; a staked address of the operator's, never a worker node's)."""

    settler_key: SecretStr | None = None
    """Private key that sends the batched finalize transactions (``MESH_SETTLER_KEY``; needs
    gas only). Unset means the assigner key."""

    market_json_logs: bool = True
    """Log one JSON object per line from the market's processes."""

    audit_deterrence: bool = True
    """Sign tickets at the deterrence rate of :mod:`meshcompute.core.audit_rate` (100 % for a
    new worker at the SDK's default collateral). False signs each job's own rate (never below
    the deployment's floor): only for a network without verifiers, where silence never pays
    and a job drawn for audit could only ever be void (``MESH_AUDIT_DETERRENCE``)."""

    # -- market throughput: lease batches and the background schedule
    max_lease_batch: int = Field(default=32, ge=1, le=256)
    """Most jobs (same client, same program) one lease batch carries: one multi-job ticket,
    one sandbox process on the worker, one assignAndCommit. 1 turns batching off."""

    match_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between matching rounds (Celery beat ``market.match``)."""

    index_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """Seconds between chain indexing rounds (``market.index``)."""

    expire_interval_s: float = Field(default=2.0, gt=0, le=3600)
    """Seconds between lease-expiry rounds (``market.expire``)."""

    settle_interval_s: float = Field(default=3.0, gt=0, le=3600)
    """Seconds between settlement rounds (``market.settle``)."""

    min_job_reward_wei: int = Field(default=10**15, ge=0)
    """A posted job paying less (default 0.001 MESH) is never offered and never scanned by
    matching: a flood of 1-wei jobs with far deadlines costs the market nothing per round.
    Applies as jobs are indexed; the SDK refuses to post below it (``/info``)."""

    gc_interval_s: float = Field(default=600.0, gt=0, le=86_400)
    """Seconds between blob garbage collections (``market.gc``)."""

    blob_retention_s: int = Field(default=7 * 86_400, ge=60)
    """A blob stays in the store at least this long after the last job that needs it (its
    program, inputs, spec, output, a verifier's evidence) ended."""

    blob_grace_s: int = Field(default=86_400, ge=60)
    """An upload that no job names yet is kept this long (time to post its job)."""

    job_retention_s: int = Field(default_factory=lambda data: data["blob_retention_s"], ge=60)
    """A job that ended (finalized, slashed, refunded) more than this long ago is pruned by
    ``market.gc``: its indexed events and record and the market's own keys of it (failures,
    result, group membership) are deleted, and ``GET /jobs/{id}`` answers 410. A worker
    registration not seen for this long is dropped too (the worker registers again). Defaults
    to ``blob_retention_s``. The chain keeps every event for good; open jobs are never pruned."""

    settle_max_batch: int = Field(default=100, ge=1, le=1000)
    """Most jobs one ``finalizeBatch`` transaction settles."""

    settle_max_batches: int = Field(default=10, ge=1)
    """Most ``finalizeBatch`` transactions one settlement round sends (each waits for its
    receipt); a larger backlog is left to the next rounds, so indexing and matching, which
    share the task threads, are not held up behind it."""

    task_threads: int = Field(default=1, ge=1, le=64)
    """Threads of ``mesh market tasks``. 1 (the default) runs the rounds one after another
    (Celery's solo pool); more run them side by side (the threads pool: a settlement waiting
    for its receipt does not hold up matching), never two runs of the same round at once.
    A busy market sets 4 (``mesh bench e2e`` does)."""

    # --- wallet (meshcompute.wallet)
    wallet_path: Path = Field(default_factory=lambda data: data["data_dir"] / "wallet.json")
    """The encrypted V3 keystore of this node's account; defaults to ``<data_dir>/wallet.json``."""

    wallet_password: SecretStr | None = None
    """Keystore password for unattended use; prefer ``MESH_WALLET_PASSWORD_FILE``."""

    wallet_password_file: Path | None = None
    """A file holding the keystore password (one line), for unattended use."""

    wallet_scrypt_n: int = Field(default=2**18, ge=2**10)
    """scrypt work factor for new keystores (2**18, about 1 s); lower it only for tests."""

    # --- worker node (worker.node, `mesh worker start`)
    worker_slots: int = Field(default=1, ge=1, le=64)
    """How many jobs the worker runs at the same time."""

    worker_threads: int = Field(default=1, ge=1, le=256)
    """torch threads per job (fixed, so results do not depend on the machine's load)."""

    worker_price: str = "0"
    """Asking price per job in MESH (decimal, e.g. ``"0.5"``), advertised to the market."""

    worker_operator: str | None = None
    """A label for the operator shown by the market; defaults to the wallet address."""

    worker_scratch_dir: Path | None = None
    """Where jobs get their scratch folders; unset means a temporary directory."""

    worker_allow_unsandboxed: bool = False
    """Run jobs without OS-level isolation when none is available (unsafe: trusted jobs only)."""

    worker_json_logs: bool = False
    """Print one JSON object per event instead of the live status table."""

    worker_poll_interval_s: float = Field(default=1.0, gt=0, le=300)
    """Seconds between asks for work while the worker has free slots."""

    worker_grace_s: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM, how long running jobs may take to finish before their leases are released."""

    worker_idle_load_cpus: float = Field(default=0.5, gt=0, le=4096)
    """``--when idle``: load from other processes (CPUs) above which the owner is present."""

    worker_probe_stability: bool = False
    """Before committing a job, probe its program as an audit would (our output, inputs moved
    by one ulp, the verifiers' alternate numeric setup: about two extra runs per new program,
    input layout and tolerance) and hand back, unpaid and without penalty, a job unstable under
    its tolerance (its audit would be void)."""

    # --- verifier (verifier/, `mesh verifier start`, `mesh verify`)
    verifier_threads: int = Field(default=1, ge=1, le=256)
    """torch threads for the verifier's own recomputations."""

    verifier_allow_unsandboxed: bool = False
    """Recompute without OS-level isolation when none is available (unsafe: trusted jobs only)."""

    verifier_json_logs: bool = False
    """Log one JSON object per line from `mesh verifier start`."""

    verifier_poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    """Seconds between the verifier's polls of the chain."""

    verifier_final_margin_s: int = Field(default=60, ge=1)
    """Seconds before an audit window closes from which a missing worker output is a fail."""

    verifier_scratch_dir: Path | None = None
    """Where recomputations get their scratch folders; unset means a temporary directory."""

    verifier_min_stake: str = "100"
    """MESH a verifier must have staked before `mesh verifier start` runs (its skin in the game)."""

    @field_validator("data_dir", "deployments_dir", "wallet_path", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus ``overrides``; errors name the env variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe_problem(error) for error in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (``get_settings.cache_clear()`` re-reads)."""
    return load_settings()


def _describe_problem(error: Any) -> str:
    location = error.get("loc") or ()
    field = str(location[0]) if location else "?"
    if field.isupper():  # an alias such as REDIS_URL is already the env variable name
        key = field
    else:
        key = f"{ENV_PREFIX}{field.upper()}"
    return f"{key}: {error.get('msg', 'invalid')} (got {error.get('input')!r})"
