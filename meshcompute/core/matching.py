"""Matching queued jobs to worker offers: one greedy round, pure and deterministic.

``match(jobs, workers, now)`` serves jobs oldest first (``posted_at``, then ``job_id``) and
gives each the best-scoring *eligible* worker at that moment, updating that worker's load and
free stake before the next job. A job no worker can take stays unassigned; the round carries on
with the next one. The result does not depend on the order of the input sequences.

Eligibility of worker ``w`` for job ``j`` (every rule must hold):

- device: a non-cpu job (``cuda``, or any other accelerator name) needs a worker of exactly that
  device; a ``cpu`` job may run on any worker, but cpu workers are preferred *strictly*: it goes
  to an accelerator worker only when no cpu worker is eligible (accelerators are a few percent
  of the fleet; spending their slots on cpu work starves the jobs that need them).
- memory: for a non-cpu job ``gpu_memory_mb >= memory_mb``; for a cpu job (on any worker)
  ``memory_mb >= memory_mb``.
- stake: ``free_stake`` minus the collateral of jobs given to ``w`` earlier in this round covers
  ``collateral`` (the chain locks collateral at assignment).
- capacity: ``load`` plus this round's assignments to ``w`` is below ``slots``.
- exclusions: ``w.address`` not in ``exclude_workers`` and ``w.operator`` not in
  ``exclude_operators``, compared case-insensitively (addresses arrive checksummed or not), so
  an audit recomputation never goes to the producer or another address of its operator.
- price: ``price_wei <= reward``.

Ranking among eligible workers (:func:`worker_score`, higher is better; ties go to the lower
address so the result is deterministic)::

    score = 0.4 * reliability + 0.2 * cheapness + 0.2 * free_share + 0.2 * idleness
            - 2.0 * slashed

- reliability = (completed + 3) / (completed + missed + 4): a Laplace-style prior, so a new
  worker starts at 0.75 (a clean record earns up to 1.0, misses pull it towards 0);
- cheapness = ref / (ref + price_wei), ref the lower median price of the offers in this round
  (1.0 when both are 0);
- free_share = (slots - load) / slots, the load counted with this round's assignments;
- idleness = min(now - last_assigned_at, 600 s) / 600 s; an assignment in this round sets
  ``last_assigned_at`` to ``now``.

Every term lies in [0, 1] and the weights sum to 1, so the score of a never-slashed worker lies
in [0, 1] and each slash drops a worker a whole tier (2.0) below everyone with fewer slashes: a
slashed worker gets a job only when no eligible worker with fewer slashes exists. New workers
get work because they are idle (``last_assigned_at`` 0 or old) and unloaded. Assigning a job
lowers the worker's free share and idleness, so among equal workers the next job goes to
another one: N equal idle workers with N jobs get one each (round-robin by address).

How it stays fast (10,000 workers, 100,000 jobs): workers are bucketed by device family (cpu;
each accelerator device; "spill", the accelerator workers seen by cpu jobs) and memory class
(the exact memory size when a family has at most 32 distinct sizes, else its power of two).
Each bucket is a segment tree over its workers sorted by price, and each node keeps the Pareto
front of its workers that still have a free slot over (free stake, rank): the best worker of a
node whose free stake covers a collateral is one bisect away. A job looks only at buckets whose
memory can suffice, at the price prefix ``price_wei <= reward`` (a bisect, then O(log n)
canonical nodes), and runs a best-first search over nodes bounded by that best worker: when the
bound's worker is eligible it is the answer (nothing left can beat it); when it is not (an
exclusion, or memory inside a power-of-two bucket) the node's children are searched. So price,
stake, slots and device never cost a wasted step, and a job nobody can take costs a few
bisects. An assignment rebuilds the fronts on the assigned worker's leaf-to-root paths,
stopping where a node does not change. Costs grow with front sizes (small unless free stake
and rank are strongly anti-correlated) and with the number of excluded or too-small workers
that outrank the answer (an audit that excludes a large operator steps past its workers).
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from meshcompute.errors import BadInput

CPU = "cpu"

RELIABILITY_WEIGHT = 0.4
PRICE_WEIGHT = 0.2
LOAD_WEIGHT = 0.2
IDLE_WEIGHT = 0.2
#: Idleness saturates after this many seconds without an assignment.
IDLE_SATURATION_S = 600.0
#: Prior pseudo-counts of the reliability estimate (a new worker starts at 3 / 4).
PRIOR_COMPLETED = 3
PRIOR_MISSED = 1
#: Score drop per slash: larger than the whole range of the other terms, so slashes form tiers.
SLASH_TIER = 2.0

_NEG_INF = -math.inf


def _nonneg_int(owner: str, name: str, value: object) -> None:
    if type(value) is not int or value < 0:
        raise BadInput(f"{owner}.{name} must be a non-negative int, got {value!r}")


def _finite(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"{owner}.{name} must be a finite number, got {value!r}")


def _text(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise BadInput(f"{owner}.{name} must be a non-empty string, got {value!r}")


def _names(owner: str, name: str, value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise BadInput(f"{owner}.{name} must be a set of strings, got {value!r}")
    items = frozenset(value)
    for item in items:
        _text(owner, name, item)
    return items


@dataclass(frozen=True, slots=True)
class WorkerOffer:
    """A registered, heartbeating worker as the matcher sees it at the start of a round."""

    address: str
    operator: str
    device: str
    memory_mb: int
    gpu_memory_mb: int
    free_stake: int
    price_wei: int
    slots: int
    load: int
    completed: int
    missed: int
    slashed: int
    last_assigned_at: float

    def __post_init__(self) -> None:
        for name in ("address", "operator", "device"):
            _text("WorkerOffer", name, getattr(self, name))
        for name in ("memory_mb", "gpu_memory_mb", "free_stake", "price_wei", "slots", "load",
                     "completed", "missed", "slashed"):
            _nonneg_int("WorkerOffer", name, getattr(self, name))
        _finite("WorkerOffer", "last_assigned_at", self.last_assigned_at)


_ANY_PRICE = 2**256


@dataclass(frozen=True, slots=True)
class JobDemand:
    """A posted job waiting for a worker (or an audit recomputation waiting for a verifier)."""

    job_id: int
    device: str
    memory_mb: int
    collateral: int
    reward: int
    posted_at: float
    exclude_workers: frozenset[str] = field(default_factory=frozenset)
    exclude_operators: frozenset[str] = field(default_factory=frozenset)
    only_worker: str | None = None
    """A job reserved on chain for one worker (``postJobsFor``): it alone may take it, at the
    reward its client chose (paying it for work already done: no price check)."""

    def __post_init__(self) -> None:
        _nonneg_int("JobDemand", "job_id", self.job_id)
        if self.only_worker is not None:
            _text("JobDemand", "only_worker", self.only_worker)
            object.__setattr__(self, "only_worker", self.only_worker.lower())
        _text("JobDemand", "device", self.device)
        for name in ("memory_mb", "collateral", "reward"):
            _nonneg_int("JobDemand", name, getattr(self, name))
        _finite("JobDemand", "posted_at", self.posted_at)
        for name in ("exclude_workers", "exclude_operators"):
            object.__setattr__(self, name, _names("JobDemand", name, getattr(self, name)))


@dataclass(frozen=True, slots=True)
class Assignment:
    """Job ``job_id`` goes to the worker at ``worker`` (the address exactly as offered)."""

    job_id: int
    worker: str


def reference_price(workers: Sequence[WorkerOffer]) -> int:
    """The lower median of the offered prices: the yardstick of :func:`worker_score`."""
    prices = sorted(w.price_wei for w in workers)
    return prices[(len(prices) - 1) // 2] if prices else 0


def worker_score(offer: WorkerOffer, *, load: int, last_assigned_at: float, now: float,
                 ref_price: int) -> float:
    """The ranking score of ``offer`` with the given current load and last assignment time.

    See the module docstring for the formula; higher is better.
    """
    reliability = (offer.completed + PRIOR_COMPLETED) / (
        offer.completed + offer.missed + PRIOR_COMPLETED + PRIOR_MISSED)
    denominator = float(ref_price) + float(offer.price_wei)
    cheapness = float(ref_price) / denominator if denominator > 0 else 1.0
    free_share = max(offer.slots - load, 0) / offer.slots if offer.slots else 0.0
    idle = min(max(now - last_assigned_at, 0.0), IDLE_SATURATION_S) / IDLE_SATURATION_S
    return (RELIABILITY_WEIGHT * reliability + PRICE_WEIGHT * cheapness
            + LOAD_WEIGHT * free_share + IDLE_WEIGHT * idle - SLASH_TIER * offer.slashed)


def serving_order(jobs: Sequence[JobDemand]) -> list[JobDemand]:
    """Jobs in the order a round serves them: oldest ``posted_at`` first, then ``job_id``."""
    return sorted(jobs, key=lambda j: (j.posted_at, j.job_id))


def match(jobs: Sequence[JobDemand], workers: Sequence[WorkerOffer], now: float) -> list[Assignment]:
    """Assign ``jobs`` to ``workers`` for one round at time ``now`` (see the module docstring).

    Returns the assignments in serving order. Raises :class:`BadInput` on duplicate job ids or
    worker addresses.
    """
    ordered = serving_order(jobs)
    if len({j.job_id for j in ordered}) != len(ordered):
        raise BadInput("duplicate job_id in jobs")
    round_ = MatchRound(workers, now)
    assignments = []
    for job in ordered:
        worker = round_.serve(job)
        if worker is not None:
            assignments.append(Assignment(job.job_id, worker))
    return assignments


#: A family whose workers have at most this many distinct memory sizes gets one bucket per size
#: (memory never needs checking inside a bucket); otherwise sizes are grouped by power of two.
EXACT_MEMORY_CLASSES = 32

# A front entry: (-free_stake, -score, worker index). Sorting ascending puts the largest stake
# first and, for equal stakes, the better-ranked worker first.
_Entry = tuple[int, float, int]


class _Bucket:
    """One segment tree: workers of one device family and memory class, leaves sorted by price.

    Each node keeps the Pareto front of its workers that have a free slot, over (free stake,
    rank): sorted by stake descending, each entry ranks strictly better than every entry with
    more stake. The best worker of the node whose free stake covers ``c`` is therefore the last
    entry with stake >= c (one bisect). ``mem`` keeps the largest memory among those workers.
    """

    __slots__ = ("front", "max_memory", "mem", "memory", "prices", "size")

    def __init__(self, members: list[int], memory: list[int], price: list[int]) -> None:
        members.sort(key=lambda i: (price[i], i))
        self.prices = [price[i] for i in members]
        self.memory = memory  # the per-worker memory this family compares
        self.max_memory = max(memory[i] for i in members)
        size = 1
        while size < len(members):
            size *= 2
        self.size = size
        self.front: list[list[_Entry]] = [[] for _ in range(2 * size)]
        self.mem = [-1] * (2 * size)

    def build(self) -> None:
        for node in range(self.size - 1, 0, -1):
            self._pull(node)

    def _pull(self, node: int) -> bool:
        """Recompute ``node`` from its children; return whether it changed."""
        front = self.front
        left = front[2 * node]
        right = front[2 * node + 1]
        if not left:
            merged = right
        elif not right:
            merged = left
        else:
            items = left + right
            items.sort()
            merged = []
            best_score = math.inf  # negated scores: smaller is better
            best_who = -1
            for item in items:
                neg_score = item[1]
                if neg_score < best_score or (neg_score == best_score and item[2] < best_who):
                    merged.append(item)
                    best_score = neg_score
                    best_who = item[2]
        mem = self.mem
        ml = mem[2 * node]
        mr = mem[2 * node + 1]
        new_mem = max(mr, ml)
        if merged == front[node] and new_mem == mem[node]:
            return False
        front[node] = merged
        mem[node] = new_mem
        return True

    def set_leaf(self, pos: int, entry: _Entry | None, mem: int, *, pull: bool = True) -> None:
        node = self.size + pos
        self.front[node] = [entry] if entry is not None else []
        self.mem[node] = mem
        if pull:
            node //= 2
            while node and self._pull(node):
                node //= 2


class MatchRound:
    """The state of one matching round: serve jobs one at a time with :meth:`serve`.

    :func:`match` is ``serve`` over :func:`serving_order`; the class exists so a benchmark can
    time each decision. Serving jobs in another order is allowed but is not ``match``.
    """

    def __init__(self, workers: Sequence[WorkerOffer], now: float) -> None:
        _finite("match", "now", now)
        ordered = sorted(workers, key=lambda w: w.address.lower())
        for a, b in itertools.pairwise(ordered):
            if a.address.lower() == b.address.lower():
                raise BadInput(f"duplicate worker address {b.address!r}")
        self.now = float(now)
        self._offers = ordered
        self._address = [w.address.lower() for w in ordered]
        self._index = {address: i for i, address in enumerate(self._address)}
        self._operator = [w.operator.lower() for w in ordered]
        self._price = [w.price_wei for w in ordered]
        self._slots = [w.slots for w in ordered]
        self._load = [w.load for w in ordered]
        self._free_stake = [w.free_stake for w in ordered]
        self._last = [float(w.last_assigned_at) for w in ordered]
        self._host_memory = [w.memory_mb for w in ordered]
        self._accel_memory = [w.gpu_memory_mb for w in ordered]
        self._ref_price = reference_price(ordered)
        self._served: set[int] = set()

        # Families: "cpu" (cpu workers, host memory), "spill" (every other worker, host memory:
        # cpu jobs when no cpu worker fits) and one per accelerator device (accelerator memory).
        families: dict[str, tuple[list[int], list[int]]] = {}
        for i, w in enumerate(ordered):
            device = w.device.lower()
            if device == CPU:
                families.setdefault(CPU, ([], self._host_memory))[0].append(i)
            else:
                families.setdefault("spill", ([], self._host_memory))[0].append(i)
                families.setdefault(device, ([], self._accel_memory))[0].append(i)
        self._families: dict[str, list[_Bucket]] = {}
        self._handles: list[list[tuple[_Bucket, int]]] = [[] for _ in ordered]
        for family, (members, memory) in sorted(families.items()):
            exact = len({memory[i] for i in members}) <= EXACT_MEMORY_CLASSES
            classes: dict[int, list[int]] = {}
            for i in members:
                classes.setdefault(memory[i] if exact else memory[i].bit_length(), []).append(i)
            buckets = []
            for _cls, class_members in sorted(classes.items()):
                bucket = _Bucket(class_members, memory, self._price)
                buckets.append(bucket)
                for pos, i in enumerate(class_members):  # sorted by price by _Bucket
                    self._handles[i].append((bucket, pos))
            self._families[family] = buckets
        for i in range(len(ordered)):
            self._refresh(i, pull=False)
        for buckets in self._families.values():
            for bucket in buckets:
                bucket.build()

    def _refresh(self, i: int, *, pull: bool = True) -> None:
        if self._load[i] < self._slots[i]:
            key = worker_score(self._offers[i], load=self._load[i], last_assigned_at=self._last[i],
                               now=self.now, ref_price=self._ref_price)
            entry = (-self._free_stake[i], -key, i)
            for bucket, pos in self._handles[i]:
                bucket.set_leaf(pos, entry, bucket.memory[i], pull=pull)
        else:
            for bucket, pos in self._handles[i]:
                bucket.set_leaf(pos, None, -1, pull=pull)

    def serve(self, job: JobDemand) -> str | None:
        """Give ``job`` to its best eligible worker now; return that worker's address or None."""
        if job.job_id in self._served:
            raise BadInput(f"job {job.job_id} already served in this round")
        self._served.add(job.job_id)
        if job.only_worker is not None:  # its one worker, at any price, looked up directly
            return self._serve_reserved(job)
        device = job.device.lower()
        ex_workers = frozenset(a.lower() for a in job.exclude_workers) if job.exclude_workers else None
        ex_operators = (frozenset(a.lower() for a in job.exclude_operators)
                        if job.exclude_operators else None)
        if device == CPU:
            phases = (self._families.get(CPU), self._families.get("spill"))
        else:
            phases = (self._families.get(device),)
        for buckets in phases:
            if buckets:
                i = self._best(buckets, job, ex_workers, ex_operators)
                if i >= 0:
                    self._load[i] += 1
                    self._free_stake[i] -= job.collateral
                    self._last[i] = self.now
                    self._refresh(i)
                    return self._offers[i].address
        return None

    def _serve_reserved(self, job: JobDemand) -> str | None:
        """A job reserved for one worker: that worker if it can take it now (slots, stake,
        memory, device, exclusions), whatever the job pays; else nobody."""
        i = self._index.get(str(job.only_worker))
        if i is None:
            return None
        device = job.device.lower()
        if device == CPU:
            memory = self._host_memory
        elif self._offers[i].device.lower() == device:
            memory = self._accel_memory
        else:
            return None
        ex_workers = frozenset(a.lower() for a in job.exclude_workers)
        ex_operators = frozenset(a.lower() for a in job.exclude_operators)
        if not self._eligible(i, memory, replace(job, reward=_ANY_PRICE), ex_workers,
                              ex_operators):
            return None
        self._load[i] += 1
        self._free_stake[i] -= job.collateral
        self._last[i] = self.now
        self._refresh(i)
        return self._offers[i].address

    def _eligible(self, i: int, memory: list[int], job: JobDemand,
                  ex_workers: frozenset[str] | None, ex_operators: frozenset[str] | None) -> bool:
        if job.only_worker is not None and self._address[i] != job.only_worker:
            return False
        return (self._load[i] < self._slots[i]
                and self._free_stake[i] >= job.collateral
                and memory[i] >= job.memory_mb
                and self._price[i] <= job.reward
                and not (ex_workers and self._address[i] in ex_workers)
                and not (ex_operators and self._operator[i] in ex_operators))

    def _best(self, buckets: list[_Bucket], job: JobDemand, ex_workers: frozenset[str] | None,
              ex_operators: frozenset[str] | None) -> int:
        """Best-first search over the buckets; the index of the best eligible worker or -1.

        A node's bound is its best worker with enough free stake (a bisect of its front), so
        stake, slots and price never cause a wasted step; memory (only in power-of-two buckets)
        and exclusions can, and then the node's children are searched.
        """
        need_mem = job.memory_mb
        probe = (-job.collateral, math.inf)  # sorts after every entry with stake >= collateral
        heap: list[tuple[float, int, int, int]] = []
        push = heapq.heappush
        for b_index, bucket in enumerate(buckets):
            front, mem = bucket.front, bucket.mem
            root = front[1]
            if bucket.max_memory < need_mem or not root or root[0] > probe or mem[1] < need_mem:
                continue
            count = bisect_right(bucket.prices, job.reward)
            if not count:
                continue
            if count == len(bucket.prices):
                at = bisect_right(root, probe) - 1
                push(heap, (root[at][1], root[at][2], b_index, 1))
                continue
            lo = bucket.size
            hi = lo + count
            while lo < hi:  # canonical nodes covering leaves [0, count): a prefix, so the
                if hi & 1:  # left edge stays aligned and only the right edge adds nodes
                    hi -= 1
                    node_front = front[hi]
                    if node_front and mem[hi] >= need_mem:
                        at = bisect_right(node_front, probe) - 1
                        if at >= 0:
                            push(heap, (node_front[at][1], node_front[at][2], b_index, hi))
                lo //= 2
                hi //= 2
        pop = heapq.heappop
        while heap:
            _, i, b_index, node = pop(heap)
            bucket = buckets[b_index]
            if self._eligible(i, bucket.memory, job, ex_workers, ex_operators):
                return i
            if node >= bucket.size:
                continue
            front, mem = bucket.front, bucket.mem
            for child in (2 * node, 2 * node + 1):
                node_front = front[child]
                if node_front and mem[child] >= need_mem:
                    at = bisect_right(node_front, probe) - 1
                    if at >= 0:
                        push(heap, (node_front[at][1], node_front[at][2], b_index, child))
        return -1


def misfit(job_device: str, job_memory_mb: int, reward: int, *, device: str, memory_mb: int,
           gpu_memory_mb: int, price_wei: int) -> str | None:
    """Why a worker with this hardware and price can never take a job with these requirements
    (``"device"``, ``"memory"`` or ``"price"``, checked in that order), or None when it can
    (given free stake and a free slot, which change from round to round).

    The static part of the eligibility rules above, as :class:`MatchRound` applies them: a
    non-cpu job needs exactly its device and compares accelerator memory; a cpu job runs on
    any worker and compares host memory; ``price_wei <= reward``. Device names compare
    case-insensitively. For one job and one worker with ample free stake and slots, ``match``
    assigns the job exactly when this returns None."""
    job = job_device.lower()
    if job == CPU:
        have = memory_mb
    elif device.lower() == job:
        have = gpu_memory_mb
    else:
        return "device"
    if have < job_memory_mb:
        return "memory"
    if price_wei > reward:
        return "price"
    return None
