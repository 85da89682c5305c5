"""The job spec: what a client asks for, content-addressed.

A spec is a small JSON document stored in the blob store like any other blob; its sha256 is
the ``specHash`` the client escrows on chain. It names the program (``.pt2``) and the inputs
(safetensors) by their sha256, the device, the tolerance policy used by audits, and the limits
the worker enforces. Shards of one client submission share a ``group`` and carry their index.

Tensor naming, shared by everyone who reads or writes job data:

- inputs: a safetensors file whose tensors are named ``args.0``, ``args.1``, ... and are passed
  to the program positionally in that order;
- outputs: a safetensors file whose tensors are named ``out.0``, ``out.1``, ... (the program's
  outputs flattened in order);
- a group's assembled output concatenates each ``out.i`` along dimension 0 in shard order.

Pure: no I/O, no torch. Canonical bytes are ``json.dumps(sort_keys=True,
separators=(",", ":"))`` of :meth:`JobSpec.to_json`, UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from meshcompute.core.training import DEFAULT_TRAINING_TOLERANCE, validate_plan
from meshcompute.errors import BadInput

SPEC_VERSION = 1
#: The version of a training job's spec (see :attr:`JobSpec.training`).
TRAINING_SPEC_VERSION = 2
DEVICES = ("cpu", "cuda")
TOLERANCE_KINDS = ("exact", "allclose", "argmax", "topk")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: Defaults a client gets when it says nothing (the tolerance default is measured, see
#: BENCHMARKS.md "Verification").
DEFAULT_TOLERANCE: dict[str, Any] = {"kind": "allclose", "rtol": 3e-5, "atol": 3e-6}
DEFAULT_TIME_LIMIT_S = 300.0
DEFAULT_MEMORY_LIMIT_MB = 2048
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256, the name of a blob."""
    return hashlib.sha256(data).hexdigest()


def client_group(client: str, group: str) -> str:
    """The market's id of the group ``group`` of ``client`` (a 0x address): the sha256 of the
    address's 20 bytes and the group's 32. A spec's ``group`` names a group only within its
    client's jobs, so copying someone's group id (public in its specs, and in the mempool)
    into another client's job joins a different group and blocks nothing."""
    address = client.lower().removeprefix("0x")
    if len(address) != 40 or not is_sha256_hex(group):
        raise BadInput(f"client_group needs a 0x address and a sha256 group, got {client!r}, "
                       f"{group!r}")
    return sha256_hex(bytes.fromhex(address) + bytes.fromhex(group))


def is_sha256_hex(value: object) -> bool:
    """64 lowercase hex characters and nothing else (``$`` alone would let a newline by)."""
    return isinstance(value, str) and bool(_SHA256_HEX.fullmatch(value))


def validate_tolerance(tolerance: Any) -> dict[str, Any]:
    """Check a tolerance policy's shape; returns it normalised (floats as floats).

    Shapes: ``{"kind": "exact"}``; ``{"kind": "allclose", "rtol": r, "atol": a}``;
    ``{"kind": "argmax", "min_agreement": f}``; ``{"kind": "topk", "k": k, "min_agreement": f}``.
    """
    if not isinstance(tolerance, dict):
        raise BadInput(f"tolerance must be an object, got {type(tolerance).__name__}")
    kind = tolerance.get("kind")
    expected: dict[str, type] = {
        "exact": {},
        "allclose": {"rtol": float, "atol": float},
        "argmax": {"min_agreement": float},
        "topk": {"k": int, "min_agreement": float},
    }.get(kind)  # type: ignore[assignment]
    if expected is None:
        raise BadInput(f"tolerance kind must be one of {TOLERANCE_KINDS}, got {kind!r}")
    extra = set(tolerance) - {"kind", *expected}
    if extra:
        raise BadInput(f"tolerance {kind!r} has unknown fields: {sorted(extra)}")
    out: dict[str, Any] = {"kind": kind}
    for name, typ in expected.items():
        value = tolerance.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"tolerance {kind!r} needs a number {name!r}, got {value!r}")
        value = typ(value)
        if value < 0 or (name == "min_agreement" and value > 1) or (name == "k" and value < 1):
            raise BadInput(f"tolerance {name!r} out of range: {value!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class JobSpec:
    """One job as the client specified it (one shard of a group, or a single job)."""

    program: str
    """sha256 hex of the ``.pt2`` program."""
    inputs: str
    """sha256 hex of the inputs safetensors (``args.0``, ``args.1``, ...)."""
    device: str = "cpu"
    tolerance: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    group: str | None = None
    """sha256-shaped hex id shared by the shards of one submission; None for a single job."""
    shard: int = 0
    shards: int = 1
    version: int = SPEC_VERSION
    training: dict[str, Any] | None = None
    """For a training job, its plan (:func:`meshcompute.core.training.validate_plan`): the
    program returns the loss, ``inputs`` is the data shard (one row per sample), and the result
    is a training manifest. None for inference. A training spec is version
    :data:`TRAINING_SPEC_VERSION`, so that a node that predates training refuses it."""
    state: str | None = None
    """sha256 hex of the training's initial state (safetensors ``param.*``/``opt.*``); None
    starts from the program's own parameters and zeroed optimizer slots."""

    def __post_init__(self) -> None:
        for name in ("program", "inputs"):
            if not is_sha256_hex(getattr(self, name)):
                raise BadInput(f"spec {name!r} must be a lowercase sha256 hex string")
        if self.device not in DEVICES:
            raise BadInput(f"spec device must be one of {DEVICES}, got {self.device!r}")
        object.__setattr__(self, "tolerance", validate_tolerance(self.tolerance))
        if not 0 < self.time_limit_s <= 86_400:
            raise BadInput("spec time_limit_s must be in (0, 86400]")
        if not 16 <= self.memory_limit_mb <= 1_048_576:
            raise BadInput("spec memory_limit_mb must be in [16, 1048576]")
        if not 0 < self.max_output_bytes <= 2**40:
            raise BadInput("spec max_output_bytes must be positive")
        if self.group is not None and not is_sha256_hex(self.group):
            raise BadInput("spec group must be a lowercase sha256-shaped hex string")
        if not (1 <= self.shards <= 10_000 and 0 <= self.shard < self.shards):
            raise BadInput("spec needs 0 <= shard < shards <= 10000")
        if self.shards > 1 and self.group is None:
            raise BadInput("a spec with several shards needs a group")
        if self.training is None:
            if self.state is not None:
                raise BadInput("spec state is only for training jobs")
            if self.version != SPEC_VERSION:
                raise BadInput(f"spec version {self.version} is not supported")
            return
        if self.version != TRAINING_SPEC_VERSION:
            raise BadInput(f"a training spec is version {TRAINING_SPEC_VERSION}, got "
                           f"{self.version}")
        object.__setattr__(self, "training", validate_plan(self.training).to_json())
        if self.state is not None and not is_sha256_hex(self.state):
            raise BadInput("spec 'state' must be a lowercase sha256 hex string")
        if self.device != "cpu":
            raise BadInput("training jobs run on the CPU in this version (device 'cpu')")
        if self.group is not None or self.shards != 1:
            raise BadInput("a training job is one job: no group, one shard")
        if self.tolerance == DEFAULT_TOLERANCE:
            object.__setattr__(self, "tolerance", dict(DEFAULT_TRAINING_TOLERANCE))
        if self.tolerance["kind"] != "allclose":
            raise BadInput("a training job's tolerance compares checkpoints: it must be "
                           "'allclose'")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "program": self.program,
            "inputs": self.inputs,
            "device": self.device,
            "tolerance": dict(self.tolerance),
            "time_limit_s": float(self.time_limit_s),
            "memory_limit_mb": int(self.memory_limit_mb),
            "max_output_bytes": int(self.max_output_bytes),
            "group": self.group,
            "shard": self.shard,
            "shards": self.shards,
        } | ({"training": dict(self.training), "state": self.state}
             if self.training is not None else {})

    @property
    def is_training(self) -> bool:
        return self.training is not None

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        """The spec's blob name; ``bytes.fromhex`` of it is the on-chain ``specHash``."""
        return sha256_hex(self.canonical_bytes())

    @classmethod
    def from_json(cls, data: Any) -> JobSpec:
        """Parse a spec document; unknown or missing fields are named in the error."""
        if not isinstance(data, dict):
            raise BadInput(f"spec must be a JSON object, got {type(data).__name__}")
        known = {
            "version", "program", "inputs", "device", "tolerance", "time_limit_s",
            "memory_limit_mb", "max_output_bytes", "group", "shard", "shards", "training",
            "state",
        }
        unknown = set(data) - known
        if unknown:
            raise BadInput(f"spec has unknown fields: {sorted(unknown)}")
        missing = {"program", "inputs"} - set(data)
        if missing:
            raise BadInput(f"spec is missing fields: {sorted(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise BadInput(f"spec is malformed: {exc}") from exc

    @classmethod
    def from_bytes(cls, raw: bytes) -> JobSpec:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"spec is not valid JSON: {exc}") from exc
        return cls.from_json(data)
