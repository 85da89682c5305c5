"""Warm sandboxed job runners for the worker node, one per busy slot and device.

Starting a job process and importing torch takes about a second; a
:class:`meshcompute.execution.sandbox.JobRunner` with ``warm=True`` starts the next process as soon as the
previous job ends, so that second is spent while the node waits for work instead of while a
client waits for its result. :class:`RunnerPool` is called exactly like
:func:`meshcompute.execution.sandbox.run_job`, so the node does not care which one it has; its
:meth:`RunnerPool.run_batch` runs a lease batch (jobs of one client and one program) in one
process, on a runner already bound to that client and program when there is one.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_Key = tuple[str, int, str, bool]


class RunnerPool:
    """Reusable warm runners keyed by (device, threads, scratch root, unsandboxed)."""

    def __init__(self, *, warm: bool = True) -> None:
        self.warm = warm
        self._idle: dict[_Key, list[Any]] = defaultdict(list)
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def __call__(
        self,
        program: bytes | Path,
        inputs: bytes | Path,
        *,
        device: str = "cpu",
        time_limit_s: float,
        memory_limit_mb: int,
        max_output_bytes: int,
        threads: int,
        scratch_root: Path | None = None,
        allow_unsandboxed: bool = False,
    ) -> Any:
        key = (device, int(threads), str(scratch_root or ""), bool(allow_unsandboxed))
        runner = self._take(key, scratch_root)
        try:
            return runner.run(program, inputs, time_limit_s=time_limit_s,
                              memory_limit_mb=memory_limit_mb,
                              max_output_bytes=max_output_bytes)
        finally:
            self._give_back(key, runner)

    def run_batch(
        self,
        program: bytes | Path,
        inputs: Sequence[bytes | Path],
        *,
        device: str = "cpu",
        time_limit_s: float | Sequence[float],
        memory_limit_mb: int,
        max_output_bytes: int,
        threads: int,
        scratch_root: Path | None = None,
        allow_unsandboxed: bool = False,
        client: str,
    ) -> list[Any]:
        """:meth:`meshcompute.execution.sandbox.JobRunner.run_batch` on an idle runner, preferring one whose
        process is already bound to this client and program. All ``inputs`` must be jobs of
        ``client`` running ``program`` (one sandbox process never mixes clients or programs).
        """
        key = (device, int(threads), str(scratch_root or ""), bool(allow_unsandboxed))
        runner = self._take(key, scratch_root, prefer=client.lower())
        try:
            return runner.run_batch(program, inputs, time_limit_s=time_limit_s,
                                    memory_limit_mb=memory_limit_mb,
                                    max_output_bytes=max_output_bytes,
                                    reuse_key=client.lower())
        finally:
            self._give_back(key, runner)

    def prepare(self, *, device: str, threads: int, scratch_root: Path | None,
                allow_unsandboxed: bool, count: int = 1) -> None:
        """Start ``count`` warm runners now, so the first job does not wait for torch."""
        key = (device, int(threads), str(scratch_root or ""), bool(allow_unsandboxed))
        runners = [self._new(key, scratch_root) for _ in range(count)]
        for runner in runners:
            self._give_back(key, runner)

    def _take(self, key: _Key, scratch_root: Path | None, prefer: str | None = None) -> Any:
        with self._lock:
            idle = self._idle[key]
            if prefer is not None:
                for index, runner in enumerate(idle):
                    if prefer in runner.bound_clients():
                        return idle.pop(index)
                for index, runner in enumerate(idle):
                    if runner.bound_client() is None:
                        return idle.pop(index)
            if idle:
                return idle.pop()
        return self._new(key, scratch_root)

    def _new(self, key: _Key, scratch_root: Path | None) -> Any:
        from meshcompute.execution.sandbox import JobRunner

        device, threads, _, allow_unsandboxed = key
        runner = JobRunner(device=device, threads=threads, scratch_root=scratch_root,
                           allow_unsandboxed=allow_unsandboxed, warm=self.warm)
        with self._lock:
            self._all.append(runner)
        return runner

    def _give_back(self, key: _Key, runner: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle[key].append(runner)
                return
        runner.close()

    def close(self) -> None:
        """Stop every waiting job process (a runner still busy stops when its job ends)."""
        with self._lock:
            self._closed = True
            idle = [r for runners in self._idle.values() for r in runners]
            self._idle.clear()
        for runner in idle:
            runner.close()
