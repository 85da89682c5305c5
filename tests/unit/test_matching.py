"""Matching in the pure core: each rule, the ranking, properties, and a brute-force reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcompute.core.matching import (
    Assignment,
    JobDemand,
    MatchRound,
    WorkerOffer,
    match,
    reference_price,
    serving_order,
    worker_score,
)
from meshcompute.errors import BadInput
from meshcompute.mesh.bench.match import NOW as BENCH_NOW
from meshcompute.mesh.bench.match import run_match_bench, synthetic_market

NOW = 10_000.0


def offer(n: int, **kw) -> WorkerOffer:
    base = {"address": f"0x{n:040x}", "operator": f"op{n}", "device": "cpu", "memory_mb": 8192,
            "gpu_memory_mb": 0, "free_stake": 1000, "price_wei": 10, "slots": 1, "load": 0,
            "completed": 10, "missed": 0, "slashed": 0, "last_assigned_at": 0.0}
    base.update(kw)
    return WorkerOffer(**base)


def demand(n: int, **kw) -> JobDemand:
    base = {"job_id": n, "device": "cpu", "memory_mb": 1024, "collateral": 100, "reward": 100,
            "posted_at": float(n)}
    base.update(kw)
    return JobDemand(**base)


def assigned(jobs: Sequence[JobDemand], workers: Sequence[WorkerOffer]) -> dict[int, str]:
    return {a.job_id: a.worker for a in match(jobs, workers, NOW)}


# --- a brute-force reference: the rules written out plainly, scanning every worker per job ---

class State:
    """Per-worker load, free stake and last assignment, advanced as assignments happen."""

    def __init__(self, workers: Sequence[WorkerOffer], now: float = NOW) -> None:
        self.now = now
        self.load = {w.address: w.load for w in workers}
        self.stake = {w.address: w.free_stake for w in workers}
        self.last = {w.address: float(w.last_assigned_at) for w in workers}

    def take(self, worker: WorkerOffer, job: JobDemand) -> None:
        self.load[worker.address] += 1
        self.stake[worker.address] -= job.collateral
        self.last[worker.address] = self.now


def violations(job: JobDemand, w: WorkerOffer, state: State) -> list[str]:
    """Every rule ``w`` breaks for ``job`` given the round's state (empty: eligible)."""
    broken = []
    if job.device != "cpu" and w.device != job.device:
        broken.append("device")
    memory = w.memory_mb if job.device == "cpu" else w.gpu_memory_mb
    if memory < job.memory_mb:
        broken.append("memory")
    if state.stake[w.address] < job.collateral:
        broken.append("stake")
    if state.load[w.address] >= w.slots:
        broken.append("slots")
    if w.address.lower() in {a.lower() for a in job.exclude_workers}:
        broken.append("excluded worker")
    if w.operator.lower() in {o.lower() for o in job.exclude_operators}:
        broken.append("excluded operator")
    if w.price_wei > job.reward:
        broken.append("price")
    return broken


def reference_match(jobs: Sequence[JobDemand], workers: Sequence[WorkerOffer],
                    now: float = NOW) -> list[Assignment]:
    offers = sorted(workers, key=lambda w: w.address.lower())
    ref = reference_price(offers)
    state = State(offers, now)
    out = []
    for job in serving_order(jobs):
        if job.device == "cpu":
            tiers = [[w for w in offers if w.device == "cpu"], [w for w in offers if w.device != "cpu"]]
        else:
            tiers = [[w for w in offers if w.device == job.device]]
        rank = {w.address: r for r, w in enumerate(offers)}
        for tier in tiers:
            ranked = [(worker_score(w, load=state.load[w.address],
                                    last_assigned_at=state.last[w.address], now=now,
                                    ref_price=ref), -rank[w.address], w)
                      for w in tier if not violations(job, w, state)]
            if ranked:
                best = max(ranked, key=lambda r: (r[0], r[1]))[2]
                state.take(best, job)
                out.append(Assignment(job.job_id, best.address))
                break
    return out


# --- each rule ---

def test_cuda_job_needs_cuda_worker() -> None:
    cpu = offer(1, memory_mb=1 << 20)
    assert assigned([demand(1, device="cuda", memory_mb=10)], [cpu]) == {}
    gpu = offer(2, device="cuda", gpu_memory_mb=16_384)
    assert assigned([demand(1, device="cuda", memory_mb=10)], [cpu, gpu]) == {1: gpu.address}


def test_cpu_job_prefers_cpu_worker_even_over_a_better_gpu_worker() -> None:
    cpu = offer(1, price_wei=90, missed=50, last_assigned_at=NOW)
    gpu = offer(2, device="cuda", gpu_memory_mb=16_384, price_wei=0)
    assert assigned([demand(1)], [cpu, gpu]) == {1: cpu.address}


def test_cpu_job_spills_to_gpu_worker_when_no_cpu_worker_fits() -> None:
    cpu = offer(1, memory_mb=512)
    gpu = offer(2, device="cuda", memory_mb=4096, gpu_memory_mb=80)
    assert assigned([demand(1, memory_mb=2048)], [cpu, gpu]) == {1: gpu.address}


def test_cuda_job_compares_gpu_memory_cpu_job_host_memory() -> None:
    gpu = offer(1, device="cuda", memory_mb=1 << 20, gpu_memory_mb=8192)
    assert assigned([demand(1, device="cuda", memory_mb=16_384)], [gpu]) == {}
    assert assigned([demand(1, device="cuda", memory_mb=8192)], [gpu]) == {1: gpu.address}
    small_host = offer(2, device="cuda", memory_mb=1024, gpu_memory_mb=1 << 20)
    assert assigned([demand(1, memory_mb=2048)], [small_host]) == {}


def test_memory_boundary_within_one_class() -> None:
    # 20000 and 30000 share a power-of-two class; only the exact comparison separates them
    small, big = offer(1, memory_mb=20_000, completed=99), offer(2, memory_mb=30_000)
    assert assigned([demand(1, memory_mb=25_000)], [small, big]) == {1: big.address}


def test_collateral_of_earlier_assignments_counts_against_free_stake() -> None:
    w = offer(1, free_stake=100, slots=5)
    jobs = [demand(1, collateral=60), demand(2, collateral=60), demand(3, collateral=40)]
    assert assigned(jobs, [w]) == {1: w.address, 3: w.address}


def test_free_slots_count_current_load_and_this_round() -> None:
    w = offer(1, slots=3, load=1)
    assert sorted(assigned([demand(i) for i in range(5)], [w])) == [0, 1]
    assert assigned([demand(1)], [offer(2, slots=0)]) == {}
    assert assigned([demand(1)], [offer(3, slots=2, load=5)]) == {}


def test_excluded_worker_and_operator_never_get_the_job() -> None:
    producer = offer(1, operator="acme", completed=1000)
    sibling = offer(2, operator="ACME", completed=1000)
    other = offer(3, operator="other", missed=5, price_wei=99)
    audit = demand(1, exclude_workers=frozenset({producer.address.upper()}),
                   exclude_operators=frozenset({"acme"}))
    assert assigned([audit], [producer, sibling, other]) == {1: other.address}
    assert assigned([audit], [producer, sibling]) == {}
    only_worker = demand(2, exclude_workers=frozenset({producer.address}))
    assert assigned([only_worker], [producer, sibling]) == {2: sibling.address}


def test_price_above_reward_is_not_eligible() -> None:
    w = offer(1, price_wei=101)
    assert assigned([demand(1, reward=100)], [w]) == {}
    assert assigned([demand(1, reward=101)], [w]) == {1: w.address}


def test_oldest_job_is_served_first_then_lower_job_id() -> None:
    w = offer(1)
    jobs = [demand(5, posted_at=3.0), demand(9, posted_at=1.0), demand(2, posted_at=1.0)]
    assert match(jobs, [w], NOW) == [Assignment(2, w.address)]


# --- ranking ---

def test_slashed_worker_ranks_below_every_clean_one_but_still_gets_work() -> None:
    slashed = offer(1, slashed=1, completed=10_000, price_wei=0)
    poor = offer(2, missed=30, completed=0, price_wei=100, last_assigned_at=NOW)
    assert assigned([demand(1)], [slashed, poor]) == {1: poor.address}
    assert assigned([demand(1), demand(2)], [slashed, poor]) == {1: poor.address, 2: slashed.address}
    twice = offer(3, slashed=2)
    assert assigned([demand(1)], [slashed, twice]) == {1: slashed.address}


@pytest.mark.parametrize(("better", "worse"), [
    ({"missed": 0}, {"missed": 5}),                    # reliability
    ({"price_wei": 5}, {"price_wei": 50}),             # price
    ({"load": 1}, {"load": 3}),                        # current load
    ({"last_assigned_at": NOW - 500}, {"last_assigned_at": NOW - 10}),  # idle time
])
def test_each_score_term_prefers_the_better_worker(better: dict, worse: dict) -> None:
    a, b = offer(2, slots=4, **better), offer(1, slots=4, **worse)  # b has the lower address
    assert assigned([demand(1)], [a, b, offer(3, price_wei=1000)]) == {1: a.address}


def test_new_worker_gets_work_next_to_a_busy_veteran() -> None:
    veteran = offer(1, completed=10_000, slots=8, load=4, last_assigned_at=NOW - 5)
    newcomer = offer(2, completed=0, slots=8)
    assert newcomer.address in assigned([demand(1)], [veteran, newcomer]).values()


def test_equal_workers_get_one_job_each_before_anyone_gets_two() -> None:
    workers = [offer(i, slots=3, last_assigned_at=NOW) for i in range(7)]
    result = match([demand(i) for i in range(14)], workers, NOW)
    counts = {w.address: 0 for w in workers}
    for a in result:
        counts[a.worker] += 1
    assert set(counts.values()) == {2}
    first_seven = [a.worker for a in result[:7]]
    assert sorted(first_seven) == sorted(w.address for w in workers)


def test_ties_go_to_the_lower_address_case_insensitively() -> None:
    workers = [offer(5, address="0x00000000000000000000000000000000000000Bb"),
               offer(6, address="0x00000000000000000000000000000000000000aC"),
               offer(7, address="0x00000000000000000000000000000000000000b0")]
    assert assigned([demand(1)], workers) == {1: workers[1].address}
    order = [a.worker for a in match([demand(i) for i in range(3)], workers, NOW)]
    assert order == [workers[1].address, workers[2].address, workers[0].address]


def test_score_tiers_and_range() -> None:
    fresh = offer(1)
    s0 = worker_score(fresh, load=0, last_assigned_at=0.0, now=NOW, ref_price=10)
    s1 = worker_score(replace(fresh, slashed=1, completed=10**9), load=0, last_assigned_at=0.0,
                      now=NOW, ref_price=10)
    assert 0.0 < s0 <= 1.0
    assert s1 < 0.0
    assert worker_score(fresh, load=0, last_assigned_at=NOW + 50, now=NOW, ref_price=0) >= 0.0


# --- determinism and input handling ---

def test_result_does_not_depend_on_input_order() -> None:
    rng = random.Random(7)
    workers, jobs = random_market(rng, 60, 200)
    expected = match(jobs, workers, NOW)
    for _ in range(3):
        rng.shuffle(workers)
        rng.shuffle(jobs)
        assert match(jobs, workers, NOW) == expected


def test_empty_inputs() -> None:
    assert match([], [], NOW) == []
    assert match([demand(1)], [], NOW) == []
    assert match([], [offer(1)], NOW) == []


def test_bad_input_is_refused_with_the_field_named() -> None:
    with pytest.raises(BadInput, match="duplicate worker address"):
        match([], [offer(1), offer(1, operator="x")], NOW)
    with pytest.raises(BadInput, match="duplicate job_id"):
        match([demand(1), demand(1, posted_at=5.0)], [offer(1)], NOW)
    with pytest.raises(BadInput, match="memory_mb"):
        offer(1, memory_mb=-1)
    with pytest.raises(BadInput, match="slots"):
        offer(1, slots=1.5)
    with pytest.raises(BadInput, match="address"):
        offer(1, address="")
    with pytest.raises(BadInput, match="posted_at"):
        demand(1, posted_at=float("nan"))
    with pytest.raises(BadInput, match="exclude_workers"):
        demand(1, exclude_workers="0xabc")
    with pytest.raises(BadInput, match="now"):
        match([], [offer(1)], float("inf"))
    round_ = MatchRound([offer(1, slots=2)], NOW)
    round_.serve(demand(1))
    with pytest.raises(BadInput, match="already served"):
        round_.serve(demand(1))


def test_exclusion_sets_are_normalised_to_frozensets() -> None:
    job = demand(1, exclude_workers={"0xA"}, exclude_operators=["op"])
    assert job.exclude_workers == frozenset({"0xA"})
    assert isinstance(job.exclude_operators, frozenset)
    hash(job)


# --- properties and the reference ---

ADDRESSES = [f"0x{n:040x}" for n in range(40)]
MEMORY = [0, 512, 1000, 1024, 1500, 2048, 3000, 4096, 8192]
NEEDS = [0, 0, 512, 1000, 1024, 1500, 2048, 4096]

workers_st = st.lists(
    st.builds(
        WorkerOffer,
        address=st.sampled_from(ADDRESSES),
        operator=st.sampled_from(["op-a", "op-b", "op-c", "OP-A"]),
        device=st.sampled_from(["cpu", "cpu", "cuda"]),
        memory_mb=st.sampled_from(MEMORY[1:]),
        gpu_memory_mb=st.sampled_from(MEMORY),
        free_stake=st.integers(0, 150),
        price_wei=st.integers(0, 10),
        slots=st.integers(0, 4),
        load=st.sampled_from([0, 0, 1, 2, 4]),
        completed=st.integers(0, 6),
        missed=st.integers(0, 6),
        slashed=st.integers(0, 2),
        last_assigned_at=st.sampled_from([0.0, NOW - 900, NOW - 300, NOW - 60, NOW, NOW + 5]),
    ),
    min_size=2, max_size=30, unique_by=lambda w: w.address,
)
jobs_st = st.lists(
    st.builds(
        JobDemand,
        job_id=st.integers(0, 10_000),
        device=st.sampled_from(["cpu", "cpu", "cuda"]),
        memory_mb=st.sampled_from(NEEDS),
        collateral=st.integers(0, 60),
        reward=st.integers(0, 12),
        posted_at=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
        exclude_workers=st.one_of(st.just(frozenset()),
                                  st.frozensets(st.sampled_from(ADDRESSES[:12]), max_size=3)),
        exclude_operators=st.one_of(st.just(frozenset()),
                                    st.frozensets(st.sampled_from(["op-a", "op-b"]), max_size=1)),
    ),
    min_size=3, max_size=40, unique_by=lambda j: j.job_id,
)
property_settings = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.property
@property_settings
@given(workers_st, jobs_st)
def test_every_assignment_obeys_the_rules_and_the_round_is_maximal(workers, jobs) -> None:
    result = match(jobs, workers, NOW)
    by_job = {a.job_id: a.worker for a in result}
    assert len(by_job) == len(result), "a job assigned twice"
    offers = {w.address: w for w in workers}
    state = State(workers)
    for job in serving_order(jobs):
        eligible = [w for w in workers if not violations(job, w, state)]
        if job.job_id in by_job:
            worker = offers[by_job[job.job_id]]
            assert not violations(job, worker, state), (job, worker)
            state.take(worker, job)
        else:
            assert not eligible, f"job {job.job_id} left unassigned though {eligible[0]} fits"
    for w in workers:
        assert state.load[w.address] <= max(w.slots, w.load)
        assert state.stake[w.address] >= 0
        if state.load[w.address] > w.load:
            assert state.load[w.address] <= w.slots


@pytest.mark.property
@property_settings
@given(workers_st, jobs_st)
def test_fast_matcher_equals_brute_force_reference(workers, jobs) -> None:
    assert match(jobs, workers, NOW) == reference_match(jobs, workers)


@pytest.mark.property
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 4), st.integers(1, 3),
       st.sampled_from([0.0, NOW - 100, NOW]))
def test_n_equal_workers_and_n_jobs_get_one_each(n, slots, load_gap, last) -> None:
    workers = [offer(i, slots=slots + load_gap, load=load_gap, last_assigned_at=last)
               for i in range(n)]
    result = match([demand(i, posted_at=0.0) for i in range(n)], workers, NOW)
    assert sorted(a.worker for a in result) == sorted(w.address for w in workers)


templates_st = st.lists(
    st.fixed_dictionaries({
        "device": st.sampled_from(["cpu", "cuda"]),
        "memory_mb": st.sampled_from([1024, 4096]),
        "gpu_memory_mb": st.sampled_from([0, 4096]),
        "free_stake": st.sampled_from([50, 200]),
        "price_wei": st.sampled_from([1, 5]),
        "slots": st.integers(1, 3),
        "completed": st.sampled_from([0, 9]),
        "last_assigned_at": st.sampled_from([0.0, NOW]),
    }),
    min_size=1, max_size=3,
)


@pytest.mark.property
@property_settings
@given(templates_st, st.lists(st.integers(0, 2), min_size=1, max_size=30),
       st.lists(st.tuples(st.sampled_from(["cpu", "cuda"]), st.sampled_from([0, 2048]),
                          st.sampled_from([0, 40, 150]), st.sampled_from([0.0, 1.0])),
                max_size=40),
       st.randoms(use_true_random=False))
def test_many_ties_fast_matcher_equals_reference(templates, picks, job_shapes, rng) -> None:
    """Workers cloned from a few templates: exact score ties everywhere, so tie-breaks matter."""
    addresses = rng.sample(ADDRESSES, len(picks))
    workers = [offer(0, address=a, operator=f"op{k % 2}", **templates[p % len(templates)])
               for k, (a, p) in enumerate(zip(addresses, picks, strict=True))]
    jobs = [demand(n, device=d, memory_mb=m, collateral=c, posted_at=t)
            for n, (d, m, c, t) in enumerate(job_shapes)]
    assert match(jobs, workers, NOW) == reference_match(jobs, workers)


def random_market(rng: random.Random, n_workers: int, n_jobs: int):
    workers = [offer(i, operator=f"op{rng.randrange(n_workers // 4 + 1)}",
                     device="cuda" if rng.random() < 0.2 else "cpu",
                     memory_mb=rng.choice([2048, 4096, 6000, 8192, 16_384]),
                     gpu_memory_mb=rng.choice([0, 8192, 12_000, 24_576]),
                     free_stake=rng.randrange(0, 2000), price_wei=rng.randrange(0, 50),
                     slots=rng.randrange(0, 5), load=rng.randrange(0, 3),
                     completed=rng.randrange(0, 50), missed=rng.randrange(0, 5),
                     slashed=int(rng.random() < 0.05),
                     last_assigned_at=NOW - rng.uniform(0, 1200))
               for i in range(n_workers)]
    jobs = []
    for j in range(n_jobs):
        producer = rng.choice(workers)
        audit = rng.random() < 0.1
        jobs.append(demand(j, device="cuda" if rng.random() < 0.2 else "cpu",
                           memory_mb=rng.choice([0, 2048, 5000, 8192, 12_000, 20_000]),
                           collateral=rng.randrange(0, 800), reward=rng.randrange(0, 60),
                           posted_at=float(rng.randrange(0, 100)),
                           exclude_workers=frozenset({producer.address}) if audit else frozenset(),
                           exclude_operators=frozenset({producer.operator}) if audit else frozenset()))
    return workers, jobs


@pytest.mark.property
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 60), st.integers(1, 200))
def test_fast_matcher_equals_reference_on_dense_random_markets(seed, n_workers, n_jobs) -> None:
    workers, jobs = random_market(random.Random(seed), n_workers, n_jobs)
    assert match(jobs, workers, NOW) == reference_match(jobs, workers)


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_fast_matcher_equals_reference_on_a_larger_market(seed: int) -> None:
    workers, jobs = random_market(random.Random(seed), 300, 800)
    result = match(jobs, workers, NOW)
    assert len(result) > 100  # the market is not trivially empty
    assert result == reference_match(jobs, workers)


@pytest.mark.parametrize("scenario", ["realistic", "adversarial"])
def test_fast_matcher_equals_reference_on_the_benchmark_markets(scenario: str) -> None:
    # adversarial: arbitrary memory sizes (power-of-two buckets) and a big excluded operator
    workers, jobs = synthetic_market(250, 1200, seed=5, scenario=scenario)
    result = match(jobs, workers, BENCH_NOW)
    assert len(result) > 100
    assert result == reference_match(jobs, workers, BENCH_NOW)


def test_match_benchmark_reports_consistent_figures() -> None:
    figures = run_match_bench(workers=200, jobs=2000, seed=1)
    assert figures["workers"] == 200
    assert figures["jobs"] == 2000
    assert figures["assignments"] + figures["unassigned_jobs"] == 2000
    assert 0 < figures["assignments"] <= figures["free_slots_at_start"]
    assert 0 < figures["median_ms_per_assignment"] <= figures["p95_ms_per_assignment"]
    assert "median" in figures["method"]
    with pytest.raises(BadInput, match="scenario"):
        run_match_bench(workers=5, jobs=5, scenario="easy")


# --- a job reserved on chain for one worker (postJobsFor) ---

def test_a_reserved_job_goes_to_its_worker_alone_at_any_price():
    """Paying a worker for work it already did: the reserved worker gets the job even priced
    above its reward and ranked below the others; nobody else gets it, even when it cannot."""
    workers = [offer(1), offer(2), offer(3, price_wei=500, completed=0)]
    reserved = demand(1, reward=100, only_worker=f"0x{3:040X}")
    assert assigned([reserved, demand(2)], workers)[1] == f"0x{3:040x}"
    busy = [offer(1), offer(2), offer(3, load=1)]
    assert 1 not in assigned([reserved], busy)


def test_reserved_jobs_share_a_batch_only_with_jobs_reserved_for_the_same_worker():
    from meshcompute.core.batching import QueuedJob, plan_batches

    def queued(n: int, only: str | None) -> QueuedJob:
        return QueuedJob(demand=demand(n, only_worker=only), client="0xc", program="p")

    batches = plan_batches([queued(1, None), queued(2, "0xaa"), queued(3, "0xaa"),
                            queued(4, "0xbb")], max_batch=8)
    groups = sorted(sorted(b.job_ids) for b in batches)
    assert groups == [[1], [2, 3], [4]]
    assert {b.demand.only_worker for b in batches} == {None, "0xaa", "0xbb"}
