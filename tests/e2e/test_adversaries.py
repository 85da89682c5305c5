"""The verification game played by adversaries other than the worker, end to end on anvil with
real processes (issue: the verification game). In each test: no honest worker is slashed, no
junk is paid, and every balance reconciles to the wei.

- a client posting a program built to magnify rounding (``frac(65536 * gelu(linear(x)))``);
- a silent verifier (the auditing verifier is down: the appeals-only one takes its drawn audits
  over halfway through the window; with both down every drawn job ends void);
- an operator withholding a program from the verifier (it cannot recompute: void, never paid).

Not here: a lazy verifier (one that passes without recomputing). Nothing in the protocol
punishes it yet (verifier stake behind passes and canary jobs are not built); ``mesh sim``
reports its gain as positive rather than pretend otherwise.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest
import torch

from meshcompute.client import Submission
from meshcompute.core.job import JobState
from meshcompute.errors import JobFailed
from meshcompute.mesh.bench.verify import FracGelu
from meshcompute.mesh.devstack import APPEAL_VERIFIER, FAST_PARAMS, DevStack, StackConfig
from meshcompute.settings import load_settings
from tests.e2e.test_stack import _assert_books, _client, _submit, _wait_terminal

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

#: Every job drawn for audit, a short audit window so silence ends quickly.
AUDIT_ALL = replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=30)


def _events(contracts, job_ids: list[int]) -> Counter[str]:
    return Counter(e.name for e in contracts.job_events(job_ids))


def _wait_states(stack: DevStack, contracts, job_ids: list[int], wanted: set[JobState],
                 timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while True:
        stack.check_alive()
        records = contracts.job_records(job_ids)
        if all(records[i].state in wanted or records[i].state.terminal for i in job_ids):
            return
        if time.monotonic() > give_up:
            raise AssertionError(
                f"jobs not in {wanted} after {timeout_s}s: "
                f"{Counter(r.state.name for r in records.values())}\n"
                + "\n".join(f"--- {name}\n{s.tail(15)}" for name, s in stack.services.items()
                            if name.startswith(("worker", "market-tasks")))
            )
        time.sleep(0.5)


def _no_honest_worker_slashed(stack: DevStack, contracts, job_ids: list[int]) -> None:
    cheaters = stack.cheater_addresses()
    records = contracts.job_records(job_ids)
    slashed = [r.worker for r in records.values() if r.state == JobState.SLASHED]
    assert all(w in cheaters for w in slashed), f"an honest worker was slashed: {slashed}"
    for worker in {r.worker for r in records.values()}:
        assert contracts.stake_of(worker).locked == 0, f"{worker} still has stake locked"


def test_chaotic_program_client_gets_nobody_slashed_and_junk_unpaid() -> None:
    """The griefing client's program turns any last-bit difference into a large one. Honest
    results pass (the verifier's own run agrees) or are void; the cheater's junk cannot be
    told from rounding either, so it is void too: never paid, never slashed. The client is
    told its program cannot be judged."""
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0, worker_slots=2,
                         params=replace(AUDIT_ALL, audit_window_s=120))
    with DevStack(config) as stack:
        client, contracts = _client(stack)
        torch.manual_seed(5)
        model = FracGelu(d=32).eval()
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
        submission: Submission = client.submit(model, (x,), shards=4, pay="4",
                                               audit_bps=10_000, deadline="20m")
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=300)
        records = contracts.job_records(submission.job_ids)
        cheater = next(iter(stack.cheater_addresses()))
        names = _events(contracts, submission.job_ids)
        assert names["JobSlashed"] == 0, names
        paid = {int(e.args["jobId"]) for e in contracts.job_events(submission.job_ids)
                if e.name == "JobPaid"}
        for job_id, record in records.items():
            if record.worker == cheater:  # junk: void on chain, never paid
                assert states[job_id] == JobState.REFUNDED and job_id not in paid, (
                    f"job {job_id}: {states[job_id].name}\n"
                    f"--- verifier\n{stack.services['verifier'].tail(20)}")
        assert names["AuditVoided"] >= 1, names
        _no_honest_worker_slashed(stack, contracts, submission.job_ids)
        with pytest.raises(JobFailed, match="not reproducible within its tolerance"):
            client.wait(submission, timeout_s=30)
        _assert_books(contracts)


def test_silent_verifier_escalates_then_nothing_unverified_is_paid() -> None:
    """The auditing verifier is down. Halfway through each audit window the appeals-only
    verifier takes the drawn audits over (escalation): the cheater is failed and slashed, the
    honest worker paid after a verified pass. With both verifiers silent every drawn job ends
    void: the client gets its whole escrow back, the workers their collateral, nothing is
    paid."""
    # the backup takes over at half the window and needs up to three sandboxed runs (ours,
    # the second setup, the one-ulp inputs) before the window closes, on a loaded machine too
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0,
                         params=replace(AUDIT_ALL, audit_window_s=100))
    with DevStack(config) as stack:
        primary = stack.services["verifier"]
        primary.killed = True
        primary.stop()
        client, contracts = _client(stack)
        submission = _submit(client, 4, audit_bps=10_000)
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=360)
        records = contracts.job_records(submission.job_ids)
        cheater = next(iter(stack.cheater_addresses()))
        backup = stack.accounts[APPEAL_VERIFIER].address  # the appeals-only verifier
        resolved = [e for e in contracts.job_events(submission.job_ids)
                    if e.name == "AuditResolved"]
        assert resolved and {e.args["verifier"] for e in resolved} == {backup}, (
            stack.services["appeal-verifier"].tail(20))
        paid = {int(e.args["jobId"]): bool(e.args["audited"])
                for e in contracts.job_events(submission.job_ids) if e.name == "JobPaid"}
        for job_id, record in records.items():
            if record.worker == cheater:
                assert states[job_id] in (JobState.SLASHED, JobState.REFUNDED)
                assert job_id not in paid
            else:
                assert states[job_id] in (JobState.FINALIZED, JobState.REFUNDED)
                assert paid.get(job_id, True)  # paid only after a verified pass
        _no_honest_worker_slashed(stack, contracts, submission.job_ids)
        _assert_books(contracts)

        # both verifiers silent: nothing drawn is paid, everything goes back
        stack.services["appeal-verifier"].killed = True
        stack.services["appeal-verifier"].stop()
        client_before = contracts.account_of(stack.client_account.address).withdrawable
        second = _submit(client, 4, audit_bps=10_000)
        states = _wait_terminal(stack, contracts, second.job_ids, timeout_s=360)
        assert set(states.values()) == {JobState.REFUNDED}, states
        names = _events(contracts, second.job_ids)
        assert names["JobPaid"] == 0 and names["JobSlashed"] == 0, names
        records = contracts.job_records(second.job_ids)
        refunded = contracts.account_of(stack.client_account.address).withdrawable - client_before
        assert refunded == sum(r.reward + r.audit_fee for r in records.values())
        assert {client.verification(second)[s.index] for s in second.shards} == {"refunded"}
        _no_honest_worker_slashed(stack, contracts, second.job_ids)
        _assert_books(contracts)


def test_operator_withholding_the_program_from_the_verifier_gets_nothing_paid() -> None:
    """The operator's blob store drops the program once the workers have run it: the verifier
    cannot recompute, gives no verdict, and the drawn jobs end void. Withholding data never
    gets a result paid (the cheater's junk included), and nobody is slashed for it."""
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0, params=AUDIT_ALL)
    with DevStack(config) as stack:
        verifiers = [stack.services["verifier"], stack.services["appeal-verifier"]]
        for service in verifiers:  # started again once the program is gone
            service.killed = True
            service.stop()
        client, contracts = _client(stack)
        submission = _submit(client, 4, audit_bps=10_000)
        _wait_states(stack, contracts, submission.job_ids,
                     {JobState.COMMITTED, JobState.AUDITED}, timeout_s=180)
        blobs = load_settings(data_dir=stack.root / "market").blob_root
        program = blobs / submission.program[:2] / submission.program[2:4] / submission.program
        assert program.exists(), program
        program.unlink()
        for service in verifiers:
            service.start()
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=240)
        names = _events(contracts, submission.job_ids)
        assert names["JobPaid"] == 0 and names["JobSlashed"] == 0, (
            names, stack.services["verifier"].tail(20))
        assert set(states.values()) == {JobState.REFUNDED}, states
        assert "job_blob_missing" in verifiers[0].tail(200)
        _no_honest_worker_slashed(stack, contracts, submission.job_ids)
        _assert_books(contracts)
