"""The audit rate is decided on chain (issue: the verification game).

``JobMarket`` raises every job's audit rate, when a worker takes it, to the deterrence rate of
:func:`meshcompute.core.audit_rate.audit_bps` for that worker's on-chain record and free stake;
the market's ticket can only raise it further. These tests play the colluding operator (a
ticket signed at 0 bps for its own new worker) and hold the Solidity port equal to the pure
core over random inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcompute.chain.local import LocalChain
from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.job import JobState
from meshcompute.units import BPS, TOKEN
from tests.contracts.world import TEST_PARAMS, World, build_world

pytestmark = pytest.mark.anvil

PARAMS = replace(TEST_PARAMS, audit_deterrence=True, min_audit_bps=500)
UINT96 = 2**96 - 1
UINT32 = 2**32 - 1


@pytest.fixture(scope="module")
def _deployed(anvil: LocalChain) -> Iterator[World]:
    snapshot = anvil.snapshot()
    world = build_world(anvil, PARAMS)
    yield world
    anvil.revert(snapshot)


def _expected(world: World, worker, reward: int, collateral: int, client_bps: int) -> int:
    record = worker.worker_record(worker.address)
    return audit_bps(
        reward=reward, collateral=collateral, free_stake=worker.free_stake(worker.address),
        completed=record.completed, audits_passed=record.audits_passed, slashed=record.slashed,
        min_bps=max(client_bps, PARAMS.min_audit_bps),
    )


def test_config_reports_deterrence(world: World) -> None:
    assert world.admin.config()["audit_deterrence"] == 1


def test_operator_ticket_at_zero_cannot_lower_a_new_workers_rate(world: World) -> None:
    """The colluding operator signs 0 bps for its own fresh worker: the chain still audits
    that worker at the deterrence rate for a new worker (margin 4: 4 R / (R + C))."""
    worker = world.workers[2]
    reward, collateral = 100 * TOKEN, 1_000 * TOKEN
    expected = _expected(world, worker, reward, collateral, 0)
    assert expected == -(-4 * BPS * reward // (reward + collateral))  # 3637 bps
    (job_id,) = world.post(reward=reward, collateral=collateral, audit_bps=0)
    world.assign(worker, [job_id], audit_bps=0)
    record = world.job(job_id)
    assert record.state == JobState.ASSIGNED
    assert record.audit_bps == expected > PARAMS.min_audit_bps


def test_ticket_and_client_can_only_raise_the_rate(world: World) -> None:
    worker = world.workers[1]
    reward, collateral = 100 * TOKEN, 1_000 * TOKEN
    base = _expected(world, worker, reward, collateral, 0)
    ids = world.post(n=2, reward=reward, collateral=collateral, audit_bps=0)
    world.assign(worker, [ids[0]], audit_bps=base + 1_000)
    assert world.job(ids[0]).audit_bps == base + 1_000  # the ticket raised it
    (client_high,) = world.post(reward=reward, collateral=collateral, audit_bps=9_000)
    world.assign(worker, [client_high], audit_bps=0)
    assert world.job(client_high).audit_bps == 9_000  # the client's own rate stands


def test_rate_of_a_batch_uses_the_free_stake_before_its_collateral_is_locked(world: World) -> None:
    worker = world.workers[0]
    reward, collateral = 10 * TOKEN, 100 * TOKEN
    expected = _expected(world, worker, reward, collateral, 0)
    ids = world.post(n=3, reward=reward, collateral=collateral, audit_bps=0)
    world.assign(worker, ids, audit_bps=0)
    assert [world.job(i).audit_bps for i in ids] == [expected] * 3


def test_an_ever_slashed_worker_is_audited_on_every_job(world: World) -> None:
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker)
    world.verifier_for(job_id).resolve_audit(job_id, False, b"\xee" * 32)
    world.advance(PARAMS.appeal_window_s + 1)
    world.admin.finalize(job_id)
    assert worker.worker_record(worker.address).slashed == 1
    (next_job,) = world.post(audit_bps=0)
    world.assign(worker, [next_job], audit_bps=0)
    assert world.job(next_job).audit_bps == BPS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    reward=st.one_of(st.integers(0, 10**6), st.integers(0, UINT96)),
    collateral=st.one_of(st.integers(0, 10**7), st.integers(0, UINT96)),
    free_stake=st.one_of(st.integers(0, 10**8), st.integers(0, 2**200)),
    completed=st.one_of(st.integers(0, 5_000), st.integers(0, UINT32)),
    audits_passed=st.one_of(st.integers(0, 1_000), st.integers(0, UINT32)),
    slashed=st.one_of(st.just(0), st.integers(0, UINT32)),
    min_bps=st.integers(0, BPS),
)
def test_solidity_rate_equals_the_pure_core(
    world: World, reward, collateral, free_stake, completed, audits_passed, slashed, min_bps
) -> None:
    onchain = world.market.functions.auditRate(
        reward, collateral, free_stake, completed, audits_passed, slashed, min_bps
    ).call()
    assert onchain == audit_bps(
        reward=reward, collateral=collateral, free_stake=free_stake, completed=completed,
        audits_passed=audits_passed, slashed=slashed, min_bps=min_bps,
    )
