"""Audit draws computed off chain (meshcompute.core.audit_draw, meshcompute.chain.draws)
agree with JobMarket.auditStatus on a real anvil, before, at and long after the seed block."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from meshcompute.chain.draws import AuditDraws
from meshcompute.core.audit_draw import BPS, audit_drawn, drawable, needs_contract

pytestmark = pytest.mark.anvil


@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**64))
def test_rate_bounds_hold_for_any_seed(seed: bytes, job_id: int) -> None:
    assert audit_drawn(seed, job_id, BPS, keccak)
    assert audit_drawn(seed, job_id, 0, keccak) == (seed == bytes(32))


def test_a_zero_seed_counts_as_drawn_and_bad_seeds_are_refused() -> None:
    assert audit_drawn(bytes(32), 7, 0, keccak)
    with pytest.raises(ValueError, match="32 bytes"):
        audit_drawn(b"short", 7, 500, keccak)


def test_drawable_from_two_blocks_after_the_commit() -> None:
    assert not drawable(10, 11) and drawable(10, 12)
    assert not needs_contract(10, 12) and needs_contract(10, 211)


def test_local_draws_match_the_contract(world) -> None:
    contracts = world.admin
    jobs = [world.committed_job(audit_bps=bps) for bps in (0, 2_500, 5_000, 7_500, 5_000, 10_000)]
    # the last job's seed block is not mined yet: neither may take the draw
    last = contracts.job(jobs[-1])
    fresh = AuditDraws(contracts)
    if fresh.head == last.committed_block:
        assert fresh.status(jobs[-1], last) == (False, False)
        assert contracts.audit_status(jobs[-1], last) == (False, False)
    world.chain.mine(2)
    draws = AuditDraws(contracts)
    answers = set()
    for job_id in jobs:
        record = contracts.job(job_id)
        ours = draws.status(job_id, record)
        assert ours == contracts.audit_status(job_id, record), job_id
        assert draws.drawn(job_id, record.committed_block, record.audit_bps) == ours[1]
        answers.add(ours[1])
    assert answers == {True, False}  # rates 0 and 10000 alone give both
    # deep seeds are left to the contract (its blockhash window ends at 256 blocks)
    world.chain.mine(300)
    deep = AuditDraws(contracts)
    for job_id in jobs:
        record = contracts.job(job_id)
        assert deep.status(job_id, record) == contracts.audit_status(job_id, record)
        assert deep.drawn(job_id, record.committed_block, record.audit_bps) is None
    # asked in one batch beforehand (the settler's way), the contract says the same
    batched = AuditDraws(contracts)
    records = {job_id: contracts.job(job_id) for job_id in jobs}
    batched.prefetch(records)
    assert set(batched._answers) == set(jobs)
    for job_id, record in records.items():
        assert batched.status(job_id, record) == contracts.audit_status(job_id, record)


def test_a_settlement_delay_does_not_change_the_draw(world) -> None:
    """Past blockhash's 256 blocks the contract reads the seed from the EIP-2935 history, so a
    job the draw passed over stays undrawn however late it is settled (it used to count as
    drawn, turning a settlement delay into an audit)."""
    undrawn = world.committed_job(audit_bps=0)
    world.chain.mine(2)
    record = world.admin.job(undrawn)
    assert world.admin.audit_status(undrawn, record) == (True, False)
    world.chain.mine(400)
    assert world.admin.audit_status(undrawn, record) == (True, False)
    world.chain.increase_time(3600)
    world.chain.mine(1)
    receipt = world.outsider.finalize(undrawn, record)
    assert [e.name for e in world.outsider.receipt_events(receipt, "JobMarket")
            if e.name in ("JobPaid", "AuditDrawn")] == ["JobPaid"]

