"""The worker's stability probe (``--probe-stability``): hand back a job whose audit would be void.

A verifier never slashes a worker for a program that is numerically unstable under its
tolerance: before it posts a fail it recomputes under a second numeric setup and on the inputs
moved by one ulp, and when those disagree beyond the stability margin the job is declared void
on chain (nobody slashed, the worker not paid, its collateral unlocked). A void drawn job still
costs an honest worker its compute, so a worker may probe a program the same way before it
commits and hand back, free of charge, a job it cannot reproduce.

:func:`judge_output` is :func:`meshcompute.execution.stability.probe_stability` with the
worker's own computed output as "our run" (so it costs about two extra runs, not three): the
tolerance is refused outright when no honest worker can meet it (``exact`` on floating
outputs, ``allclose`` under the rounding floor: no extra run); otherwise the inputs moved by one
ulp run in the worker's own setup, then (only when that stayed within the margin) the program
runs under the verifiers' alternate setup (:data:`~meshcompute.execution.stability.
ALTERNATE_SETUP`, on the CPU, as :meth:`meshcompute.verifier.recompute.Recomputer.
alternate_setup` does). Each is judged with :func:`~meshcompute.execution.stability.
own_run_check`, the check an audit applies.

:class:`ProbeCache` keeps one verdict per :func:`probe_key` (program sha256, device, the input
tensors' dtypes and shapes, tolerance), so the shards of one program are probed once; a second
slot that needs the same verdict while it is being probed waits for it. A cached ``unstable``
or ``refused`` verdict hands a later shard back before it is computed; a cached ``stable`` one
lets it commit without a probe. A probe that cannot run (a run fails or times out) is
``inconclusive``: its jobs commit as usual, and it is cached too, so a program whose probe
fails does not cost two extra runs on every shard.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcompute.core.spec import JobSpec, validate_tolerance
from meshcompute.core.tolerance import effective_policy, refusal
from meshcompute.errors import BadInput
from meshcompute.execution.perturb import perturb_inputs
from meshcompute.execution.stability import (
    ALTERNATE_SETUP,
    load_outputs,
    own_run_check,
)
from meshcompute.execution.tensorfile import read_header

__all__ = ["ProbeCache", "ProbeFailed", "ProbeKey", "ProbeVerdict", "judge_output",
           "probe_key", "run_alternate_setup"]

ProbeKey = tuple[str, str, tuple[Any, ...], str]
"""(program sha256, device, ((dtype, shape), ...) of the inputs, tolerance as JSON)."""

HANDED_BACK = "handed back unpaid, no penalty"

#: Extra runs a probe of a new program costs at most (one-ulp inputs, alternate setup).
EXTRA_RUNS = 2


class ProbeFailed(Exception):
    """A probe run did not produce an output: no verdict (the job is committed as usual)."""


@dataclass(frozen=True)
class ProbeVerdict:
    """What a probe found for one (program, input layout, tolerance)."""

    verdict: str
    """``stable``, ``unstable``, ``refused`` (a tolerance no honest worker can meet) or
    ``inconclusive`` (the probe could not run; the job is committed as usual)."""
    reason: str
    runs: int = 0
    """Extra runs the probe made."""
    probe_s: float = 0.0
    alternate_used: float | None = None
    """Fraction of the effective tolerance the alternate setup's output used (None: not run,
    or a ranked policy)."""
    perturbed_used: float | None = None
    """Fraction used by the output on inputs moved by one ulp (None: not run, no floating
    inputs, or a ranked policy)."""

    @property
    def hand_back(self) -> bool:
        """Whether a job with this verdict goes back to the market instead of being committed."""
        return self.verdict in ("unstable", "refused")

    def hand_back_reason(self) -> str:
        """The reason given to the market (and shown to the client) for a handed-back job."""
        what = ("unstable under its tolerance" if self.verdict == "unstable"
                else "its tolerance cannot be met by an honest worker")
        return f"{what}: {self.reason}; {HANDED_BACK}"

    def fields(self) -> dict[str, Any]:
        """The verdict as event fields (JSON-safe)."""
        out: dict[str, Any] = {"verdict": self.verdict, "reason": self.reason,
                               "runs": self.runs, "probe_s": round(self.probe_s, 3)}
        for name in ("alternate_used", "perturbed_used"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 6) if value != float("inf") else None
        return out


def probe_key(spec: JobSpec, inputs: bytes) -> ProbeKey:
    """The cache key of a job: its program, device, the layout of its inputs and tolerance.
    Inputs whose header cannot be read are keyed by their own hash (never shared)."""
    try:
        layout: tuple[Any, ...] = tuple((info.dtype, info.shape)
                                        for info in read_header(bytes(inputs), "args"))
    except BadInput:
        layout = (("sha256", hashlib.sha256(inputs).hexdigest()),)
    tolerance = json.dumps(spec.tolerance, sort_keys=True, separators=(",", ":"))
    return (spec.program, spec.device, layout, tolerance)


Outcome = Any
"""A job runner's outcome (``ok``, ``output``, ``reason``...)."""


def judge_output(
    ours: bytes,
    inputs: bytes,
    tolerance: dict[str, Any],
    *,
    run_ours: Callable[[bytes], Outcome],
    run_alternate: Callable[[], Outcome],
) -> ProbeVerdict:
    """Judge the program behind ``ours`` (its output on ``inputs``, computed by this worker) as
    an audit would: ``run_ours(moved_inputs)`` runs it in the worker's own setup,
    ``run_alternate()`` on ``inputs`` under the verifiers' alternate setup. Raises
    :class:`ProbeFailed` when a run (or reading an output) fails."""
    started = time.monotonic()
    policy = validate_tolerance(tolerance)
    try:
        expected, dtypes = load_outputs(ours, who="our")
    except BadInput as exc:
        raise ProbeFailed(str(exc)) from exc
    refused = refusal(effective_policy(policy, dtypes, expected))
    if refused is not None:
        return ProbeVerdict("refused", refused, probe_s=time.monotonic() - started)
    runs = 0
    problems: list[str] = []
    perturbed_used = alternate_used = None
    try:
        shifted = perturb_inputs(inputs)
    except BadInput as exc:
        raise ProbeFailed(f"cannot move the inputs by one ulp: {exc}") from exc
    if shifted != inputs:  # equal without floating inputs: our run again
        runs += 1
        moved = own_run_check(ours, _output(run_ours(shifted), "on inputs moved by one ulp"),
                              policy)
        perturbed_used = moved.used
        if not moved.stable:
            problems.append(f"a one-ulp change of the inputs {moved.reason}")
    if not problems:  # one disagreement settles it: spare the second run
        runs += 1
        alt = own_run_check(ours, _output(run_alternate(), "under the alternate setup"), policy)
        alternate_used = alt.used
        if not alt.stable:
            problems.append("the verifiers' alternate numeric setup (one more thread, plain CPU "
                            f"kernels) {alt.reason}")
    elapsed = time.monotonic() - started
    if problems:
        return ProbeVerdict(
            "unstable", "; and ".join(problems) + "; an audit of it would be void",
            runs, elapsed, alternate_used, perturbed_used)
    used = [u for u in (alternate_used, perturbed_used) if u is not None]
    reason = ("our other runs stay within "
              + (f"{max(used):.1%} of the effective tolerance" if used
                 else "the ranking the policy asks for"))
    return ProbeVerdict("stable", reason, runs, elapsed, alternate_used, perturbed_used)


def _output(outcome: Outcome, what: str) -> bytes:
    if not getattr(outcome, "ok", False) or getattr(outcome, "output", None) is None:
        raise ProbeFailed(f"the program failed {what}: "
                          f"{getattr(outcome, 'reason', None) or 'no reason given'}")
    return bytes(outcome.output)


def run_alternate_setup(
    program: bytes,
    inputs: bytes,
    *,
    device: str = "cpu",
    time_limit_s: float,
    memory_limit_mb: int,
    max_output_bytes: int,
    threads: int,
    scratch_root: Path | None = None,
    allow_unsandboxed: bool = False,
) -> Outcome:
    """Run one job under the verifiers' alternate numeric setup, in a fresh sandboxed process:
    ``threads`` (the worker's own) plus one, torch's plain CPU kernels, oneDNN limited to
    SSE4.1, always on the CPU (``device`` is ignored, as the verifiers' alternate is)."""
    from meshcompute.execution.sandbox import JobRunner

    del device
    with JobRunner(threads=int(threads) + int(ALTERNATE_SETUP["extra_threads"]),
                   cpu_capability=ALTERNATE_SETUP["cpu_capability"],
                   onednn_max_isa=ALTERNATE_SETUP["onednn_max_isa"],
                   scratch_root=scratch_root, allow_unsandboxed=allow_unsandboxed) as runner:
        return runner.run(program, inputs, time_limit_s=time_limit_s,
                          memory_limit_mb=memory_limit_mb, max_output_bytes=max_output_bytes)


class ProbeCache:
    """Verdicts by :func:`probe_key`, the most recent ``max_entries`` (thread-safe). A key
    being probed by one thread makes the others that ask for it wait for its verdict."""

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max(1, int(max_entries))
        self._entries: OrderedDict[ProbeKey, ProbeVerdict] = OrderedDict()
        self._probing: set[ProbeKey] = set()
        self._cond = threading.Condition()

    def get(self, key: ProbeKey) -> ProbeVerdict | None:
        with self._cond:
            verdict = self._entries.get(key)
            if verdict is not None:
                self._entries.move_to_end(key)
            return verdict

    def verdict(self, key: ProbeKey,
                probe: Callable[[], ProbeVerdict]) -> tuple[ProbeVerdict, bool]:
        """The cached verdict of ``key``, or ``probe()``'s (then cached); and whether it was
        probed by this call."""
        with self._cond:
            while key in self._probing:
                self._cond.wait()
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached, False
            self._probing.add(key)
        try:
            verdict = probe()
            with self._cond:
                self._entries[key] = verdict
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        finally:
            with self._cond:
                self._probing.discard(key)
                self._cond.notify_all()
        return verdict, True

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)
