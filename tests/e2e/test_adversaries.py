"""The verification game played by adversaries other than the worker, end to end on anvil with
real processes (issue: the verification game). In each test: no honest worker is slashed, no
junk is paid, and every balance reconciles to the wei.

- a client posting a program built to magnify rounding (``frac(65536 * gelu(linear(x)))``);
- a silent verifier (one verifier is down: the other judges the audits the draw assigns it
  and takes the silent one's over halfway through the window; with both down every drawn job
  ends void);
- an operator withholding a program from the verifier (it cannot recompute: void, never paid);
- a lazy verifier (it passes without recomputing): canary jobs catch it and it loses its bond.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest
import torch

from meshcompute.client import Submission
from meshcompute.core.job import PASS_BOND_REWARDS, JobState
from meshcompute.errors import ContractRevert, JobFailed
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.mesh.bench.verify import FracGelu
from meshcompute.mesh.devstack import (
    ADMIN,
    ASSIGNER,
    CANARY_CLIENT,
    CANARY_WORKER,
    FAST_PARAMS,
    SECOND_VERIFIER,
    VERIFIER,
    DevStack,
    StackConfig,
)
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.settings import load_settings
from meshcompute.units import TOKEN
from meshcompute.verifier.canary import CanaryRunner
from meshcompute.verifier.recompute import Recomputer
from meshcompute.wire.market_client import MarketClient
from tests.e2e.test_stack import _assert_books, _client, _submit, _wait_terminal

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

#: Every job drawn for audit, a short audit window so silence ends quickly.
AUDIT_ALL = replace(FAST_PARAMS, min_audit_bps=10_000, audit_window_s=30)
#: A drawn job's states from the draw on (its verdict may come before the others are drawn).
PAST_DRAW = {JobState.AUDITED, JobState.AUDIT_PASSED, JobState.AUDIT_FAILED,
             JobState.APPEALED, JobState.DISPUTED}


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


def _wait_own_verdicts(stack: DevStack, contracts, job_ids: list[int], verifier: str,
                       timeout_s: float) -> None:
    """Wait until no job drawn for audit awaits a verdict the draw gives ``verifier`` now; after
    ``timeout_s`` (by then half the window has passed in real time) go on anyway."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        stack.check_alive()
        records = contracts.job_records(job_ids)
        try:
            if not any(records[i].state == JobState.AUDITED
                       and contracts.assigned_verifier(i, records[i]) == verifier
                       for i in job_ids):
                return
        except ContractRevert:  # a verdict landed since the read: read again
            pass
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
    """One verifier is down. The draw assigns each audit to one of the two: the live one
    judges its own at once and, halfway through each audit window, takes over those assigned
    to the silent one (escalation): the cheater is failed and slashed, the honest worker paid
    after a verified pass. With both verifiers silent every drawn job ends
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
        # every job drawn: once the live verifier has judged the audits the draw gave it, the
        # chain skips to just past half of every job's window, where the silent verifier's
        # audits escalate to the live one (the rest of the window passes in real time).
        # Skipping before that handed the live one's own audit, still being recomputed, to the
        # silent one: that job then sat out the whole window to end void.
        _wait_states(stack, contracts, submission.job_ids, PAST_DRAW, timeout_s=180)
        backup = stack.accounts[SECOND_VERIFIER].address  # the verifier still up
        _wait_own_verdicts(stack, contracts, submission.job_ids, backup,
                           timeout_s=config.params.audit_window_s // 2)
        half = max(r.committed_at + config.params.challenge_window_s
                   + config.params.audit_window_s // 2
                   for r in contracts.job_records(submission.job_ids).values())
        now = int(stack.chain.w3().eth.get_block("latest")["timestamp"])
        stack.chain.increase_time(max(1, half + 1 - now))
        states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=360)
        records = contracts.job_records(submission.job_ids)
        cheater = next(iter(stack.cheater_addresses()))
        resolved = [e for e in contracts.job_events(submission.job_ids)
                    if e.name == "AuditResolved"]
        assert resolved and {e.args["verifier"] for e in resolved} == {backup}, (
            stack.services["verifier-2"].tail(20))
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

        # the silent primary was escalated past, not punished: the backup gave every verdict
        verifiers = [stack.accounts[i].address for i in (VERIFIER, SECOND_VERIFIER)]
        deposits = {v: contracts.verifier_seat(v).deposit for v in verifiers}
        assert len(set(deposits.values())) == 1, deposits

        # both verifiers silent: nothing drawn is paid, everything goes back
        stack.services["verifier-2"].killed = True
        stack.services["verifier-2"].stop()
        client_before = contracts.account_of(stack.client_account.address).withdrawable
        second = _submit(client, 4, audit_bps=10_000)
        # every job drawn, nobody answers: the chain skips past the audit window
        _wait_states(stack, contracts, second.job_ids, PAST_DRAW, timeout_s=180)
        stack.chain.increase_time(config.params.audit_window_s + 1)
        states = _wait_terminal(stack, contracts, second.job_ids, timeout_s=360)
        assert set(states.values()) == {JobState.REFUNDED}, states
        names = _events(contracts, second.job_ids)
        assert names["JobPaid"] == 0 and names["JobSlashed"] == 0, names
        records = contracts.job_records(second.job_ids)
        refunded = contracts.account_of(stack.client_account.address).withdrawable - client_before
        assert refunded == sum(r.reward + r.audit_fee for r in records.values())
        assert {client.verification(second)[s.index] for s in second.shards} == {"refunded"}
        _no_honest_worker_slashed(stack, contracts, second.job_ids)
        # ... and each silent verifier pays reward plus collateral, from its deposit, for every
        # job it was a candidate for (a seat burned in the first half has left since)
        unit, _exit = contracts.registry_terms()
        for verifier in verifiers:
            seat = contracts.verifier_seat(verifier)
            owed = sum(r.reward + r.collateral for r in records.values()
                       if seat.candidate_for(r.committed_block)
                       and seat.units * unit >= r.reward + r.collateral)
            burned = deposits[verifier] - seat.deposit
            assert burned == min(deposits[verifier], owed), (verifier, burned, owed)
        assert any(deposits[v] > contracts.verifier_seat(v).deposit for v in verifiers) or all(
            contracts.verifier_seat(v).leaving for v in verifiers)
        _assert_books(contracts)


def test_operator_withholding_the_program_from_the_verifier_gets_nothing_paid() -> None:
    """The operator's blob store drops the program once the workers have run it: the verifier
    cannot recompute, gives no verdict, and the drawn jobs end void. Withholding data never
    gets a result paid (the cheater's junk included), and nobody is slashed for it."""
    config = StackConfig(workers=2, cheaters=1, cheat_fraction=1.0, params=AUDIT_ALL)
    with DevStack(config) as stack:
        verifiers = [stack.services["verifier"], stack.services["verifier-2"]]
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
        # whichever verifier the draw assigned each job to saw the program missing
        assert any("job_blob_missing" in service.tail(200) for service in verifiers)
        _no_honest_worker_slashed(stack, contracts, submission.job_ids)
        _assert_books(contracts)


def test_lazy_verifier_loses_its_bond_to_canaries_and_no_junk_is_paid() -> None:
    """The second verifier passes every audit it is assigned without recomputing. The
    operator's canary runner (a client and a worker of its own, tickets signed with the
    assigner key) plants real programs with junk outputs and disputes every pass of them; the
    draw gives each dispute to the other verifier, which recomputes and overturns it. The lazy
    verifier loses ten rewards of stake per canary it passed, the honest one nothing; the
    client's ordinary jobs (honest workers) are paid; no canary's junk is paid; the books
    reconcile to the wei."""
    config = StackConfig(workers=2, cheaters=0, lazy_second_verifier=True,
                         params=replace(AUDIT_ALL, audit_window_s=120, appeal_window_s=40))
    with DevStack(config) as stack:
        assert stack.deployment is not None
        client, contracts = _client(stack)
        admin = stack.actor(stack.accounts[ADMIN])
        owner, planter = stack.actor(stack.accounts[8]), stack.actor(stack.accounts[9])
        for actor in (owner, planter):
            admin.mint(actor.address, 20_000 * TOKEN)
        planter.stake(10_000 * TOKEN)
        chain_id = stack.deployment.chain_id
        recompute = Recomputer(threads=1, allow_unsandboxed=not stack.sandboxed)
        runner = CanaryRunner(owner, planter, stack.accounts[ASSIGNER],
                              MarketClient(stack.market_url, owner.account, chain_id),
                              MarketClient(stack.market_url, planter.account, chain_id),
                              recompute)
        honest, lazy = stack.accounts[VERIFIER].address, stack.accounts[SECOND_VERIFIER].address
        lazy_before = contracts.stake_of(lazy)
        model, x = build_model("mlp"), example_inputs("mlp", batch=4)
        program, inputs = export_program(model, x), save_tensors(list(x), "args")
        reward = 2 * TOKEN
        try:
            # the ordinary work, running alongside
            submission = _submit(client, 4, audit_bps=10_000)
            # canaries until the draw has given the lazy verifier at least two
            assigned: dict[int, str | None] = {}  # canary -> the verifier of its audit
            for _ in range(16):
                job_id = runner.plant(program, inputs, reward=reward, audit_fee=reward // 5,
                                      collateral=4 * reward)
                stack.chain.mine(2)  # the draw's seed block
                assigned[job_id] = contracts.assigned_verifier(job_id)
                # the lazy verifier may pass an earlier canary while later ones are planted:
                # dispute it now, not after planting (a busy machine plants slower than the
                # appeal window closes, and an undisputed pass is paid)
                runner.watch_once()
                if list(assigned.values()).count(lazy) >= 2:
                    break
            canaries = sorted(assigned)
            lazy_canaries = {j for j, a in assigned.items() if a == lazy}
            assert len(lazy_canaries) >= 2, assigned
            give_up = time.monotonic() + 420
            while not all(s not in ("planted", "disputed") for s in runner.planted.values()):
                stack.check_alive()
                runner.watch_once()
                assert time.monotonic() < give_up, (
                    runner.planted, stack.services["verifier"].tail(20),
                    stack.services["verifier-2"].tail(20))
                time.sleep(0.5)
            states = _wait_terminal(stack, contracts, submission.job_ids, timeout_s=300)
        finally:
            recompute.close()
            runner.client_market.close()
            runner.worker_market.close()

        # every canary ended slashed: failed by the honest verifier, or passed by the lazy one,
        # disputed and overturned; none was paid
        assert set(runner.planted.values()) == {"slashed"}, runner.planted
        events = contracts.job_events(canaries)
        assert not [e for e in events if e.name == "JobPaid"]
        # the lazy verifier passed its own canaries, and any it took over halfway through the
        # window from the honest one (busy with three recomputations per canary)
        passed = {int(e.args["jobId"]) for e in events
                  if e.name == "AuditResolved" and e.args["verifier"] == lazy}
        assert passed >= lazy_canaries
        assert all(e.args["passed"] for e in events
                   if e.name == "AuditResolved" and e.args["verifier"] == lazy)
        disputed = {int(e.args["jobId"]) for e in events if e.name == "AuditAppealed"}
        assert disputed == passed
        judges = {e.args["verifier"] for e in events if e.name == "AppealResolved"}
        assert judges == {honest}
        bond = reward * PASS_BOND_REWARDS
        lazy_after = contracts.stake_of(lazy)
        assert lazy_after.slashed - lazy_before.slashed == bond * len(passed)
        assert contracts.stake_of(honest).slashed == 0
        # the honest workers' results: verified (by either verifier) and paid
        assert set(states.values()) == {JobState.FINALIZED}, states
        assert set(client.verification(submission).values()) == {"audited"}
        assert client.wait(submission, timeout_s=60) is not None
        _no_honest_worker_slashed(stack, contracts, submission.job_ids)
        _assert_books(contracts)


def test_the_canary_service_of_the_dev_stack_gets_its_canaries_failed_by_honest_verifiers(
) -> None:
    """``mesh canary start`` as a service of the dev stack, beside two honest verifiers: it
    plants two canaries and ends by itself once they have ended. Each is failed by the
    verifier the draw picks: slashed, never paid; the honest verifiers lose no stake and earn
    the fees; the books reconcile to the wei."""
    from meshcompute.chain.contracts import MeshContracts

    config = StackConfig(workers=1, cheaters=0,
                         params=replace(AUDIT_ALL, audit_window_s=120, appeal_window_s=10),
                         canary={"every": "1", "total": "2", "max_open": "2",
                                 "families": "mlp", "reward": "2", "audit_fee": "0.4",
                                 "collateral": "8"})
    with DevStack(config) as stack:
        assert stack.deployment is not None
        contracts = MeshContracts(stack.chain.w3(), stack.deployment)
        service = stack.services["canary"]
        assert service.process is not None
        give_up = time.monotonic() + 360
        while service.process.poll() is None:
            stack.check_alive()
            assert time.monotonic() < give_up, service.tail(30)
            time.sleep(1)
        assert service.process.returncode == 0, service.tail(30)
        client = stack.accounts[CANARY_CLIENT].address
        canaries = sorted(int(e.args["jobId"]) for e in contracts.events()
                          if e.name == "JobPosted" and e.args["client"].lower() == client.lower())
        assert len(canaries) == 2, service.tail(30)
        records = contracts.job_records(canaries)
        assert {records[j].state for j in canaries} == {JobState.SLASHED}
        assert all(records[j].worker == stack.accounts[CANARY_WORKER].address
                   for j in canaries)
        events = contracts.job_events(canaries)
        assert not [e for e in events if e.name == "JobPaid"]
        verdicts = [e for e in events if e.name == "AuditResolved"]
        assert len(verdicts) == 2 and not any(e.args["passed"] for e in verdicts)
        for verifier in (stack.accounts[VERIFIER], stack.accounts[SECOND_VERIFIER]):
            assert contracts.stake_of(verifier.address).slashed == 0
        assert sum(contracts.account_of(e.args["verifier"]).withdrawable
                   for e in verdicts) > 0  # the fees of the verdicts
        _assert_books(contracts)
