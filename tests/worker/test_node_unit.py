"""WorkerNode logic against an in-memory market and chain (timing and failures steered).

The same behaviours run end to end against the real market, Redis, anvil and sandbox in
test_node_market.py.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from meshcompute.core.job import JobState
from meshcompute.errors import ConfigError, ContractRevert, TooLate, WrongJobState
from meshcompute.mesh.adversary import Adversary
from meshcompute.worker.node import WorkerConfig, WorkerNode, parse_price
from meshcompute.worker.policy import HONEST, OutputPolicy
from tests.worker.fakes import (
    HARDWARE,
    WORKER,
    FakeActor,
    FakeMarket,
    FakeRunner,
    make_lease,
)


def _config(**kw) -> WorkerConfig:
    values = {"market_url": "http://fake-market", "poll_interval_s": 0.05, "grace_s": 2.0,
              "audit_poll_s": 0.05, "earnings_poll_s": 0.05}
    values.update(kw)
    return WorkerConfig(**values)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class Harness:
    def __init__(self, market: FakeMarket, actor: FakeActor, node: WorkerNode) -> None:
        self.market, self.actor, self.node = market, actor, node
        self.events: list[dict] = []
        self.stop = threading.Event()
        node.set_event_sink(self.events.append)
        self.thread = threading.Thread(target=node.run, args=(self.stop,), daemon=True)

    def names(self) -> list[str]:
        return [e["event"] for e in list(self.events)]

    def of(self, name: str) -> list[dict]:
        return [e for e in list(self.events) if e["event"] == name]


@contextmanager
def running(runner: FakeRunner | None = None, *, market: FakeMarket | None = None,
            actor: FakeActor | None = None, policy: OutputPolicy = HONEST,
            **config) -> Iterator[Harness]:
    market = market or FakeMarket()
    actor = actor or FakeActor()
    node = WorkerNode(_config(**config), WORKER, market, actor,  # type: ignore[arg-type]
                      hardware=HARDWARE, runner=runner or FakeRunner(), policy=policy)
    harness = Harness(market, actor, node)
    harness.thread.start()
    try:
        yield harness
    finally:
        harness.stop.set()
        harness.thread.join(15)
        assert not harness.thread.is_alive(), "node did not stop"


def test_run_job_end_to_end_commits_output_hash_with_lease_ticket():
    market = FakeMarket()
    lease = make_lease(1)
    market.add_job(lease)
    runner = FakeRunner(b"the output")
    with running(runner, market=market, threads=3) as h:
        _wait(lambda: h.of("job_done"))
    sha = hashlib.sha256(b"the output").hexdigest()
    assert market.blobs[sha] == b"the output"
    assert ("submit_result", 1, sha) in market.calls
    (ticket, signature, hashes, records), = h.actor.commits
    assert ticket == lease.ticket and signature == lease.signature
    assert hashes == [bytes.fromhex(sha)] and records == [lease.record]
    call = runner.calls[0]
    assert call["program"] == b"program" and call["inputs"] == b"inputs"
    assert call["threads"] == 3 and call["device"] == "cpu"
    assert call["time_limit_s"] == lease.spec.time_limit_s
    assert call["memory_limit_mb"] == lease.spec.memory_limit_mb
    assert call["max_output_bytes"] == lease.spec.max_output_bytes
    assert call["allow_unsandboxed"] is False
    phases = [e["phase"] for e in h.of("phase")]
    assert phases == ["leased", "downloading", "running", "uploading", "committing"]
    names = market.names()
    assert names.index("put_blob") < names.index("submit_result")
    assert h.node.counts["done"] == 1


def test_hash_mismatch_fails_job_without_running_it_and_takes_next():
    market = FakeMarket()
    bad, good = make_lease(1), make_lease(2, program=b"program-2", inputs=b"inputs-2")
    market.add_job(bad)
    market.blobs[bad.spec.inputs] = b"tampered inputs"  # the store serves other bytes
    market.add_job(good, program=b"program-2", inputs=b"inputs-2")
    runner = FakeRunner()
    with running(runner, market=market) as h:
        _wait(lambda: h.of("job_done"))
    fails = [c for c in market.calls if c[0] == "fail"]
    assert len(fails) == 1 and fails[0][1] == 1
    assert "failed its hash check" in fails[0][2] and "not run" in fails[0][2]
    assert [c["program"] for c in runner.calls] == [b"program-2"]
    assert [t.job_ids for t, *_ in h.actor.commits] == [(2,)]


def test_runner_failure_reports_reason_and_node_keeps_working():
    market = FakeMarket()
    market.add_job(make_lease(1))
    runner = FakeRunner(fail_reason="program ran past its 300 s time limit")
    with running(runner, market=market) as h:
        _wait(lambda: h.of("job_failed"))
        market.add_job(make_lease(2))
        runner.fail_reason = None
        _wait(lambda: h.of("job_done"))
    assert ("fail", 1, "program ran past its 300 s time limit") in market.calls
    assert (h.node.counts["failed"], h.node.counts["done"]) == (1, 1)


def test_cuda_job_on_cpu_worker_is_refused_with_reason():
    market = FakeMarket()
    market.add_job(make_lease(1, device="cuda"))
    runner = FakeRunner()
    with running(runner, market=market) as h:
        _wait(lambda: h.of("job_failed"))
    (fail,) = [c for c in market.calls if c[0] == "fail"]
    assert "cuda" in fail[2] and "no CUDA GPU" in fail[2]
    assert runner.calls == []


def test_lease_for_other_worker_or_wrong_spec_is_refused():
    market = FakeMarket()
    other = make_lease(1)
    other = replace(other, ticket=replace(other.ticket, worker="0x" + "99" * 20))
    wrong_spec = make_lease(2)
    wrong_spec = replace(wrong_spec, record=replace(wrong_spec.record, spec_hash=b"\x07" * 32))
    market.add_job(other)
    market.add_job(wrong_spec)
    runner = FakeRunner()
    with running(runner, market=market, slots=2) as h:
        _wait(lambda: len(h.of("job_failed")) == 2)
    reasons = {c[1]: c[2] for c in market.calls if c[0] == "fail"}
    assert "not this worker" in reasons[1]
    assert "specHash differs" in reasons[2]
    assert runner.calls == []


@pytest.mark.parametrize("error", [
    TooLate("TicketExpired", {"leaseExpiry": 5}, contract="JobMarket"),
    WrongJobState("InvalidJobState", {"jobId": 1, "state": 3}, contract="JobMarket"),
])
def test_commit_revert_is_reported_and_node_moves_on(error):
    market = FakeMarket()
    market.add_job(make_lease(1))
    actor = FakeActor(revert=error)
    with running(market=market, actor=actor) as h:
        _wait(lambda: h.of("commit_reverted"))
        actor.revert = None
        market.add_job(make_lease(2))
        _wait(lambda: h.of("job_done"))
    (reverted,) = h.of("commit_reverted")
    assert reverted["job_id"] == 1 and reverted["error"] == error.error_name
    assert "fail" not in market.names()  # the job did not fail; someone else holds it
    assert h.node.counts["lost"] == 1


def test_forgotten_worker_registers_again_on_heartbeat():
    market = FakeMarket(lease_s=2)  # heartbeat every ~0.67 s
    with running(market=market) as h:
        _wait(lambda: market.names().count("heartbeat") >= 1)
        market.known = False
        _wait(lambda: market.names().count("register") >= 2)
    assert any("does not know this worker" in e.get("message", "") for e in h.of("warning"))


def test_stop_releases_unstarted_lease_and_never_runs_it():
    market = FakeMarket()
    market.add_job(make_lease(1))
    gate = threading.Event()
    original = market.get_blobs

    def slow_get_blobs(hashes):
        gate.wait(10)
        return original(hashes)

    market.get_blobs = slow_get_blobs  # type: ignore[method-assign]
    runner = FakeRunner()
    with running(runner, market=market) as h:
        _wait(lambda: market.names().count("lease") and h.node.running_job_ids() == [1])
        h.stop.set()
        _wait(lambda: h.of("job_released"))
        gate.set()
    assert ("release", 1) in market.calls
    assert runner.calls == [] and h.actor.commits == []
    assert "stopped" in h.names()


def test_stop_lets_running_job_finish_within_grace():
    market = FakeMarket()
    market.add_job(make_lease(1))
    runner = FakeRunner(delay_s=0.5)
    with running(runner, market=market, grace_s=10) as h:
        _wait(runner.started.is_set)
        h.stop.set()
        h.thread.join(15)
    assert "release" not in market.names()
    assert len(h.actor.commits) == 1 and h.of("job_done")


def test_stop_releases_running_job_after_grace_and_discards_its_output():
    market = FakeMarket()
    market.add_job(make_lease(1))
    block = threading.Event()
    runner = FakeRunner(block=block)
    with running(runner, market=market, grace_s=0.3) as h:
        _wait(runner.started.is_set)
        h.stop.set()
        h.thread.join(15)
        block.set()
        time.sleep(0.2)
    assert ("release", 1) in market.calls
    assert h.actor.commits == [] and "submit_result" not in market.names()
    assert "fail" not in market.names()


def test_long_job_renews_lease_and_commits_with_renewed_ticket():
    market = FakeMarket(renew_s=600)
    market.add_job(make_lease(1, lease_s=3))  # renewal due after ~1.5 s
    runner = FakeRunner(delay_s=2.5)
    with running(runner, market=market) as h:
        _wait(lambda: h.of("job_done"), timeout=15)
    assert ("renew", 1) in market.calls
    (ticket, signature, _, _), = h.actor.commits
    assert signature == b"\x02" * 65  # the renewed lease's ticket
    assert ticket.lease_expiry > int(time.time()) + 500


def test_multi_job_ticket_commits_all_jobs_in_one_transaction():
    market = FakeMarket()
    for job_id in (1, 2):
        market.add_job(make_lease(job_id, job_ids=(1, 2)))
    with running(market=market, slots=2) as h:
        _wait(lambda: len(h.of("job_done")) == 2)
    (ticket, _, hashes, records), = h.actor.commits
    assert ticket.job_ids == (1, 2) and len(hashes) == 2 and len(records) == 2


def test_failed_partner_of_multi_job_ticket_does_not_block_the_other():
    market = FakeMarket()
    market.add_job(make_lease(1, job_ids=(1, 2)))
    bad = make_lease(2, program=b"program-2", job_ids=(1, 2))
    market.add_job(bad, program=b"program-2")
    del market.blobs[bad.spec.program]
    with running(FakeRunner(), market=market, slots=2) as h:
        _wait(lambda: h.of("job_failed") and h.of("job_done"), timeout=10)
    assert [e["job_id"] for e in h.of("job_failed")] == [2]
    assert [e["job_id"] for e in h.of("job_done")] == [1]
    # the ticket over (1, 2) cannot commit job 1 alone: the node asked for a ticket over the
    # jobs it still holds and committed job 1 with it
    assert ("renew", 1) in market.calls
    (ticket, signature, hashes, _), = h.actor.commits
    assert ticket.job_ids == (1,) and signature == b"\x02" * 65 and len(hashes) == 1
    assert "release" not in market.names()


class FakeBatchRunner(FakeRunner):
    """Also runs whole batches; records each batch call."""

    def __init__(self, outputs: dict[bytes, bytes], fail: set[bytes] = frozenset()) -> None:
        super().__init__()
        self.outputs = outputs
        self.fail = fail
        self.batches: list[dict] = []

    def run_batch(self, program, inputs, **limits):
        from tests.worker.fakes import FakeOutcome

        self.batches.append({"program": program, "inputs": list(inputs), **limits})
        return [FakeOutcome(False, None, None, "boom") if x in self.fail else
                FakeOutcome(True, self.outputs[x], hashlib.sha256(self.outputs[x]).hexdigest(),
                            None)
                for x in inputs]


def _batch_market(ids: tuple[int, ...]) -> FakeMarket:
    """A market holding one ticket over ``ids``; job i's inputs are ``b"in-i"``."""
    market = FakeMarket()
    for job_id in ids:
        market.add_job(make_lease(job_id, inputs=f"in-{job_id}".encode(), job_ids=ids),
                       inputs=f"in-{job_id}".encode())
    return market


def test_batch_runs_in_one_runner_call_and_commits_once_in_ticket_order():
    ids = (3, 1, 2)
    outputs = {f"in-{i}".encode(): f"out-{i}".encode() for i in ids}
    market = _batch_market(ids)
    runner = FakeBatchRunner(outputs)
    with running(runner, market=market, slots=1) as h:
        _wait(lambda: len(h.of("job_done")) == 3)
    (call,) = runner.batches
    assert call["program"] == b"program" and call["client"] == "0x" + "22" * 20
    assert sorted(call["inputs"]) == sorted(outputs)
    # one bundle brings the program (once) and every input; one bundle and one request
    # take the outputs and results back
    program = make_lease(1).spec.program
    (fetch,) = [c for c in market.calls if c[0] == "get_blobs"]
    assert list(fetch[1]).count(program) == 1 and "get_blob" not in market.names()
    assert market.names().count("put_blobs") == 1 and "put_blob" not in market.names()
    (submitted,) = [c[1] for c in market.calls if c[0] == "submit_results"]
    assert sorted(job for job, _ in submitted) == sorted(ids)
    (ticket, _, hashes, records), = h.actor.commits
    assert ticket.job_ids == ids
    assert hashes == [hashlib.sha256(f"out-{i}".encode()).digest() for i in ids]
    assert [r.spec_hash for r in records] == [
        make_lease(i, inputs=f"in-{i}".encode()).record.spec_hash for i in ids]
    assert runner.calls == []


def test_batch_occupies_one_slot():
    market = FakeMarket()
    for job_id in (1, 2):
        market.add_job(make_lease(job_id, inputs=b"in", job_ids=(1, 2)), inputs=b"in")
    block = threading.Event()
    runner = FakeBatchRunner({b"in": b"out"})
    original = runner.run_batch

    def slow(program, inputs, **limits):
        block.wait(10)
        return original(program, inputs, **limits)

    runner.run_batch = slow  # type: ignore[method-assign]
    with running(runner, market=market, slots=1) as h:
        _wait(lambda: len(h.node.running_job_ids()) == 2)
        assert h.node._busy_slots() == 1
        block.set()
        _wait(lambda: len(h.of("job_done")) == 2)


def test_honest_node_appeals_failed_audit_once():
    market = FakeMarket()
    market.add_job(make_lease(1))
    actor = FakeActor()
    with running(market=market, actor=actor) as h:
        _wait(lambda: h.of("job_done"))
        actor.records[1] = replace(actor.records[1], state=JobState.AUDIT_FAILED)
        _wait(lambda: h.of("appealed"))
        time.sleep(0.3)
        actor.records[1] = replace(actor.records[1], state=JobState.FINALIZED)
        _wait(lambda: h.of("paid"))
    assert actor.appeals == [1]
    assert [e["policy"] for e in h.of("started")] == ["honest"]
    assert h.of("cheated") == []
    assert h.node.watch.job_ids() == []


def test_honest_node_escalates_a_failure_upheld_on_appeal_once():
    """Two seats upheld the failure of our honest output: the node escalates it (the same
    contract call as the appeal; a third verifier judges), once."""
    market = FakeMarket()
    market.add_job(make_lease(1))
    actor = FakeActor()
    with running(market=market, actor=actor) as h:
        _wait(lambda: h.of("job_done"))
        actor.records[1] = replace(actor.records[1], state=JobState.AUDIT_FAILED)
        _wait(lambda: h.of("appealed"))
        actor.records[1] = replace(actor.records[1], state=JobState.FAILURE_UPHELD)
        _wait(lambda: h.of("escalated"))
        time.sleep(0.3)  # more watch passes: escalated once
        actor.records[1] = replace(actor.records[1], state=JobState.REFUNDED)
        _wait(lambda: h.node.watch.job_ids() == [])
    assert actor.appeals == [1, 1]
    assert h.node.watch.escalated == 1 and h.node.watch.appealed == 1


def test_appeal_is_retried_after_a_transient_revert_but_not_after_the_window():
    transient = ContractRevert("JobRecordMismatch", {"jobId": 1}, contract="JobMarket")
    market = FakeMarket()
    market.add_job(make_lease(1))
    market.add_job(make_lease(2))
    actor = FakeActor(appeal_reverts=[transient])
    with running(market=market, actor=actor) as h:
        _wait(lambda: len(h.of("job_done")) == 2)
        actor.records[1] = replace(actor.records[1], state=JobState.AUDIT_FAILED)
        _wait(lambda: h.of("appealed"))
        assert actor.appeals == [1]  # the first try reverted, the next pass appealed
        assert len(h.of("audit_failed")) == 1  # the retry does not report the failure again
        closed = TooLate("WindowClosed", {"jobId": 2, "closesAt": 5}, contract="JobMarket")
        actor.appeal_reverts = [closed, closed]
        actor.records[2] = replace(actor.records[2], state=JobState.AUDIT_FAILED)
        _wait(lambda: any("appeal of job 2 reverted:" in e.get("message", "")
                          for e in h.of("error")))
        time.sleep(0.5)  # more watch passes: a closed window is not tried again
    assert actor.appeals == [1] and len(actor.appeal_reverts) == 1


def test_cheating_policy_passed_in_skips_runs_replaces_outputs_and_never_appeals():
    import torch
    from safetensors.torch import save

    honest = save({"out.0": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    inputs = save({"args.0": torch.ones(2, 4)})
    market = FakeMarket()
    market.add_job(make_lease(1, inputs=inputs), inputs=inputs)
    actor = FakeActor()
    adversary = Adversary(fraction=1.0, seed=0)
    runner = FakeRunner(honest)
    with running(runner, market=market, actor=actor, policy=adversary) as h:
        _wait(lambda: h.of("job_done"))
        market.add_job(make_lease(2, inputs=inputs), inputs=inputs)
        _wait(lambda: len(h.of("job_done")) == 2)
        actor.records[1] = replace(actor.records[1], state=JobState.AUDIT_FAILED)
        _wait(lambda: h.of("audit_failed"))
        time.sleep(0.2)
    assert actor.appeals == []
    assert len(runner.calls) == 1  # the second job was faked without computing
    first, second = (hashes[0] for _, _, hashes, _ in actor.commits)
    zeros = save({"out.0": torch.zeros(2, 3)})
    assert first == second == hashlib.sha256(zeros).digest()
    assert [e["how"] for e in h.of("cheated")] == ["zeros of output", "zeros without computing"]
    assert [e["policy"] for e in h.of("started")] == ["cheater"]


def test_earnings_come_from_the_chain():
    actor = FakeActor(earned=7 * 10**18)
    with running(actor=actor) as h:
        _wait(lambda: h.of("earnings"))
    assert h.of("earnings")[0]["earned_wei"] == str(7 * 10**18)


def test_config_validation_and_price_parsing():
    assert parse_price("0.5") == 5 * 10**17
    assert parse_price("12") == 12 * 10**18
    for bad in ("-1", "abc", "0.0000000000000000001"):
        with pytest.raises(ConfigError):
            parse_price(bad)
    with pytest.raises(ConfigError, match="slots"):
        WorkerConfig(market_url="x", slots=0)


def test_config_from_settings_with_overrides(tmp_path):
    from meshcompute.settings import load_settings

    settings = load_settings(data_dir=tmp_path, worker_slots=3, worker_price="1.5",
                             market_url="http://m:1")
    config = WorkerConfig.from_settings(settings, threads=4, json_logs=None)
    assert (config.slots, config.threads, config.price_wei) == (3, 4, 15 * 10**17)
    assert config.market_url == "http://m:1"
    assert config.health_path == tmp_path / "worker-health.json"


def test_a_corrupt_blob_in_the_bundle_fails_only_its_own_job():
    ids = (1, 2)
    market = _batch_market(ids)
    market.blobs[make_lease(2, inputs=b"in-2").spec.inputs] = b"tampered"
    runner = FakeBatchRunner({b"in-1": b"out-1"})
    with running(runner, market=market, slots=1) as h:
        _wait(lambda: h.of("job_done") and h.of("job_failed"))
    assert "get_blobs" in market.names()  # refused as a whole, then fetched one by one
    (failed,) = [c for c in market.calls if c[0] == "fail"]
    assert failed[1] == 2 and "hash check" in failed[2]
    assert [e["job_id"] for e in h.of("job_done")] == [1]


def test_a_refused_results_batch_falls_back_to_one_request_per_job():
    from meshcompute.errors import Conflict

    ids = (1, 2)
    market = _batch_market(ids)

    def refuse(results):
        market._log("submit_results", tuple(results))
        raise Conflict("job 2: lease not held (HTTP 409)")

    market.submit_results = refuse  # type: ignore[method-assign]
    runner = FakeBatchRunner({b"in-1": b"out-1", b"in-2": b"out-2"})
    with running(runner, market=market, slots=1) as h:
        _wait(lambda: len(h.of("job_done")) == 2)
    assert sorted(c[1] for c in market.calls if c[0] == "submit_result") == [1, 2]
    assert len(h.actor.commits) == 1
