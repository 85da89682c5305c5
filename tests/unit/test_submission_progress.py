"""The client's view of a submission while it waits: each shard's phase from its on-chain state
and the market's lease, the workers' failure reasons deduplicated, and the diagnosis of shards
that will never run (pure functions), and ``Client.wait`` giving up on them with fakes for the
chain and the market (no anvil, no market)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from meshcompute.client import (
    NO_WORKER_FITS,
    PHASES,
    Client,
    FailureSummary,
    ShardNeeds,
    ShardProgress,
    Submission,
    SubmissionStatus,
    SubmissionStuck,
    capacity_misfit,
    diagnose_stuck,
    local_time,
    phase_counts,
    shard_phase,
    shard_progress,
    shards_text,
    submission_status,
    summarize_failures,
)
from meshcompute.core.job import ZERO_ADDRESS, ZERO_HASH, JobRecord, JobState
from meshcompute.core.lease import DEADLINE_MARGIN_S, MAX_FAILURES
from meshcompute.core.matching import JobDemand, WorkerOffer, match, misfit
from meshcompute.errors import JobFailed, ServiceUnavailable
from meshcompute.units import TOKEN
from meshcompute.wire.market_client import CapacityRow, JobView, WorkerCapacity

W = ["0x" + f"{n:02x}" * 20 for n in range(1, 6)]
PICKLED = "holds pickled example inputs; refused (torch.load would unpickle them)"
DEADLINE = 1_700_003_600
NOW = 1_700_000_000


def shard(index: int, state: JobState = JobState.POSTED, *, leased: str | None = None,
          failures: tuple[tuple[str, str], ...] = (), given_up: bool = False,
          note: str | None = None, deadline: int | None = DEADLINE) -> ShardProgress:
    return ShardProgress(index, 100 + index, state, leased_by=leased, failures=failures,
                         given_up=given_up, note=note, deadline=deadline)


def refused_by_all(index: int, reason: str = PICKLED) -> ShardProgress:
    return shard(index, failures=tuple((w, reason) for w in W[:MAX_FAILURES]), given_up=True)


# ---------------------------------------------------------------------- phases
def test_every_state_has_a_phase() -> None:
    expected = {
        JobState.NONE: "posted", JobState.POSTED: "posted", JobState.ASSIGNED: "leased",
        JobState.COMMITTED: "committed", JobState.AUDITED: "audited",
        JobState.AUDIT_FAILED: "audited", JobState.APPEALED: "audited",
        JobState.AUDIT_PASSED: "audited", JobState.DISPUTED: "audited",
        JobState.APPEAL_CONTESTED: "audited", JobState.DISPUTE_CONTESTED: "audited",
        JobState.VOID_PROPOSED: "audited",
        JobState.FAILURE_UPHELD: "audited", JobState.PASS_UPHELD: "audited",
        JobState.FAILURE_ESCALATED: "audited", JobState.PASS_ESCALATED: "audited",
        JobState.FINALIZED: "paid", JobState.REFUNDED: "refunded",
        JobState.SLASHED: "slashed",
    }
    assert {state: shard_phase(state) for state in JobState} == expected
    assert shard_phase(JobState.POSTED, leased=True) == "leased"  # the market's lease
    assert shard_phase(JobState.COMMITTED, leased=True) == "committed"  # the chain wins
    assert set(expected.values()) == set(PHASES)


def test_phase_counts_lists_every_phase_in_order() -> None:
    shards = [shard(0), shard(1, leased=W[0]), shard(2, JobState.ASSIGNED),
              shard(3, JobState.COMMITTED), shard(4, JobState.AUDIT_FAILED),
              shard(5, JobState.FINALIZED), shard(6, JobState.FINALIZED),
              shard(7, JobState.REFUNDED), shard(8, JobState.SLASHED)]
    counts = phase_counts(shards)
    assert list(counts) == list(PHASES)
    assert counts == {"posted": 1, "leased": 2, "committed": 1, "audited": 1, "paid": 2,
                      "refunded": 1, "slashed": 1}
    assert phase_counts([]) == dict.fromkeys(PHASES, 0)


# ---------------------------------------------------------------------- failures
def test_failures_are_deduplicated_with_counts() -> None:
    shards = [
        shard(0, failures=((W[0], PICKLED), (W[1], PICKLED))),
        shard(1, failures=((W[0].upper().replace("0X", "0x"), PICKLED + "  "),
                           (W[2], "out of memory"))),
        shard(2, failures=((W[1], PICKLED.replace("; ", ";\n  ")),)),
        shard(3, note="spec blob missing"),
        shard(4, JobState.COMMITTED),
    ]
    summary = summarize_failures(shards)
    assert summary == (
        FailureSummary(PICKLED, reports=4, workers=2, shards=(0, 1, 2)),
        FailureSummary("out of memory", reports=1, workers=1, shards=(1,)),
        FailureSummary("spec blob missing", reports=1, workers=0, shards=(3,)),
    )
    assert summary[2].to_json()["source"] == "market"
    assert summary[0].to_json() == {"reason": PICKLED, "reports": 4, "workers": 2,
                                    "shards": [0, 1, 2], "source": "worker"}
    assert summarize_failures([shard(0), shard(1)]) == ()


def test_shard_progress_reads_the_market_view() -> None:
    def view(**fields: Any) -> JobView:
        base = {"job_id": 7, "state": JobState.POSTED, "spec_sha256": "ab" * 32, "spec": None,
                "client": W[4], "worker": None, "output_sha256": None, "failure": None,
                "audited": False, "group": None}
        return JobView(**{**base, **fields})

    assert shard_progress(1, 7, JobState.POSTED, DEADLINE, None) == ShardProgress(
        1, 7, JobState.POSTED, deadline=DEADLINE)
    seen = shard_progress(1, 7, JobState.POSTED, DEADLINE, view(
        lease_holder=W[3], failure=f"{W[1]}: {PICKLED}",
        failures=((W[0], PICKLED), (W[1], PICKLED)), given_up=False))
    assert seen.phase == "leased" and seen.note is None  # the last report is not a note
    assert seen.failures == ((W[0], PICKLED), (W[1], PICKLED))
    # a spec problem is the market's note, next to the workers' reports
    noted = shard_progress(1, 7, JobState.POSTED, DEADLINE, view(
        failure="spec blob missing", failures=((W[0], PICKLED),), given_up=True))
    assert noted.note == "spec blob missing" and noted.given_up
    # a market without the ``failures`` field: its last "worker: reason" is one report
    legacy = shard_progress(1, 7, JobState.POSTED, DEADLINE, view(failure=f"{W[2]}: boom"))
    assert legacy.failures == ((W[2], "boom"),) and legacy.note is None


def test_market_json_round_trip_keeps_failures_and_given_up() -> None:
    data = {"job_id": 7, "state": "posted", "spec_sha256": "ab" * 32, "spec": None,
            "client": W[4], "worker": None, "output_sha256": None,
            "failure": f"{W[1]}: {PICKLED}", "audited": False, "group": None,
            "failures": [{"worker": W[0], "reason": PICKLED}, {"worker": W[1], "reason": PICKLED}],
            "given_up": False}
    view = JobView.from_json(data)
    assert view.failures == ((W[0], PICKLED), (W[1], PICKLED)) and not view.given_up
    old = JobView.from_json({k: v for k, v in data.items()
                             if k not in ("failures", "given_up")})
    assert old.failures == () and not old.given_up


# ---------------------------------------------------------------------- stuck
def test_not_stuck_while_a_posted_shard_may_still_be_taken() -> None:
    assert diagnose_stuck([]) is None
    assert diagnose_stuck([shard(0, JobState.FINALIZED), shard(1, leased=W[0])]) is None
    # two of the three workers the market allows refused: others may still take it
    two = shard(0, failures=((W[0], PICKLED), (W[1], PICKLED)))
    assert diagnose_stuck([two], chain_now=NOW) is None
    assert diagnose_stuck([refused_by_all(0), shard(1)], chain_now=NOW) is None


def test_stuck_when_every_worker_refused_for_the_same_reason() -> None:
    shards = [refused_by_all(i) for i in range(4)]
    stuck = diagnose_stuck(shards, chain_now=NOW, escrow_per_shard=11 * TOKEN // 10)
    assert stuck is not None
    assert stuck.cause == "refused" and stuck.same_reason and stuck.final
    assert stuck.shards == (0, 1, 2, 3) and stuck.job_ids == (100, 101, 102, 103)
    assert stuck.reasons == (FailureSummary(PICKLED, 12, MAX_FAILURES, (0, 1, 2, 3)),)
    assert stuck.deadline == DEADLINE and stuck.reclaimable  # posted: cancelled at once
    text = "\n".join(stuck.lines())
    assert "shards 0-3 (jobs 100, 101, 102, 103) will never run" in text
    assert "for the same reason" in text and PICKLED in text
    assert "Nothing more will happen" in text
    assert "comes back at once with `mesh job reclaim JOB` for each of jobs 100, 101, 102, " \
        "103: no worker holds them, so it is cancelled now" in text
    assert "(4.4 MESH)" in text
    data = stuck.to_json()
    assert data["reason"] == PICKLED and data["same_reason"] is True
    assert data["reclaim"] == [f"mesh job reclaim {j}" for j in (100, 101, 102, 103)]
    assert data["deadline"] == DEADLINE and data["deadline_local"] == local_time(DEADLINE)
    assert data["escrow"] == str(44 * TOKEN // 10) and data["in_progress"] == 0
    assert data["reclaimable_now"] is True and "will never run" in data["message"]
    assert PICKLED in stuck.summary() and "mesh job reclaim" in stuck.summary()


def test_a_market_count_without_the_flag_is_enough() -> None:
    counted = shard(0, failures=tuple((w, PICKLED) for w in W[:MAX_FAILURES]))
    assert diagnose_stuck([counted]) is not None


def test_stuck_with_different_reasons_and_shards_still_running() -> None:
    shards = [refused_by_all(0), refused_by_all(1, "out of memory"),
              shard(2, JobState.COMMITTED), shard(3, JobState.FINALIZED)]
    stuck = diagnose_stuck(shards, chain_now=NOW)
    assert stuck is not None and not stuck.same_reason
    assert stuck.in_progress == 1 and not stuck.final
    text = "\n".join(stuck.lines())
    assert f"after {MAX_FAILURES} workers failed each" in text
    assert "out of memory" in text and PICKLED in text
    assert "The other 1 shard in progress go on." in text


def test_stuck_near_or_past_the_deadline_can_be_cancelled_now() -> None:
    late = shard(0, deadline=NOW + DEADLINE_MARGIN_S)
    assert diagnose_stuck([late]) is None  # no chain time: cannot tell
    stuck = diagnose_stuck([late], chain_now=NOW)
    assert stuck is not None and stuck.cause == "deadline" and stuck.reclaimable
    past = diagnose_stuck([shard(0, deadline=NOW - 1)], chain_now=NOW)
    assert past is not None and past.reclaimable
    assert "comes back at once with `mesh job reclaim 100`: no worker holds it" in (
        past.summary())
    assert diagnose_stuck([shard(0, deadline=NOW + DEADLINE_MARGIN_S + 1)],
                          chain_now=NOW) is None


def test_shards_text() -> None:
    assert shards_text([3]) == "shard 3"
    assert shards_text([3, 0, 1, 2]) == "shards 0-3"
    assert shards_text([0, 2, 5, 6, 7]) == "shards 0, 2, 5-7"


# ---------------------------------------------------------------------- Client.wait
def _record(state: JobState, deadline: int = DEADLINE) -> JobRecord:
    return JobRecord(client=W[4], worker=ZERO_ADDRESS, auditor=ZERO_ADDRESS, reward=TOKEN,
                     audit_fee=TOKEN // 10, collateral=2 * TOKEN, deadline=deadline,
                     lease_expiry=0, committed_at=0, committed_block=0, resolved_at=0,
                     audit_bps=0, state=state, spec_hash=b"\x01" * 32, result_hash=ZERO_HASH)


class FakeMarket:
    def __init__(self, views: dict[int, dict[str, Any]],
                 capacity: WorkerCapacity | None = None) -> None:
        self.views = views
        self.asked: list[int] = []
        self.capacity = capacity
        self.capacity_reads = 0

    def worker_capacity(self) -> WorkerCapacity | None:
        self.capacity_reads += 1
        return self.capacity

    def job(self, job_id: int) -> JobView:
        self.asked.append(job_id)
        if job_id not in self.views:
            raise ServiceUnavailable("market at http://x cannot be reached")
        return JobView(job_id=job_id, state=JobState.POSTED, spec_sha256="ab" * 32, spec=None,
                       client=W[4], worker=None, output_sha256=None, audited=False, group=None,
                       **{"failure": None, **self.views[job_id]})


def fake_client(states: dict[int, JobState], views: dict[int, dict[str, Any]],
                capacity: WorkerCapacity | None = None) -> Client:
    client = Client.__new__(Client)
    contracts = SimpleNamespace(
        job_records=lambda ids: {i: _record(states[i]) for i in ids})
    eth = SimpleNamespace(get_block=lambda _tag: {"timestamp": NOW})
    client.connection = SimpleNamespace(contracts=contracts, w3=SimpleNamespace(eth=eth))
    client.market = FakeMarket(views, capacity)  # type: ignore[assignment]
    return client


def submission(job_ids: list[int]) -> Submission:
    from meshcompute.client import Shard
    from meshcompute.core.spec import JobSpec

    spec = JobSpec(program="aa" * 32, inputs="bb" * 32)
    return Submission(group=None, program="aa" * 32,
                      shards=[Shard(i, spec, j, [j]) for i, j in enumerate(job_ids)],
                      reward_per_shard=TOKEN, audit_fee_per_shard=TOKEN // 10,
                      collateral_per_shard=2 * TOKEN, audit_bps=0, deadline_s=3600)


def test_wait_gives_up_on_shards_every_worker_refused() -> None:
    refused = {"failures": tuple((w, PICKLED) for w in W[:MAX_FAILURES]), "given_up": True,
               "failure": f"{W[2]}: {PICKLED}"}
    client = fake_client({1: JobState.POSTED, 2: JobState.FINALIZED},
                         {1: refused})
    seen: list[SubmissionStatus] = []
    with pytest.raises(SubmissionStuck, match="shard 0 will never run") as caught:
        client.wait(submission([1, 2]), progress=seen.append, poll_s=0)
    assert isinstance(caught.value, JobFailed)
    assert client.market.asked == [1]  # a paid shard is not asked about
    (status,) = seen
    assert status is caught.value.status and status.phase == "stuck"
    assert status.phases == {"posted": 1, "leased": 0, "committed": 0, "audited": 0,
                             "paid": 1, "refunded": 0, "slashed": 0}
    assert status.failures == (FailureSummary(PICKLED, MAX_FAILURES, MAX_FAILURES, (0,)),)
    assert status.stuck is not None and status.stuck.escrow == TOKEN + TOKEN // 10
    assert status.to_json()["stuck"]["job_ids"] == [1]
    assert status.deadline == DEADLINE


def test_wait_goes_on_while_other_workers_may_take_it_and_says_why_on_timeout() -> None:
    one = {"failures": ((W[0], PICKLED),), "failure": f"{W[0]}: {PICKLED}"}
    client = fake_client({1: JobState.POSTED, 2: JobState.POSTED}, {1: one})  # 2: unreachable
    seen: list[SubmissionStatus] = []
    with pytest.raises(JobFailed, match=r"timed out .* posted 2 \(worker failures: 1 worker, "
                                        r"shard 0: holds pickled") as caught:
        client.wait(submission([1, 2]), progress=seen.append, timeout_s=0, poll_s=0)
    assert not isinstance(caught.value, SubmissionStuck)
    assert seen[-1].phase == "running" and seen[-1].stuck is None


def test_status_reads_only_the_chain_when_asked() -> None:
    client = fake_client({1: JobState.POSTED, 2: JobState.COMMITTED}, {})
    status = client.status(submission([1, 2]), market=False)
    assert client.market.asked == []
    assert status.counts == {"posted": 1, "committed": 1}
    assert status.phases["posted"] == 1 and status.phases["committed"] == 1


# ---------------------------------------------------------------------- no worker fits
CPU_ROW = CapacityRow("cpu", 8192, 0, TOKEN // 2, 3)
CUDA_ROW = CapacityRow("cuda", 65536, 24576, 2 * TOKEN, 1)
GPU_NEEDS = ShardNeeds("cuda", 40960, TOKEN)


def capacity(*rows: CapacityRow, truncated: bool = False) -> WorkerCapacity:
    return WorkerCapacity(sum(r.workers for r in rows), rows, truncated)


def test_misfit_agrees_with_matching_on_every_combination() -> None:
    """The predicate the diagnosis uses gives the same answer as a matching round of one job
    and one worker with stake and slots to spare."""
    workers = [(d, m, g, p) for d in ("cpu", "cuda", "CUDA", "rocm") for m in (0, 4096, 8192)
               for g in (0, 4096, 16384) for p in (0, 5, 10)]
    jobs = [(d, m, r) for d in ("cpu", "cuda", "Cuda") for m in (0, 4096, 8192, 16384)
            for r in (0, 5, 9)]
    for device, memory, gpu_memory, price in workers:
        offer = WorkerOffer(address=W[0], operator=W[0], device=device, memory_mb=memory,
                            gpu_memory_mb=gpu_memory, free_stake=10**30, price_wei=price,
                            slots=4, load=0, completed=0, missed=0, slashed=0,
                            last_assigned_at=0.0)
        for job_device, job_memory, reward in jobs:
            demand = JobDemand(job_id=1, device=job_device, memory_mb=job_memory, collateral=1,
                               reward=reward, posted_at=0.0)
            matched = bool(match([demand], [offer], now=1.0))
            why = misfit(job_device, job_memory, reward, device=device, memory_mb=memory,
                         gpu_memory_mb=gpu_memory, price_wei=price)
            assert (why is None) == matched, (offer, demand, why)


def test_capacity_misfit_names_what_is_missing() -> None:
    assert capacity_misfit(GPU_NEEDS, capacity(CPU_ROW)) == (
        "no live worker has device cuda; 3 live workers: 3 cpu")
    assert capacity_misfit(GPU_NEEDS, capacity(CPU_ROW, CUDA_ROW)) == (
        "no live worker with device cuda has 40960 MB of GPU memory (the most is 24576 MB); "
        "4 live workers: 3 cpu, 1 cuda")
    assert capacity_misfit(ShardNeeds("cpu", 4096, TOKEN // 4), capacity(CPU_ROW)) == (
        "every live worker that fits the device and memory asks more than the reward of "
        "0.25 MESH per shard (the cheapest asks 0.5 MESH); 3 live workers: 3 cpu")
    assert capacity_misfit(ShardNeeds("cpu", 16384, TOKEN), capacity(CPU_ROW)) == (
        "no live worker has 16384 MB of memory (the most is 8192 MB); 3 live workers: 3 cpu")
    assert capacity_misfit(GPU_NEEDS, WorkerCapacity(0, ())) == (
        "no worker is live at the market (registered and heartbeating)")


def test_capacity_misfit_is_silent_when_a_row_fits_or_the_read_is_partial() -> None:
    assert capacity_misfit(ShardNeeds("cpu", 4096, TOKEN), capacity(CPU_ROW)) is None
    spill = ShardNeeds("cpu", 16384, 2 * TOKEN)  # a cpu job may run on an accelerator worker
    assert capacity_misfit(spill, capacity(CPU_ROW, CUDA_ROW)) is None
    assert capacity_misfit(GPU_NEEDS, capacity(CPU_ROW, truncated=True)) is None


def test_no_worker_fits_is_shown_but_not_permanent() -> None:
    shards = [shard(0), shard(1), shard(2, JobState.FINALIZED)]
    needs = {0: GPU_NEEDS, 1: GPU_NEEDS, 2: GPU_NEEDS}
    stuck = diagnose_stuck(shards, chain_now=NOW, escrow_per_shard=TOKEN,
                           capacity=capacity(CPU_ROW), needs=needs)
    assert stuck is not None and stuck.cause == NO_WORKER_FITS
    assert not stuck.permanent and not stuck.final and stuck.in_progress == 0
    assert stuck.shards == (0, 1) and stuck.job_ids == (100, 101) and stuck.escrow == 2 * TOKEN
    assert stuck.detail == "no live worker has device cuda; 3 live workers: 3 cpu"
    assert stuck.lines()[0] == ("no live worker can take shards 0-1 (jobs 100, 101) now: "
                                "no live worker has device cuda; 3 live workers: 3 cpu.")
    assert "still waiting" in stuck.summary()
    data = stuck.to_json()
    assert data["cause"] == NO_WORKER_FITS and data["permanent"] is False
    status = submission_status(shards, chain_now=NOW, capacity=capacity(CPU_ROW), needs=needs)
    assert status.phase == "running" and status.stuck is not None
    assert status.stuck.cause == NO_WORKER_FITS and status.stuck.detail == stuck.detail


def test_no_worker_fits_needs_a_capacity_read_and_every_posted_shard_unfit() -> None:
    shards = [shard(0), shard(1)]
    unfit = {0: GPU_NEEDS, 1: GPU_NEEDS}
    assert diagnose_stuck(shards, chain_now=NOW, needs=unfit) is None  # no read (404): silent
    mixed = {0: GPU_NEEDS, 1: ShardNeeds("cpu", 1024, TOKEN)}
    assert diagnose_stuck(shards, chain_now=NOW, capacity=capacity(CPU_ROW), needs=mixed) is None
    leased = [shard(0), shard(1, leased=W[0])]  # only posted shards count
    assert diagnose_stuck(leased, chain_now=NOW, capacity=capacity(CPU_ROW),
                          needs=mixed) is not None


def test_the_permanent_causes_come_first() -> None:
    shards = [refused_by_all(0)]
    stuck = diagnose_stuck(shards, chain_now=NOW, capacity=WorkerCapacity(0, ()),
                           needs={0: GPU_NEEDS})
    assert stuck is not None and stuck.cause == "refused" and stuck.final


def gpu_submission(job_ids: list[int]) -> Submission:
    from dataclasses import replace

    plain = submission(job_ids)
    for s in plain.shards:
        s.spec = replace(s.spec, device="cuda", memory_limit_mb=40960)
    return plain


def test_wait_shows_no_worker_fits_and_keeps_waiting() -> None:
    client = fake_client({1: JobState.POSTED, 2: JobState.POSTED}, {1: {}, 2: {}},
                         capacity=capacity(CPU_ROW))
    seen: list[SubmissionStatus] = []
    with pytest.raises(JobFailed, match="timed out") as caught:
        client.wait(gpu_submission([1, 2]), progress=seen.append, timeout_s=0, poll_s=0)
    assert not isinstance(caught.value, SubmissionStuck)
    (status,) = seen
    assert status.phase == "running" and status.stuck is not None
    assert status.stuck.cause == NO_WORKER_FITS and "device cuda" in status.stuck.detail


def test_wait_without_the_capacity_route_says_nothing_of_it() -> None:
    client = fake_client({1: JobState.POSTED}, {1: {}}, capacity=None)
    seen: list[SubmissionStatus] = []
    with pytest.raises(JobFailed, match="timed out"):
        client.wait(gpu_submission([1]), progress=seen.append, timeout_s=0, poll_s=0)
    assert seen[-1].stuck is None and client.market.capacity_reads == 1
