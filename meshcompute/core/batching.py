"""Grouping queued jobs into lease batches: pure, deterministic, used before matching.

A *batch* is a set of queued jobs the market offers to one worker under one EIP-712
``AssignTicket`` (``jobIds`` lists them all): the worker runs them in one sandboxed process and
commits them in one ``assignAndCommit`` transaction. Only jobs that are safe and sensible to
run together are grouped: the same client, the same program hash, the same device, and none
excluded for a different set of workers (an exclusion is per job; a batch carries the union).

:func:`plan_batches` cuts each such group, oldest job first, into batches of at most
``max_batch`` jobs, and into at least as many batches as the fleet has free slots (up to one
job per batch), so a burst spreads over idle workers instead of queueing behind one.
:func:`batch_demand` turns a batch into one :class:`~meshcompute.core.matching.JobDemand` for
the per-job matcher (one slot, the summed collateral, the largest memory, the smallest reward
as the price ceiling, the oldest ``posted_at``, the union of exclusions), so stake and slot
rules hold for the batch as a whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from meshcompute.core.matching import JobDemand
from meshcompute.errors import BadInput

DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A matchable job with what batching needs to know about it."""

    demand: JobDemand
    client: str
    program: str
    """sha256 hex of the job's program blob."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Jobs to be offered together; ``job_ids`` in serving order (oldest first)."""

    job_ids: tuple[int, ...]
    client: str
    program: str
    demand: JobDemand
    """The batch as one demand for :func:`meshcompute.core.matching.match` (its ``job_id`` is
    the first job's)."""


def batch_key(job: QueuedJob) -> tuple[str, str, str, frozenset[str], frozenset[str], str]:
    """Jobs with equal keys may share a batch (and so a sandbox process)."""
    d = job.demand
    return (job.client.lower(), job.program.lower(), d.device.lower(),
            frozenset(w.lower() for w in d.exclude_workers),
            frozenset(o.lower() for o in d.exclude_operators), d.only_worker or "")


def batch_demand(jobs: Sequence[JobDemand]) -> JobDemand:
    """One demand standing for all of ``jobs`` (see the module docstring)."""
    if not jobs:
        raise BadInput("a batch needs at least one job")
    return JobDemand(
        job_id=jobs[0].job_id,
        device=jobs[0].device,
        memory_mb=max(j.memory_mb for j in jobs),
        collateral=sum(j.collateral for j in jobs),
        reward=min(j.reward for j in jobs),
        posted_at=min(j.posted_at for j in jobs),
        exclude_workers=frozenset().union(*(j.exclude_workers for j in jobs)),
        exclude_operators=frozenset().union(*(j.exclude_operators for j in jobs)),
        only_worker=jobs[0].only_worker,
    )


def plan_batches(jobs: Sequence[QueuedJob], *, max_batch: int = DEFAULT_MAX_BATCH,
                 free_slots: int = 1) -> list[Batch]:
    """Cut ``jobs`` into batches (see the module docstring), returned oldest first.

    A group of ``n`` compatible jobs becomes ``k = min(n, max(ceil(n / max_batch),
    free_slots))`` batches whose sizes differ by at most one. ``max_batch`` 1 gives one batch
    per job (no batching). Raises :class:`BadInput` for duplicate job ids or a bad argument.
    """
    if type(max_batch) is not int or max_batch < 1:
        raise BadInput(f"max_batch must be an int >= 1, got {max_batch!r}")
    if type(free_slots) is not int or free_slots < 0:
        raise BadInput(f"free_slots must be an int >= 0, got {free_slots!r}")
    if len({j.demand.job_id for j in jobs}) != len(jobs):
        raise BadInput("duplicate job_id in jobs")
    groups: dict[tuple[str, str, str, frozenset[str], frozenset[str]], list[QueuedJob]] = (
        defaultdict(list))
    for job in sorted(jobs, key=lambda j: (j.demand.posted_at, j.demand.job_id)):
        groups[batch_key(job)].append(job)
    batches: list[Batch] = []
    for members in groups.values():
        n = len(members)
        count = min(n, max(-(-n // max_batch), free_slots, 1))
        size, extra = divmod(n, count)
        start = 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            part = members[start:end]
            start = end
            batches.append(Batch(
                job_ids=tuple(j.demand.job_id for j in part),
                client=part[0].client,
                program=part[0].program,
                demand=batch_demand([j.demand for j in part]),
            ))
    batches.sort(key=lambda b: (b.demand.posted_at, b.demand.job_id))
    return batches
