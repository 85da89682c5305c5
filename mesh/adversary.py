"""TEST-ONLY: a cheating worker's output policy, for demos and end-to-end tests of the audits
(the lazy verifier is :mod:`meshcompute.mesh.lazy_verifier`).

:class:`Adversary` is an :class:`~meshcompute.worker.policy.OutputPolicy` that ``mesh worker
start`` passes to the node (the development stack turns it on for its cheaters); the worker
package knows nothing of it. On a seeded fraction of its jobs the cheater returns a wrong
output of the right shape and dtype. The cheapest lie needs no computation: once it has seen an
honest output of a program (for inputs of the same shapes and dtypes), it answers later jobs of
that program with an all-zero safetensors file of the same layout, built from the header alone.
Before it knows the layout it computes once and corrupts the result (``zeros``, or every float
tensor scaled by ``scale``, the mildest lie). Each lie is reported as a ``cheated`` event. A
cheater never appeals.

It is enabled only by ``MESH_TEST_CHEAT_FRACTION`` (0 < f <= 1) and only on the development
chain id 31337; anywhere else :func:`adversary_from_env` refuses with :class:`ConfigError`.
``MESH_TEST_CHEAT_SEED`` (default 0) picks which jobs; ``MESH_TEST_CHEAT_MODE`` is ``zeros``
(default) or ``scale`` (with ``MESH_TEST_CHEAT_SCALE``, default 1.01).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcompute.errors import BadInput, ConfigError
from meshcompute.units import DEV_CHAIN_ID
from meshcompute.worker.policy import Emit

ENV_FRACTION = "MESH_TEST_CHEAT_FRACTION"
ENV_SEED = "MESH_TEST_CHEAT_SEED"
ENV_MODE = "MESH_TEST_CHEAT_MODE"
ENV_SCALE = "MESH_TEST_CHEAT_SCALE"
MODES = ("zeros", "scale")


def safetensors_header(data: bytes) -> dict[str, dict[str, object]]:
    """The tensor table of a safetensors file (JSON header only, no tensor parsing)."""
    if len(data) < 8:
        raise BadInput("not a safetensors file: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8 or length > 100_000_000:
        raise BadInput("not a safetensors file: header length out of range")
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"not a safetensors file: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise BadInput("not a safetensors file: header is not an object")
    return {k: v for k, v in header.items() if k != "__metadata__"}


def zeros_like_safetensors(data: bytes) -> bytes:
    """The same file with every tensor's bytes zeroed (same names, shapes, dtypes, layout)."""
    (length,) = struct.unpack("<Q", data[:8])
    return data[: 8 + length] + b"\x00" * (len(data) - 8 - length)


def scaled_safetensors(data: bytes, scale: float) -> bytes:
    """Every floating-point tensor multiplied by ``scale``; other tensors unchanged."""
    from safetensors.torch import load, save

    tensors = load(data)
    out = {
        name: (t * scale).to(t.dtype) if t.is_floating_point() else t
        for name, t in tensors.items()
    }
    return save(out)


def _layout_key(program_sha256: str, inputs: bytes) -> str:
    header = safetensors_header(inputs)
    shapes = sorted(
        (name, str(entry.get("dtype")), tuple(entry.get("shape", ())))  # type: ignore[arg-type]
        for name, entry in header.items()
    )
    return program_sha256 + ":" + hashlib.sha256(repr(shapes).encode()).hexdigest()


@dataclass
class Adversary:
    """Decides which jobs to cheat on and produces the wrong outputs (an output policy)."""

    name = "cheater"
    appeals = False
    fraction: float
    seed: int = 0
    mode: str = "zeros"
    scale: float = 1.01
    _templates: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"{ENV_FRACTION} must be in (0, 1], got {self.fraction}")
        if self.mode not in MODES:
            raise ConfigError(f"{ENV_MODE} must be one of {MODES}, got {self.mode!r}")

    def should_cheat(self, job_id: int) -> bool:
        """Deterministic per (seed, job id): the same jobs are picked on every run."""
        digest = hashlib.sha256(f"{self.seed}:{int(job_id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction

    def cheap_output(self, program_sha256: str, inputs: bytes) -> bytes | None:
        """A wrong output without computing, when the output layout is already known."""
        if self.mode != "zeros":
            return None
        try:
            key = _layout_key(program_sha256, inputs)
        except BadInput:
            return None
        with self._lock:
            template = self._templates.get(key)
        return zeros_like_safetensors(template) if template is not None else None

    def remember(self, program_sha256: str, inputs: bytes, output: bytes) -> None:
        """Keep an honest output's layout so later jobs of this program can be faked."""
        try:
            key = _layout_key(program_sha256, inputs)
            safetensors_header(output)
        except BadInput:
            return
        with self._lock:
            self._templates[key] = output

    def corrupt(self, output: bytes) -> bytes:
        """A wrong output derived from the honest one (zeros, or scaled floats)."""
        if self.mode == "zeros":
            return zeros_like_safetensors(output)
        return scaled_safetensors(output, self.scale)

    # ------------------------------------------------------------------ output policy
    def before_run(self, job_id: int, program_sha256: str, inputs: bytes,
                   emit: Emit) -> bytes | None:
        """On a chosen job whose output layout is known: zeros, without computing."""
        if not self.should_cheat(job_id):
            return None
        fake = self.cheap_output(program_sha256, inputs)
        if fake is not None:
            emit("cheated", job_id=job_id, how="zeros without computing")
        return fake

    def after_run(self, job_id: int, program_sha256: str, inputs: bytes, output: bytes,
                  emit: Emit) -> bytes:
        """Learn the output's layout; on a chosen job, the corrupted output."""
        self.remember(program_sha256, inputs, output)
        if not self.should_cheat(job_id):
            return output
        wrong = self.corrupt(output)
        emit("cheated", job_id=job_id, how=f"{self.mode} of output")
        return wrong


    def after_training(self, job_id: int, checkpoints: list[bytes], emit: Emit) -> list[bytes]:
        """On a chosen training job, one segment's steps skipped, the others as trained: the
        checkpoint before the last is claimed to be the one before it (its segment's steps not
        run), or corrupted when there is none to copy; with one segment, the final state is
        corrupted. The last segment, which every audit recomputes from the checkpoint before
        it, then disagrees (a cheater careful to skip only segments an audit may not draw is
        the economics simulation's ``segment_cheater``)."""
        if not self.should_cheat(job_id):
            return checkpoints
        if len(checkpoints) >= 3:
            emit("cheated", job_id=job_id, how="skipped the steps of the segment before the last")
            return [*checkpoints[:-2], checkpoints[-3], checkpoints[-1]]
        if len(checkpoints) == 2:
            emit("cheated", job_id=job_id, how=f"{self.mode} of the checkpoint before the last")
            return [self.corrupt(checkpoints[0]), checkpoints[1]]
        emit("cheated", job_id=job_id, how=f"{self.mode} of the final training state")
        return [self.corrupt(checkpoints[-1])]


def require_dev_chain(variable: str, chain_id: int) -> None:
    """ConfigError unless ``chain_id`` is the development chain: a test-only adversary mode
    (set by ``variable``) must never run anywhere else."""
    if int(chain_id) != DEV_CHAIN_ID:
        raise ConfigError(
            f"{variable} is a test-only adversary mode and works only on the development "
            f"chain {DEV_CHAIN_ID}, not chain {chain_id}: unset it"
        )


def adversary_from_env(chain_id: int, env: Mapping[str, str] | None = None) -> Adversary | None:
    """The test-only adversary when ``MESH_TEST_CHEAT_FRACTION`` is set, else None.

    Refuses (ConfigError) on any chain other than the development chain 31337.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_FRACTION, "").strip()
    if not raw:
        return None
    require_dev_chain(ENV_FRACTION, chain_id)
    try:
        fraction = float(raw)
        seed = int(env.get(ENV_SEED, "0"))
        scale = float(env.get(ENV_SCALE, "1.01"))
    except ValueError as exc:
        raise ConfigError(f"test cheat settings are malformed: {exc}") from exc
    return Adversary(fraction=fraction, seed=seed, mode=env.get(ENV_MODE, "zeros"), scale=scale)

