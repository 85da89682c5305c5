"""``--probe-stability``: before committing, the worker probes a program as an audit would and
hands back, unpaid and without penalty, a job unstable under its tolerance (its audit would be
void). The market and the chain are the in-memory fakes of test_node_unit.py; the first test
runs real exported programs in the real sandboxed runner, the others steer the runs in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from meshcompute.core.spec import JobSpec
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.settings import Settings
from meshcompute.worker.config import WorkerConfig
from meshcompute.worker.node import WorkerNode
from meshcompute.worker.probe import ProbeCache, ProbeVerdict, probe_key
from meshcompute.worker.runners import RunnerPool
from meshcompute.worker.status import JsonLogSink, StatusBoard
from tests.worker.fakes import (
    HARDWARE,
    WORKER,
    FakeActor,
    FakeMarket,
    FakeOutcome,
    FakeRunner,
    make_lease,
)
from tests.worker.test_node_unit import Harness, _config, _wait

ALLCLOSE = {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}


def lease_for(job_id: int, program: bytes, inputs: bytes, *, tolerance: dict | None = None,
              job_ids: tuple[int, ...] | None = None):
    """make_lease with a tolerance (the spec hash escrowed in the record follows)."""
    lease = make_lease(job_id, program, inputs, job_ids=job_ids)
    spec = JobSpec(program=lease.spec.program, inputs=lease.spec.inputs,
                   tolerance=dict(tolerance or ALLCLOSE))
    return replace(lease, spec=spec, spec_sha256=spec.sha256,
                   record=replace(lease.record, spec_hash=bytes.fromhex(spec.sha256)))


@contextmanager
def running(runner: Any = None, *, market: FakeMarket, alternate_runner: Any = None,
            **config: Any) -> Iterator[Harness]:
    """test_node_unit.running with the alternate-setup runner the probe uses."""
    node = WorkerNode(_config(**config), WORKER, market, FakeActor(),  # type: ignore[arg-type]
                      hardware=HARDWARE, runner=runner or FakeRunner(),
                      alternate_runner=alternate_runner)
    harness = Harness(market, node.actor, node)  # type: ignore[arg-type]
    harness.thread.start()
    try:
        yield harness
    finally:
        harness.stop.set()
        harness.thread.join(15)
        assert not harness.thread.is_alive(), "node did not stop"


def add(market: FakeMarket, job_id: int, program: bytes, inputs: bytes, **kw):
    lease = lease_for(job_id, program, inputs, **kw)
    market.add_job(lease, program, inputs)
    return lease


def hashes(h) -> list[str]:
    return [result.hex() for _, _, results, _ in h.actor.commits for result in results]


def fails(market: FakeMarket) -> dict[int, str]:
    return {c[1]: c[2] for c in market.calls if c[0] == "fail"}


# ---------------------------------------------------------------------- real programs


class Chaotic(nn.Module):
    """frac(65536 * gelu(linear(x))): any last-bit difference shows as a large one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.frac(65536.0 * nn.functional.gelu(self.linear(x)))


class Smooth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def shard(seed: int) -> bytes:
    return save_tensors([torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))])


class CountingPool(RunnerPool):
    """The real warm runner pool, recording each batch's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[bytes] = []

    def run_batch(self, program, inputs, **kw):  # type: ignore[override]
        self.ran += [bytes(i) for i in inputs]
        return super().run_batch(program, inputs, **kw)


@pytest.fixture
def quiet_torch_trace():
    """torch's structured-trace logger emits at DEBUG; under pytest's log capture every export
    and load in this process would format its whole trace (minutes on 2 cores)."""
    trace = logging.getLogger("torch.__trace")
    before = trace.propagate
    trace.propagate = False
    yield
    trace.propagate = before


def test_real_unstable_program_is_handed_back_and_stable_one_committed(quiet_torch_trace):
    example = (torch.randn(4, 16),)
    chaotic = export_program(Chaotic(), example)
    smooth = export_program(Smooth(), example)
    market = FakeMarket()
    add(market, 1, chaotic, shard(1))
    add(market, 2, chaotic, shard(2))  # a second shard of the same program
    add(market, 3, smooth, shard(3))
    pool = CountingPool()
    try:
        with running(pool, market=market, probe_stability=True,  # type: ignore[arg-type]
                     allow_unsandboxed=not sandbox_available()) as h:
            try:
                _wait(lambda: h.of("job_done") and len(h.of("job_handed_back")) == 2,
                      timeout=120)
            except AssertionError:
                raise AssertionError(f"worker events: {h.events}") from None
    finally:
        pool.close()
    handed = fails(market)
    assert sorted(handed) == [1, 2]
    assert handed[1].startswith("unstable under its tolerance: ")
    assert handed[1].endswith("handed back unpaid, no penalty")
    assert "one-ulp change of the inputs" in handed[1]
    # only the stable job was committed on chain; nothing of the unstable one was uploaded
    (ticket, _, _, _), = h.actor.commits
    assert ticket.job_ids == (3,)
    assert [c for c in market.calls if c[0] == "submit_result"] == [
        ("submit_result", 3, hashes(h)[0])]
    probes = {e["program"]: e for e in h.of("stability_probe")}
    assert len(h.of("stability_probe")) == 2  # the second chaotic shard was not probed again
    unstable = probes[hashlib.sha256(chaotic).hexdigest()]
    stable = probes[hashlib.sha256(smooth).hexdigest()]
    assert unstable["verdict"] == "unstable" and unstable["perturbed_used"] > 1
    assert stable["verdict"] == "stable" and stable["runs"] == 2
    assert stable["alternate_used"] < 0.25 and stable["perturbed_used"] < 0.25
    back = {e["job_id"]: e for e in h.of("job_handed_back")}
    assert (back[1]["cached"], back[2]["cached"]) == (False, True)
    # shard 2 was handed back without being computed: the pool never saw its inputs
    assert shard(2) not in pool.ran and shard(1) in pool.ran
    assert h.node.counts["handed_back"] == 2 and h.node.counts["done"] == 1
    assert h.node.counts["failed"] == 0


# ---------------------------------------------------------------------- steered runs


class FunctionRunner:
    """Runs ``fn`` (tensor -> tensor) on the inputs in-process, like a job runner would."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls: list[dict[str, Any]] = []

    def __call__(self, program, inputs, **limits):
        self.calls.append({"program": program, "inputs": bytes(inputs), **limits})
        (x,) = load_tensors(bytes(inputs), "args")
        out = save_tensors([self.fn(x)], "out")
        return FakeOutcome(True, out, hashlib.sha256(out).hexdigest(), None)


def chaotic_fn(x: torch.Tensor) -> torch.Tensor:
    return torch.frac(x * 65536.0)


def smooth_fn(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2.0


class ProgramRunner(FunctionRunner):
    """``fns[program]`` per program."""

    def __init__(self, fns: dict[bytes, Any]) -> None:
        super().__init__(None)
        self.fns = fns

    def __call__(self, program, inputs, **limits):
        self.fn = self.fns[bytes(program)]
        return super().__call__(program, inputs, **limits)


def test_cached_verdicts_probe_each_program_once():
    market = FakeMarket()
    # one lease batch of two shards of a stable program, then a third shard alone,
    # then two single shards of an unstable program
    add(market, 1, b"smooth", shard(1), job_ids=(1, 2))
    add(market, 2, b"smooth", shard(2), job_ids=(1, 2))
    add(market, 3, b"smooth", shard(3))
    add(market, 4, b"chaos", shard(4))
    add(market, 5, b"chaos", shard(5))
    runner = ProgramRunner({b"smooth": smooth_fn, b"chaos": chaotic_fn})
    alternate = ProgramRunner({b"smooth": smooth_fn, b"chaos": chaotic_fn})
    with running(runner, market=market, probe_stability=True, threads=2,
                 alternate_runner=alternate) as h:
        _wait(lambda: len(h.of("job_done")) == 3 and len(h.of("job_handed_back")) == 2)
    assert sorted(fails(market)) == [4, 5]
    committed = sorted(i for ticket, *_ in h.actor.commits for i in ticket.job_ids)
    assert committed == [1, 2, 3]
    probes = h.of("stability_probe")
    assert [(e["job_id"], e["shards"], e["verdict"]) for e in probes] == [
        (1, 2, "stable"), (4, 1, "unstable")]
    # stable: one run on moved inputs in our setup, one under the alternate setup (threads+1
    # is the alternate runner's business: it gets ours); unstable: the one-ulp run settles it
    assert probes[0]["runs"] == 2 and probes[1]["runs"] == 1
    assert len(alternate.calls) == 1 and alternate.calls[0]["threads"] == 2
    assert alternate.calls[0]["inputs"] == shard(1)
    ran = [c["inputs"] for c in runner.calls]
    assert shard(5) not in ran  # handed back from the cache, never computed
    assert ran.count(shard(4)) == 1 and ran.count(shard(3)) == 1
    # the 3 stable shards and chaotic shard 4, plus one moved-input run per program
    assert len(ran) == 4 + 2
    assert h.node.counts["handed_back"] == 2 and h.node.counts["failed"] == 0
    back = h.of("job_handed_back")
    assert [(e["job_id"], e["cached"], e["verdict"]) for e in back] == [
        (4, False, "unstable"), (5, True, "unstable")]


def test_exact_on_float_outputs_is_handed_back_without_extra_runs():
    market = FakeMarket()
    add(market, 1, b"smooth", shard(1), tolerance={"kind": "exact"})
    runner = ProgramRunner({b"smooth": smooth_fn})
    alternate = ProgramRunner({b"smooth": smooth_fn})
    with running(runner, market=market, probe_stability=True, alternate_runner=alternate) as h:
        _wait(lambda: h.of("job_handed_back"))
    reason = fails(market)[1]
    assert "its tolerance cannot be met by an honest worker" in reason
    assert "'exact' on floating outputs" in reason and reason.endswith("no penalty")
    assert len(runner.calls) == 1 and alternate.calls == [] and h.actor.commits == []


def test_a_probe_that_cannot_run_commits_as_usual():
    market = FakeMarket()
    add(market, 1, b"smooth", shard(1))

    def broken(program, inputs, **limits):
        return FakeOutcome(False, None, None, "killed: out of memory")

    runner = ProgramRunner({b"smooth": smooth_fn})
    with running(runner, market=market, probe_stability=True, alternate_runner=broken) as h:
        _wait(lambda: h.of("job_done"))
    (probe,) = h.of("stability_probe")
    assert probe["verdict"] == "inconclusive" and "out of memory" in probe["reason"]
    assert len(h.actor.commits) == 1 and "fail" not in market.names()
    assert any("inconclusive" in e["message"] for e in h.of("warning"))


def test_with_the_option_off_nothing_changes():
    market = FakeMarket()
    add(market, 1, b"chaos", shard(1))

    def alternate(*_a, **_k):
        raise AssertionError("the alternate setup ran")

    runner = ProgramRunner({b"chaos": chaotic_fn})
    with running(runner, market=market, alternate_runner=alternate) as h:
        _wait(lambda: h.of("job_done"))
    assert len(runner.calls) == 1 and len(h.actor.commits) == 1
    assert "fail" not in market.names() and h.node.probes is None
    assert not h.of("stability_probe") and not h.of("job_handed_back")
    phases = [e["phase"] for e in h.of("phase")]
    assert phases == ["leased", "downloading", "running", "uploading", "committing"]
    (config,) = h.of("stability_probe_config")
    assert config["enabled"] is False and "off" in config["message"]


def test_start_line_says_probing_is_on_and_what_it_costs():
    market = FakeMarket()
    with running(market=market, probe_stability=True) as h:
        _wait(lambda: h.of("registered"))
    (config,) = h.of("stability_probe_config")
    assert config["enabled"] is True and config["extra_runs_per_program"] == 2
    assert "about 2 extra runs" in config["message"]
    out = io.StringIO()
    JsonLogSink(out)(config)
    assert json.loads(out.getvalue())["event"] == "stability_probe_config"
    board = StatusBoard()
    board.apply(config)
    board.apply({"event": "job_handed_back", "job_id": 4, "reason": "unstable"})
    assert board.probing is True and board.handed_back == 1


def test_setting_and_cache_key(monkeypatch):
    monkeypatch.setenv("MESH_WORKER_PROBE_STABILITY", "1")
    assert WorkerConfig.from_settings(Settings()).probe_stability is True
    monkeypatch.delenv("MESH_WORKER_PROBE_STABILITY")
    assert WorkerConfig.from_settings(Settings()).probe_stability is False
    assert WorkerConfig.from_settings(Settings(), probe_stability=True).probe_stability
    a = lease_for(1, b"p", shard(1)).spec
    # other values of the same layout share a key; another shape or tolerance does not
    assert probe_key(a, shard(1)) == probe_key(a, shard(2))
    wider = save_tensors([torch.zeros(5, 16)])
    assert probe_key(a, shard(1)) != probe_key(a, wider)
    exact = lease_for(1, b"p", shard(1), tolerance={"kind": "exact"}).spec
    assert probe_key(a, shard(1)) != probe_key(exact, shard(1))
    cache = ProbeCache(max_entries=1)
    calls: list[int] = []

    def probe() -> ProbeVerdict:
        calls.append(1)
        return ProbeVerdict("stable", "fine")

    key = probe_key(a, shard(1))
    assert cache.verdict(key, probe)[1] is True and cache.verdict(key, probe)[1] is False
    assert len(calls) == 1


def test_cli_flag_reaches_the_config(monkeypatch):
    from typer.testing import CliRunner

    from meshcompute.errors import ConfigError
    from meshcompute.mesh.cli.worker import app

    seen: list[dict[str, Any]] = []

    def capture(cls, settings, **overrides):
        seen.append(overrides)
        raise ConfigError("stop here")

    monkeypatch.setattr(WorkerConfig, "from_settings", classmethod(capture))
    for extra, expected in (([], None), (["--probe-stability"], True)):
        CliRunner().invoke(app, ["start", *extra])
        assert seen[-1]["probe_stability"] is expected


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    monkeypatch.delenv("MESH_WORKER_PROBE_STABILITY", raising=False)
