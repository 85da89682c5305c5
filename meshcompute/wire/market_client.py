"""Python client of the market's HTTP API (docs/market-api.md), one typed method per endpoint.

    client = MarketClient("http://127.0.0.1:8000", account, chain_id=31337)
    sha = client.put_blob(data)
    leases = client.lease(max_jobs=2)

The bulk methods (``put_blobs``, ``get_blobs``, ``put_specs``, ``submit_results``) carry many
blobs, specs or results per request (blob bundles: :mod:`meshcompute.wire.bundle`).

Requests that change state are signed with ``account`` (:mod:`meshcompute.wire.auth`). A market
that cannot be reached raises :class:`~meshcompute.errors.ServiceUnavailable` naming the URL;
a refusal raises the fitting :class:`~meshcompute.errors.MeshError` subclass carrying the
server's ``detail``. The wire forms of job records and leases live here too (the server builds
its answers with the same functions), so both sides agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from meshcompute.chain.tickets import AssignTicket
from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec, is_sha256_hex
from meshcompute.errors import (
    AuthError,
    BadInput,
    ConfigError,
    Conflict,
    MeshError,
    NotFound,
    ServiceUnavailable,
)
from meshcompute.wire.auth import sign_request
from meshcompute.wire.bundle import bundle_header, decode_bundle, encode_bundle

DEFAULT_TIMEOUT_S = 30.0
#: Largest blob or bundle read from the market unless the caller sets its own limit.
DEFAULT_MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
_AMOUNT_FIELDS = ("reward", "audit_fee", "collateral")
_BYTES_FIELDS = ("spec_hash", "result_hash")
_UPLOAD_CHUNK = 1 << 20

BUNDLE_BUDGET_BYTES = 32 * 1024 * 1024
"""``put_blobs`` keeps each bundle at most this big (the market refuses bundles over its
``max_bundle_bytes``, 64 MiB by default); a bigger blob goes alone through ``put_blob``."""
BUNDLE_MAX_ITEMS = 1024
"""Most blobs, specs or results one bulk request carries (the market's default
``max_bundle_blobs``)."""


# ---------------------------------------------------------------------- wire forms
def record_to_json(record: JobRecord) -> dict[str, Any]:
    """A JobRecord as JSON: bytes as 0x hex, state as its integer, amounts as decimal strings."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in _BYTES_FIELDS:
            out[f.name] = "0x" + bytes(value).hex()
        elif f.name == "state":
            out[f.name] = int(value)
        elif f.name in _AMOUNT_FIELDS:
            out[f.name] = str(int(value))
        else:
            out[f.name] = value
    return out


def record_from_json(data: Mapping[str, Any]) -> JobRecord:
    """Inverse of :func:`record_to_json`; BadInput names a missing or malformed field."""
    try:
        values: dict[str, Any] = {}
        for f in fields(JobRecord):
            value = data[f.name]
            if f.name in _BYTES_FIELDS:
                values[f.name] = bytes.fromhex(str(value).removeprefix("0x"))
            elif f.name == "state":
                values[f.name] = JobState(int(value))
            elif f.name in ("client", "worker", "auditor"):
                values[f.name] = to_checksum_address(value)
            else:
                values[f.name] = int(value)
        return JobRecord(**values)
    except (KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"malformed job record: {exc!r}") from exc


def ticket_to_json(ticket: AssignTicket) -> dict[str, Any]:
    return {
        "worker": ticket.worker,
        "job_ids": list(ticket.job_ids),
        "audit_bps": ticket.audit_bps,
        "lease_expiry": ticket.lease_expiry,
    }


def ticket_from_json(data: Mapping[str, Any]) -> AssignTicket:
    try:
        return AssignTicket(
            worker=to_checksum_address(data["worker"]),
            job_ids=tuple(int(i) for i in data["job_ids"]),
            audit_bps=int(data["audit_bps"]),
            lease_expiry=int(data["lease_expiry"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"malformed ticket: {exc!r}") from exc


@dataclass(frozen=True)
class Lease:
    """One job leased to a worker, with the market-signed ticket that lets it take the job
    on chain (``JobMarket.assignAndCommit(records, ticket, signature, [output hash])``)."""

    job_id: int
    spec: JobSpec
    spec_sha256: str
    record: JobRecord
    ticket: AssignTicket
    signature: bytes
    lease_expiry: int

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "spec_sha256": self.spec_sha256,
            "spec": self.spec.to_json(),
            "record": record_to_json(self.record),
            "ticket": ticket_to_json(self.ticket),
            "signature": "0x" + self.signature.hex(),
            "lease_expiry": self.lease_expiry,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lease:
        try:
            return cls(
                job_id=int(data["job_id"]),
                spec=JobSpec.from_json(data["spec"]),
                spec_sha256=str(data["spec_sha256"]),
                record=record_from_json(data["record"]),
                ticket=ticket_from_json(data["ticket"]),
                signature=bytes.fromhex(str(data["signature"]).removeprefix("0x")),
                lease_expiry=int(data["lease_expiry"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInput(f"malformed lease: {exc!r}") from exc


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mb: int


@dataclass(frozen=True)
class Hardware:
    """What a worker offers (``POST /workers`` ``hardware``)."""

    device: str
    cores: int
    memory_mb: int
    gpus: tuple[Gpu, ...] = ()
    torch: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "gpus": [{"name": g.name, "memory_mb": g.memory_mb} for g in self.gpus],
            "torch": self.torch,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hardware:
        return cls(
            device=str(data["device"]),
            cores=int(data["cores"]),
            memory_mb=int(data["memory_mb"]),
            gpus=tuple(Gpu(str(g["name"]), int(g["memory_mb"])) for g in data.get("gpus", [])),
            torch=str(data.get("torch", "")),
        )


@dataclass(frozen=True)
class CapacityRow:
    """Live workers sharing one device, host memory, accelerator memory and price."""

    device: str
    memory_mb: int
    gpu_memory_mb: int
    price_wei: int
    workers: int


@dataclass(frozen=True)
class WorkerCapacity:
    """``GET /workers/capacity``: the market's live workers in aggregate (no addresses).
    ``truncated``: the fleet has more distinct rows than the market lists."""

    live_workers: int
    rows: tuple[CapacityRow, ...]
    truncated: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerCapacity:
        return cls(
            live_workers=int(data["live_workers"]),
            rows=tuple(CapacityRow(device=str(r["device"]), memory_mb=int(r["memory_mb"]),
                                   gpu_memory_mb=int(r["gpu_memory_mb"]),
                                   price_wei=int(r["price_wei"]), workers=int(r["workers"]))
                       for r in data["rows"]),
            truncated=bool(data.get("truncated", False)),
        )


@dataclass(frozen=True)
class PartialWork:
    """A training job's finished checkpoints that ``worker`` handed back unfinished (its owner
    came back): steps up to ``end_step`` as a job of their own gives them (``manifest_sha256``,
    everything it names uploaded), and the state there (``state_sha256``), from which another
    worker continues. Its client pays for it with a job reserved for ``worker``."""

    worker: str
    end_step: int
    manifest_sha256: str
    state_sha256: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartialWork:
        return cls(worker=str(data["worker"]), end_step=int(data["end_step"]),
                   manifest_sha256=str(data["manifest_sha256"]),
                   state_sha256=str(data["state_sha256"]))

    def to_json(self) -> dict[str, Any]:
        return {"end_step": self.end_step, "manifest_sha256": self.manifest_sha256,
                "state_sha256": self.state_sha256}


@dataclass(frozen=True)
class JobView:
    """``GET /jobs/{id}``: a job as the market sees it (state from the indexed chain)."""

    job_id: int
    state: JobState
    spec_sha256: str
    spec: JobSpec | None
    client: str
    worker: str | None
    output_sha256: str | None
    failure: str | None
    audited: bool
    group: str | None
    lease_holder: str | None = None
    lease_expiry: int | None = None
    failures: tuple[tuple[str, str], ...] = ()
    """``(worker, reason)`` for every worker that failed to run the job."""
    given_up: bool = False
    """The market offers the job no more (as many workers as it allows failed it)."""
    partials: tuple[PartialWork, ...] = ()
    """Training work handed back unfinished (see :class:`PartialWork`)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobView:
        spec = data.get("spec")
        return cls(
            job_id=int(data["job_id"]),
            state=JobState[str(data["state"]).upper()],
            spec_sha256=str(data["spec_sha256"]),
            spec=JobSpec.from_json(spec) if spec is not None else None,
            client=str(data["client"]),
            worker=data.get("worker"),
            output_sha256=data.get("output_sha256"),
            failure=data.get("failure"),
            audited=bool(data.get("audited", False)),
            group=data.get("group"),
            lease_holder=data.get("lease_holder"),
            lease_expiry=data.get("lease_expiry"),
            failures=tuple((str(f["worker"]), str(f["reason"]))
                           for f in data.get("failures") or ()),
            given_up=bool(data.get("given_up", False)),
            partials=tuple(PartialWork.from_json(p) for p in data.get("partials") or ()),
        )


@dataclass(frozen=True)
class GroupView:
    """``GET /groups/{group}``: the shards of one submission, in shard order."""

    group: str
    job_ids: tuple[int, ...]
    states: tuple[JobState, ...]
    complete: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupView:
        return cls(
            group=str(data["group"]),
            job_ids=tuple(int(i) for i in data["job_ids"]),
            states=tuple(JobState[str(s).upper()] for s in data["states"]),
            complete=bool(data["complete"]),
        )


@dataclass(frozen=True)
class MarketInfo:
    """``GET /info``."""

    chain_id: int
    addresses: dict[str, str]
    assigner: str
    max_blob_bytes: int
    lease_s: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MarketInfo:
        known = {"chain_id", "addresses", "assigner", "max_blob_bytes", "lease_s"}
        return cls(
            chain_id=int(data["chain_id"]),
            addresses=dict(data["addresses"]),
            assigner=str(data["assigner"]),
            max_blob_bytes=int(data["max_blob_bytes"]),
            lease_s=int(data["lease_s"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


# ---------------------------------------------------------------------- the client
_STATUS_ERRORS: dict[int, type[MeshError]] = {
    400: BadInput,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    410: NotFound,  # an ended job the market pruned (the chain keeps its events)
    405: BadInput,
    409: Conflict,
    413: BadInput,
    415: BadInput,
    422: BadInput,
}


class MarketClient:
    """Synchronous client of one market. ``account`` signs state-changing requests (None for a
    read-only client); ``chain_id`` and ``contract`` (the JobMarket's address) name the
    deployment the requests are signed for: None means "ask the market's /info on first use".
    Give the client's own deployment's where it has one: a market serving another deployment
    then refuses every signed request instead of acting on it."""

    def __init__(
        self,
        base_url: str,
        account: LocalAccount | None = None,
        chain_id: int | None = None,
        *,
        contract: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        if max_download_bytes < 1:
            raise BadInput(f"max_download_bytes must be >= 1, got {max_download_bytes}")
        self.max_download_bytes = int(max_download_bytes)
        self.base_url = base_url.rstrip("/")
        self.account = account
        self._chain_id = chain_id
        self._contract = contract
        self._path_prefix = urlsplit(self.base_url).path.rstrip("/")
        # what requests are signed for: the Host this client sends (default ports dropped)
        self._market_name = httpx.URL(self.base_url).netloc.decode()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        who = self.account.address if self.account else "anonymous"
        return f"<MarketClient {self.base_url} as {who}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.info().chain_id
        return self._chain_id

    @property
    def contract(self) -> str:
        """The JobMarket address this client's requests are signed for."""
        if self._contract is None:
            address = self.info().addresses.get("JobMarket")
            if not address:
                raise ServiceUnavailable(f"{self.base_url}/info names no JobMarket address: "
                                         "is this a meshcompute market?")
            self._contract = address
        return self._contract

    def require_deployment(self, chain_id: int, contract: str) -> None:
        """ConfigError unless the market serves the deployment the caller's chain connection
        names (``chain_id``, the JobMarket at ``contract``)."""
        info = self.info()
        served = info.addresses.get("JobMarket", "")
        if info.chain_id != chain_id or served.lower() != contract.lower():
            raise ConfigError(
                f"the market at {self.base_url} serves chain {info.chain_id}, JobMarket "
                f"{served or '(none)'}, but MESH_RPC_URL and its deployment record are chain "
                f"{chain_id}, JobMarket {contract}: point both at the same deployment")

    @property
    def address(self) -> str:
        return str(self._signer().address)

    # ------------------------------------------------------------------ public reads
    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health").json())

    def info(self) -> MarketInfo:
        return MarketInfo.from_json(self._request("GET", "/info").json())

    def get_blob(self, sha256: str, *, verify: bool = True) -> bytes:
        """The blob's bytes; with ``verify`` (default) BadInput when they do not hash to
        ``sha256`` (a corrupted store or a lying market)."""
        _check_sha(sha256)
        data = self._download("GET", f"/blobs/{sha256}", what=f"blob {sha256}")
        if verify:
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                raise BadInput(
                    f"blob {sha256} downloaded from {self.base_url} hashes to {got}"
                )
        return data

    def get_blobs(
        self, hashes: Sequence[str], *, max_blobs: int = BUNDLE_MAX_ITEMS
    ) -> dict[str, bytes]:
        """The blobs named (duplicates once), fetched as bundles of at most ``max_blobs``
        (``POST /blobs/fetch``) and each verified against its name: BadInput (its subclass
        :class:`~meshcompute.wire.bundle.BundleHashMismatch` for wrong bytes) on a bad answer,
        NotFound naming a missing blob. A bundle the market finds too big (413) is asked
        for in halves, down to single blobs through ``get_blob``."""
        for sha in hashes:
            _check_sha(sha)
        wanted = list(dict.fromkeys(hashes))
        step = max(1, int(max_blobs))
        pending = [wanted[i:i + step] for i in range(0, len(wanted), step)]
        found: dict[str, bytes] = {}
        while pending:
            chunk = pending.pop()
            try:
                data = self._download("POST", "/blobs/fetch", json={"sha256": chunk},
                                      what=f"a bundle of {len(chunk)} blobs")
            except BadInput as exc:
                if getattr(exc, "status_code", None) != 413:
                    raise
                if len(chunk) == 1:
                    found[chunk[0]] = self.get_blob(chunk[0])
                else:
                    half = len(chunk) // 2
                    pending += [chunk[:half], chunk[half:]]
                continue
            found.update(self._unbundle(chunk, data))
        return {sha: found[sha] for sha in wanted}

    def _unbundle(self, asked: list[str], data: bytes) -> dict[str, bytes]:
        where = f"bundle from {self.base_url}/blobs/fetch"
        try:
            blobs = decode_bundle(data, max_blobs=len(asked), max_blob_bytes=len(data))
        except BadInput as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        names = [sha for sha, _ in blobs]
        if names != asked:
            raise BadInput(f"{where} names blobs {names[:4]}... for the {len(asked)} asked for "
                           f"({asked[:4]}...)")
        return dict(blobs)

    def job(self, job_id: int) -> JobView:
        return JobView.from_json(self._request("GET", f"/jobs/{int(job_id)}").json())

    def worker_capacity(self) -> WorkerCapacity | None:
        """The live workers in aggregate; None from a market without that route (404)."""
        try:
            response = self._request("GET", "/workers/capacity")
        except NotFound:
            return None
        return WorkerCapacity.from_json(response.json())

    def group(self, group: str) -> GroupView:
        return GroupView.from_json(self._request("GET", f"/groups/{group}").json())

    def group_output(self, group: str) -> bytes:
        """The assembled safetensors output of one of this account's groups (a signed GET);
        Conflict names the shards still open."""
        path = f"/groups/{group}/output"
        return self._download("GET", path, what=f"group {group}'s output",
                              sign=lambda: self._sign("GET", path, b""))

    # ------------------------------------------------------------------ signed writes
    def put_blob(self, data: bytes) -> str:
        """Upload ``data``; returns its sha256 (idempotent: an existing blob is fine)."""
        sha = hashlib.sha256(data).hexdigest()
        self._signed("PUT", f"/blobs/{sha}", data, content_type="application/octet-stream")
        return sha

    def put_blobs(
        self,
        blobs: Sequence[bytes],
        *,
        max_bundle_bytes: int = BUNDLE_BUDGET_BYTES,
        max_blobs: int = BUNDLE_MAX_ITEMS,
    ) -> list[str]:
        """Upload ``blobs``; returns their sha256s in order. They travel as bundles
        (``POST /blobs/bundle``) of at most ``max_blobs`` blobs and ``max_bundle_bytes``
        bytes each; a blob too big for a bundle of its own goes through ``put_blob``.
        Each bundle is stored all or none (a failure leaves earlier bundles stored)."""
        shas = [hashlib.sha256(blob).hexdigest() for blob in blobs]
        unique: dict[str, bytes] = {}
        for sha, blob in zip(shas, blobs, strict=True):
            unique.setdefault(sha, blob)
        empty = len(bundle_header([]))
        group: list[tuple[str, bytes]] = []
        size = empty
        for sha, blob in unique.items():
            # this entry's share of the header (its JSON object and a comma), then its bytes
            cost = len(bundle_header([(sha, len(blob))])) - empty + 1 + len(blob)
            if empty + cost > max_bundle_bytes:
                self.put_blob(blob)
                continue
            if group and (len(group) >= max_blobs or size + cost > max_bundle_bytes):
                self._put_bundle(group)
                group, size = [], empty
            group.append((sha, blob))
            size += cost
        if group:
            self._put_bundle(group)
        return shas

    def _put_bundle(self, group: list[tuple[str, bytes]]) -> None:
        data = encode_bundle([blob for _, blob in group])
        response = self._signed("POST", "/blobs/bundle", data,
                                content_type="application/octet-stream")
        stored = [str(item["sha256"]) for item in response.json()["blobs"]]
        if stored != [sha for sha, _ in group]:
            raise BadInput(f"market at {self.base_url} stored a bundle of {len(group)} blobs "
                           f"as {len(stored)} other blobs")

    def put_file(self, path: str | Path) -> str:
        """Upload a file without reading it into memory (hashed first, then streamed)."""
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as source:
            for chunk in iter(lambda: source.read(_UPLOAD_CHUNK), b""):
                digest.update(chunk)
        sha = digest.hexdigest()

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as source:
                yield from iter(lambda: source.read(_UPLOAD_CHUNK), b"")

        self._signed(
            "PUT",
            f"/blobs/{sha}",
            chunks(),
            body_sha256=sha,
            content_type="application/octet-stream",
            content_length=path.stat().st_size,
        )
        return sha

    def put_spec(self, spec: JobSpec) -> str:
        """Store a job spec (the market checks its blobs exist); returns the spec's sha256."""
        answer = self._signed_json("POST", "/specs", spec.to_json())
        sha = str(answer["spec_sha256"])
        if sha != spec.sha256:
            raise BadInput(f"market stored spec as {sha}, expected {spec.sha256}")
        return sha

    def put_specs(
        self, specs: Sequence[JobSpec], *, max_specs: int = BUNDLE_MAX_ITEMS
    ) -> list[str]:
        """Store many job specs (``POST /specs/batch``, at most ``max_specs`` per request,
        each request all or none); returns their sha256s in order. BadInput names the
        index, within its request, of a spec whose blobs are missing."""
        step = max(1, int(max_specs))
        out: list[str] = []
        for start in range(0, len(specs), step):
            chunk = specs[start:start + step]
            answer = self._signed_json(
                "POST", "/specs/batch", {"specs": [spec.to_json() for spec in chunk]}
            )
            stored = [str(sha) for sha in answer["spec_sha256"]]
            expected = [spec.sha256 for spec in chunk]
            if stored != expected:
                raise BadInput(f"market stored specs as {stored[:4]}..., expected "
                               f"{expected[:4]}...")
            out += stored
        return out

    def register(
        self,
        hardware: Hardware | Mapping[str, Any],
        *,
        price_wei: int,
        slots: int,
        operator: str | None = None,
    ) -> dict[str, Any]:
        """Register (or update) this account as a worker; AuthError when it has no stake."""
        hw = hardware.to_json() if isinstance(hardware, Hardware) else dict(hardware)
        body = {
            "hardware": hw,
            "price_wei": str(int(price_wei)),
            "slots": int(slots),
            "operator": operator or self.address,
        }
        return self._signed_json("POST", "/workers", body)

    def heartbeat(self, running: Sequence[int] = ()) -> int:
        """Tell the market this worker is alive; returns the lease length in seconds."""
        answer = self._signed_json(
            "POST", "/workers/heartbeat", {"running": [int(i) for i in running]}
        )
        return int(answer["lease_s"])

    def lease(self, max_jobs: int = 1, *, reserved_only: bool = False) -> list[Lease]:
        """Jobs offered to this worker (possibly none: poll again later); ``reserved_only``:
        only those reserved on chain for it (payment for work it already did)."""
        body: dict[str, Any] = {"max_jobs": int(max_jobs)}
        if reserved_only:
            body["reserved_only"] = True
        answer = self._signed_json("POST", "/leases", body)
        return [Lease.from_json(item) for item in answer["leases"]]

    def renew(self, job_id: int) -> Lease:
        return Lease.from_json(self._signed_json("POST", f"/leases/{int(job_id)}/renew", {}))

    def release(self, job_id: int) -> None:
        self._signed_json("POST", f"/leases/{int(job_id)}/release", {})

    def fail(self, job_id: int, reason: str, *, partial: PartialWork | None = None) -> None:
        """Give a held job back as not run here, saying why; ``partial``: a training job's
        finished checkpoints, uploaded, for its client to pay for."""
        body: dict[str, Any] = {"reason": str(reason)}
        if partial is not None:
            body["partial"] = partial.to_json()
        self._signed_json("POST", f"/leases/{int(job_id)}/fail", body)

    def submit_result(self, job_id: int, output_sha256: str) -> dict[str, Any]:
        """Report the uploaded output blob of a held job (then commit it on chain)."""
        _check_sha(output_sha256)
        return self._signed_json(
            "POST", f"/results/{int(job_id)}", {"output_sha256": output_sha256}
        )

    def submit_results(
        self, results: Sequence[tuple[int, str]], *, max_results: int = BUNDLE_MAX_ITEMS
    ) -> list[dict[str, Any]]:
        """``submit_result`` for many held jobs (``POST /results/batch``, at most
        ``max_results`` per request, each request all or none): ``(job_id, output_sha256)``
        pairs in, the market's ``{"job_id", "output_sha256", "lease_expiry"}`` per job out."""
        for _, sha in results:
            _check_sha(sha)
        step = max(1, int(max_results))
        out: list[dict[str, Any]] = []
        for start in range(0, len(results), step):
            body = {"results": [
                {"job_id": int(job_id), "output_sha256": sha}
                for job_id, sha in results[start:start + step]
            ]}
            out += [dict(item) for item in self._signed_json("POST", "/results/batch",
                                                              body)["results"]]
        return out

    # ------------------------------------------------------------------ plumbing
    def _signer(self) -> LocalAccount:
        if self.account is None:
            raise AuthError("this MarketClient has no account; signed requests need one")
        return self.account

    def _signed_json(self, method: str, path: str, payload: Any) -> dict[str, Any]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        response = self._signed(method, path, body, content_type="application/json")
        if not response.content:
            return {}
        return dict(response.json())

    def _sign(self, method: str, path: str, body: bytes, *,
              body_sha256: str | None = None) -> dict[str, str]:
        """Fresh ``X-Mesh-*`` headers (a new nonce) for one attempt of a signed request."""
        return sign_request(self._signer(), method, self._path_prefix + path, body,
                            self.chain_id, market=self._market_name, contract=self.contract,
                            body_sha256=body_sha256)

    def _signed(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes],
        *,
        content_type: str,
        body_sha256: str | None = None,
        content_length: int | None = None,
    ) -> httpx.Response:
        extra = {"Content-Type": content_type}
        if content_length is not None:
            extra["Content-Length"] = str(content_length)

        def sign() -> dict[str, str]:
            return self._sign(method, path, body if isinstance(body, bytes) else b"",
                              body_sha256=body_sha256) | extra

        return self._request(method, path, content=body, sign=sign)

    def _download(self, method: str, path: str, *, what: str,
                  sign: Callable[[], dict[str, str]] | None = None, **kwargs: Any) -> bytes:
        """The body of a successful answer, read in chunks and cut off (BadInput) past
        ``max_download_bytes``: a market cannot make this node buffer without bound.
        ``sign`` gives each attempt its own signed headers."""
        for attempt in range(_RATE_RETRIES + 1):
            if sign is not None:
                kwargs["headers"] = sign()
            try:
                return self._download_once(method, path, what=what, **kwargs)
            except _RateLimitedAnswer as limited:
                if attempt == _RATE_RETRIES:
                    raise _error_for(limited.response,
                                     f"{method} {self.base_url}{path}") from None
                time.sleep(limited.wait)
        raise AssertionError("unreachable")

    def _download_once(self, method: str, path: str, *, what: str, **kwargs: Any) -> bytes:
        limit = self.max_download_bytes
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    wait = _rate_limited_wait(response)
                    if wait is not None:
                        raise _RateLimitedAnswer(response, wait)
                    raise _error_for(response, f"{method} {self.base_url}{path}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise BadInput(f"{what} from {self.base_url} is {declared} bytes, over "
                                   f"this node's download limit of {limit} bytes "
                                   "(MESH_MAX_DOWNLOAD_BYTES)")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise BadInput(f"{what} from {self.base_url} passed this node's "
                                       f"download limit of {limit} bytes "
                                       "(MESH_MAX_DOWNLOAD_BYTES); download stopped")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"market at {self.base_url} cannot be reached ({type(exc).__name__}: {exc})"
            ) from exc

    def _request(self, method: str, path: str, *,
                 sign: Callable[[], dict[str, str]] | None = None,
                 **kwargs: Any) -> httpx.Response:
        """One request, sent again after a 429 with Retry-After (up to ``_RATE_RETRIES``
        times); ``sign`` gives each attempt its own signed headers (the market claims a
        request's nonce before it counts the rate, so a refused attempt's nonce is spent)."""
        for attempt in range(_RATE_RETRIES + 1):
            if sign is not None:
                kwargs["headers"] = sign()
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ServiceUnavailable(
                    f"market at {self.base_url} cannot be reached ({type(exc).__name__}: {exc})"
                ) from exc
            wait = _rate_limited_wait(response)
            if wait is None or attempt == _RATE_RETRIES or not isinstance(
                    kwargs.get("content", b""), bytes):
                break
            # over the market's rate (429 with Retry-After): refused before the route ran, so
            # the request goes again, freshly signed, once the window allows
            time.sleep(wait)
        if response.status_code >= 400:
            raise _error_for(response, f"{method} {self.base_url}{path}")
        return response


_RATE_RETRIES = 5
_RATE_WAIT_MAX_S = 10.0


class _RateLimitedAnswer(Exception):
    def __init__(self, response: httpx.Response, wait: float) -> None:
        super().__init__("rate limited")
        self.response = response
        self.wait = wait


def _rate_limited_wait(response: httpx.Response) -> float | None:
    """Seconds to wait before sending again when the market said "too many requests" (429
    with Retry-After); None for any other answer (an upload quota's 429 has no Retry-After:
    waiting would not help)."""
    if response.status_code != 429:
        return None
    retry_after = response.headers.get("retry-after", "")
    if not retry_after.isdigit():
        return None
    return min(_RATE_WAIT_MAX_S, max(0.1, float(retry_after)))


def _error_for(response: httpx.Response, what: str) -> MeshError:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = json.dumps(detail) if detail is not None else (response.text[:500] or "")
    cls = _STATUS_ERRORS.get(response.status_code)
    if cls is None:
        if response.status_code >= 500:
            return ServiceUnavailable(
                f"{what} failed with HTTP {response.status_code}: {detail}"
            )
        cls = BadInput
    error = cls(f"{detail} (HTTP {response.status_code} from {what})")
    error.status_code = response.status_code  # type: ignore[attr-defined]
    error.detail = detail  # type: ignore[attr-defined]
    return error


def _check_sha(value: str) -> None:
    if not is_sha256_hex(value):
        raise BadInput(f"not a lowercase sha256 hex string: {value!r}")
