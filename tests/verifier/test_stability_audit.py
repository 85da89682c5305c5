"""The audit's stability checks on real programs in the real sandboxed runner: an honest worker
is never failed for rounding, a cheater on a stable program still is, and a program that a
one-ulp change of its inputs moves beyond its tolerance, or an argmax decided by near-ties,
is void (NotReproducible), never a fail.

Recomputations are shared across the tests of this module (one sandboxed run per setup,
program and inputs: the same setup gives the same bytes), so each test costs a few seconds."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from meshcompute.core.job import JobRecord, JobState
from meshcompute.core.spec import JobSpec
from meshcompute.core.tolerance import evidence_hash
from meshcompute.errors import NotFound
from meshcompute.execution.perturb import perturb_inputs
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import JobRunner
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.verifier.audit import Auditor, NotReproducible
from meshcompute.verifier.journal import Journal
from meshcompute.verifier.outputs import compare_outputs
from meshcompute.verifier.recompute import Recomputer

EXACT = {"kind": "exact"}
ARGMAX = {"kind": "argmax", "min_agreement": 1.0}


class Store:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def get_blob(self, sha256: str, *, verify: bool = True) -> bytes:
        if sha256 not in self.blobs:
            raise NotFound(sha256)
        return self.blobs[sha256]

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = bytes(data)
        return sha


class Shared:
    """A recomputation run once per (program, inputs), counting the real runs."""

    def __init__(self, recompute: Recomputer) -> None:
        self.recompute = recompute
        self.done: dict[tuple[str, str], bytes] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def prefetch(self, program: bytes, inputs: list[bytes]) -> None:
        """Run ``inputs`` of one program in one process of the recomputer's own runner (the
        bytes a call would give, one process start for several)."""
        outcomes = self.recompute._runner("cpu").run_batch(
            program, inputs, time_limit_s=120, memory_limit_mb=2048,
            max_output_bytes=1 << 26, reuse_key="0x" + "00" * 20)
        with self.lock:
            for data, outcome in zip(inputs, outcomes, strict=True):
                assert outcome.ok and outcome.output is not None, outcome.reason
                self.done[(hashlib.sha256(program).hexdigest(),
                           hashlib.sha256(data).hexdigest())] = outcome.output

    def __call__(self, spec: JobSpec, program: bytes, inputs: bytes, *,
                 client: str | None = None) -> bytes:
        key = (hashlib.sha256(program).hexdigest(), hashlib.sha256(inputs).hexdigest())
        self.calls.append(key[1])
        with self.lock:
            if key not in self.done:
                self.done[key] = self.recompute(spec, program, inputs)
            return self.done[key]


class FracScaled(nn.Module):
    """frac(65536 x): exact in every setup (a power-of-two scale, then frac), but a one-ulp
    change of x moves the output by ~1e-2 of its magnitude."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.frac(x * 65536.0)


class TiedHead(nn.Module):
    """Classes 0 and 1 have identical weights: every row is an exact tie between them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.head = nn.Linear(16, 6)
        with torch.no_grad():
            self.head.weight[1] = self.head.weight[0]
            self.head.bias[0] = self.head.bias[1] = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@pytest.fixture(scope="module")
def recomputers(tmp_path_factory, jobs) -> Iterator[tuple[Shared, Shared]]:
    """Our two setups, with every run the tests need done up front, two at a time."""
    scratch = tmp_path_factory.mktemp("stability-audit")
    first = Recomputer(threads=1, scratch_root=scratch, allow_unsandboxed=True, warm=False)
    alternate = first.alternate_setup()
    shared = Shared(first), Shared(alternate)
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(shared[0].prefetch, program, [inputs, perturb_inputs(inputs)])
                    for program, inputs, _ in jobs.values()]
            runs += [pool.submit(shared[1].prefetch, program, [inputs])
                     for program, inputs, _ in jobs.values()]
            for run in runs:
                run.result()
        yield shared
    finally:
        first.close()
        alternate.close()


@pytest.fixture(scope="module")
def jobs() -> dict[str, tuple[bytes, bytes, tuple[torch.Tensor, ...]]]:
    mlp_inputs = example_inputs("mlp", 8, 11)
    x = (torch.randn(8, 32, generator=torch.Generator().manual_seed(5)),)
    tie = (torch.randn(8, 16, generator=torch.Generator().manual_seed(6)),)
    return {
        "mlp": (export_program(build_model("mlp", 4), mlp_inputs), save_tensors(mlp_inputs),
                mlp_inputs),
        "frac": (export_program(FracScaled(), x), save_tensors(x), x),
        "tie": (export_program(TiedHead().eval(), tie), save_tensors(tie), tie),
    }


def audit(recomputers, job, policy, worker_output: bytes, tmp_path: Path):
    recompute, confirm = recomputers
    program, inputs, _ = job
    store = Store()
    spec = JobSpec(program=store.put_blob(program), inputs=store.put_blob(inputs),
                   tolerance=policy)
    spec_sha = store.put_blob(spec.canonical_bytes())
    record = JobRecord(
        client="0x" + "11" * 20, worker="0x" + "22" * 20, auditor="0x" + "33" * 20,
        reward=1, audit_fee=1, collateral=1, deadline=2**40, lease_expiry=0, committed_at=1,
        committed_block=1, resolved_at=0, audit_bps=10_000, state=JobState.AUDITED,
        spec_hash=bytes.fromhex(spec_sha), result_hash=bytes.fromhex(store.put_blob(worker_output)),
    )
    auditor = Auditor(store, recompute, compare_outputs, evidence_hash,
                      Journal(tmp_path / "journal.json"), verifier="0x" + "44" * 20,
                      chain_id=31337, job_market="0x" + "55" * 20, confirm=confirm)
    return auditor.audit(1, record, missing_output_is_final=True), store


def spec_of(program: bytes, inputs: bytes) -> JobSpec:
    return JobSpec(program=hashlib.sha256(program).hexdigest(),
                   inputs=hashlib.sha256(inputs).hexdigest())


def ours(recomputers, job) -> bytes:
    program, inputs, _ = job
    return recomputers[0](spec_of(program, inputs), program, inputs)


def edit(output: bytes, change) -> bytes:
    return save_tensors([change(t.clone()) for t in load_tensors(output, "out")], "out")


def test_the_alternate_setup_runs_plain_kernels_and_sse41(recomputers) -> None:
    alternate = recomputers[1].recompute
    assert alternate.alternate and alternate.threads == recomputers[0].recompute.threads + 1
    runner = alternate._runner("cpu")
    assert (runner.cpu_capability, runner.onednn_max_isa) == ("default", "SSE41")
    assert recomputers[0].recompute._runner("cpu").onednn_max_isa is None


def test_an_honest_worker_on_an_older_cpu_passes_an_exact_job(recomputers, jobs,
                                                              tmp_path) -> None:
    program, inputs, _ = jobs["mlp"]
    with JobRunner(threads=1, onednn_max_isa="SSE41", cpu_capability="default",
                   allow_unsandboxed=True, scratch_root=tmp_path) as runner:
        outcome = runner.run(program, inputs, time_limit_s=60, memory_limit_mb=2048,
                             max_output_bytes=1 << 24)
    assert outcome.ok and outcome.output is not None
    ready, _ = audit(recomputers, jobs["mlp"], EXACT, outcome.output, tmp_path)
    assert ready.verdict is True, ready.evidence.comparisons
    assert "rounding floor" in ready.evidence.comparisons[0].reason or (
        outcome.output == ours(recomputers, jobs["mlp"]))


def test_a_cheater_on_a_stable_program_under_a_tight_tolerance_still_fails(
    recomputers, jobs, tmp_path
) -> None:
    """Both stability checks run (the alternate setup, then inputs moved by one ulp), find the
    program stable, and the fail stands."""
    recompute, confirm = recomputers
    _, inputs, _ = jobs["mlp"]
    for policy in (EXACT, {"kind": "allclose", "rtol": 1e-9, "atol": 0.0}):
        junk = edit(ours(recomputers, jobs["mlp"]), lambda t: t * 1.001)
        ready, _ = audit(recomputers, jobs["mlp"], policy, junk, tmp_path / policy["kind"])
        assert ready.verdict is False
        assert "outside" in ready.evidence.comparisons[0].reason
    moved = hashlib.sha256(perturb_inputs(inputs)).hexdigest()
    assert moved in recompute.calls  # the one-ulp recomputation was asked, of our own setup
    assert moved not in confirm.calls


def test_a_program_a_one_ulp_change_moves_beyond_its_tolerance_is_void(
    recomputers, jobs, tmp_path
) -> None:
    """frac(65536 x) gives the same bits under every setup, so the alternate setup agrees with
    us; only the one-ulp recomputation shows that no worker can be judged on it."""
    first = ours(recomputers, jobs["frac"])
    program, inputs, _ = jobs["frac"]
    assert recomputers[1](spec_of(program, inputs), program, inputs) == first
    junk = edit(first, lambda t: torch.zeros_like(t))
    with pytest.raises(NotReproducible, match="unstable under its tolerance") as info:
        audit(recomputers, jobs["frac"], EXACT, junk, tmp_path)
    assert "one-ulp change of the inputs" in str(info.value)
    moved = recomputers[0](spec_of(program, inputs), program, perturb_inputs(inputs))
    assert info.value.output_hashes == (hashlib.sha256(first).hexdigest(),
                                        hashlib.sha256(moved).hexdigest())


def test_an_argmax_decided_by_a_tie_is_void_but_a_wrong_class_fails(
    recomputers, jobs, tmp_path
) -> None:
    first = ours(recomputers, jobs["tie"])
    # another machine rounds class 1 one ulp higher: every row's argmax flips to the twin
    rounded = edit(first, lambda t: torch.cat(
        [t[:, :1], torch.nextafter(t[:, 1:2], torch.tensor(float("inf"))), t[:, 2:]], dim=1))
    with pytest.raises(NotReproducible, match="near-ties"):
        audit(recomputers, jobs["tie"], ARGMAX, rounded, tmp_path / "tie")
    wrong = edit(first, lambda t: torch.cat([t[:, :5], t[:, 5:] + 100.0], dim=1))
    ready, _ = audit(recomputers, jobs["tie"], ARGMAX, wrong, tmp_path / "wrong")
    assert ready.verdict is False
    assert "argmax agreement 0.0000" in ready.evidence.comparisons[0].reason
