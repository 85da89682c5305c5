"""What the node commits for a job it ran, and whether it appeals a failed audit.

The node asks its :class:`OutputPolicy` at two points of a job and once after a failed audit:

- before running: :meth:`~OutputPolicy.before_run` may hand over an output, and the job is
  then not run;
- after running: :meth:`~OutputPolicy.after_run` returns the output to commit, given the one
  the job computed (:meth:`~OutputPolicy.after_training`: the checkpoints of a training job);
- :attr:`~OutputPolicy.appeals`: whether the node appeals when an audit of its job fails.

A real worker runs :data:`HONEST` (run every job, commit what it computed, appeal). Other
policies are passed in from outside (the development stack's test-only cheater,
:mod:`meshcompute.mesh.adversary`); the node itself knows no other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Emit = Callable[..., None]
"""The node's event emitter: ``emit(name, **fields)``."""


class OutputPolicy(Protocol):
    name: str
    """Shown in the node's ``started`` event."""
    appeals: bool
    """Whether the node appeals a failed audit of one of its jobs (once, inside the window)."""

    def before_run(self, job_id: int, program_sha256: str, inputs: bytes,
                   emit: Emit) -> bytes | None:
        """An output to commit without running the job, or None to run it."""
        ...

    def after_run(self, job_id: int, program_sha256: str, inputs: bytes, output: bytes,
                  emit: Emit) -> bytes:
        """The output to commit for a job that ran and computed ``output``."""
        ...

    def after_training(self, job_id: int, checkpoints: list[bytes], emit: Emit) -> list[bytes]:
        """The checkpoints to upload and name in the manifest, for a training job that ran
        and reached ``checkpoints`` (the last is the final state)."""
        ...


class HonestPolicy:
    """Run every job, commit what it computed, appeal a failed audit."""

    name = "honest"
    appeals = True

    def before_run(self, job_id: int, program_sha256: str, inputs: bytes,
                   emit: Emit) -> bytes | None:
        return None

    def after_run(self, job_id: int, program_sha256: str, inputs: bytes, output: bytes,
                  emit: Emit) -> bytes:
        return output

    def after_training(self, job_id: int, checkpoints: list[bytes], emit: Emit) -> list[bytes]:
        return checkpoints


HONEST: OutputPolicy = HonestPolicy()
