"""The verifier's own recomputation: the worker's sandboxed runner, on this machine.

The verifier runs a job exactly as a worker would (:func:`meshcompute.execution.sandbox.run_job`: schema and
operator checks, OS isolation, the spec's limits), on its own hardware. A CUDA job runs on CUDA
when this machine has a GPU and on the CPU otherwise: the tolerance policy is what makes
devices comparable (TF32 stays off in the runner).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.execution.stability import ALTERNATE_SETUP
from meshcompute.verifier.audit import RecomputeFailed


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a verifier dependency
        return False
    return bool(torch.cuda.is_available())


@dataclass
class Recomputer:
    """``Recomputer(...)(spec, program, inputs) -> output bytes`` (RecomputeFailed otherwise)."""

    threads: int = 1
    allow_unsandboxed: bool = False
    scratch_root: Path | None = None
    use_cuda: bool | None = None
    """None: use CUDA for CUDA jobs when this machine has it."""
    warm: bool = True
    """Keep the next sandboxed job process started (interpreter and torch imported) per
    device, so an audit does not wait for torch's import."""
    alternate: bool = False
    """This recomputer is the *other* numeric setup
    (:data:`meshcompute.execution.stability.ALTERNATE_SETUP`): one more thread, torch's plainest
    kernels (``ATEN_CPU_CAPABILITY=default``) and oneDNN limited to SSE4.1
    (``ONEDNN_MAX_CPU_ISA=SSE41``), as an older CPU would run them. A failing audit is
    confirmed with it before anyone is accused (:meth:`alternate_setup`)."""
    _runners: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def alternate_setup(self) -> Recomputer:
        """A recomputer for the same jobs under a deliberately different numeric setup (more
        threads, so other reduction splits; the default CPU kernels and oneDNN's SSE4.1 ones,
        so other instructions and blockings)."""
        extra = int(ALTERNATE_SETUP["extra_threads"])
        return Recomputer(threads=self.threads + extra, allow_unsandboxed=self.allow_unsandboxed,
                          scratch_root=self.scratch_root, use_cuda=False, warm=False,
                          alternate=True)

    def _runner(self, device: str) -> Any:
        from meshcompute.execution.sandbox import JobRunner

        with self._lock:
            if device not in self._runners:
                # one kept process at most: what it holds (up to a job's memory limit) is not
                # free for the next client's recomputation, which must not fail for want of it
                self._runners[device] = JobRunner(
                    device=device, threads=self.threads, scratch_root=self.scratch_root,
                    allow_unsandboxed=self.allow_unsandboxed, warm=self.warm, max_kept=1,
                    cpu_capability=ALTERNATE_SETUP["cpu_capability"] if self.alternate else None,
                    onednn_max_isa=ALTERNATE_SETUP["onednn_max_isa"] if self.alternate else None,
                )
            return self._runners[device]

    def close(self) -> None:
        with self._lock:
            for runner in self._runners.values():
                runner.close()
            self._runners.clear()

    def device_for(self, spec: JobSpec) -> str:
        if spec.device != "cuda":
            return "cpu"
        use = cuda_available() if self.use_cuda is None else self.use_cuda
        return "cuda" if use else "cpu"

    def __call__(self, spec: JobSpec, program: bytes, inputs: bytes, *,
                 client: str | None = None) -> bytes:
        """The job's output. With ``client`` (the job's client, from its on-chain record), the
        sandboxed process (on the CPU; one at most) is kept for that client's next job of the
        same program and limits, as a worker keeps it (:meth:`JobRunner.run_batch`'s ``reuse_key``: a process only
        ever runs one client's jobs of one program); without, each job gets a fresh one. A
        fresh process per audit costs an interpreter start and torch's import, more CPU than
        the recomputation of a small job, and at a market's load that, not the chain, is
        what limits how many audits a verifier judges."""
        device = self.device_for(spec)
        runner = self._runner(device)
        limits = {"time_limit_s": spec.time_limit_s, "memory_limit_mb": spec.memory_limit_mb,
                  "max_output_bytes": spec.max_output_bytes}
        if client is None or device == "cuda":  # a kept CUDA process would hold GPU memory
            outcome = runner.run(program, inputs, **limits)
        else:
            (outcome,) = runner.run_batch(program, [inputs], reuse_key=client, **limits)
        if not outcome.ok or outcome.output is None:
            raise RecomputeFailed(f"recomputation failed: {outcome.reason}")
        output = bytes(outcome.output)
        if outcome.output_sha256 and outcome.output_sha256 != sha256_hex(output):
            raise RecomputeFailed("the runner's output hash does not match its output")
        return output
