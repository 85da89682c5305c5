"""Differential test: ``core.settlement.settle_action`` against the deployed JobMarket.

Records are fabricated (every state, times around each window's edges, audit draws from old,
recent and future blocks) and made real by writing their digest into the contract's
``_jobDigest`` slot with ``anvil_setStorageAt``; then ``finalize`` is called with eth_call.
The pure function must accept exactly what the contract accepts. Collateral is zero so no
stake is touched. No block is mined, so eth_call, ``auditStatus`` and the probe of the block
time all run in the same block.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from web3.exceptions import ContractLogicError

from meshcompute.core.job import ZERO_ADDRESS, JobRecord, JobState
from meshcompute.core.settlement import SettleAction, settle_action
from tests.contracts.helpers import failed_job
from tests.contracts.world import TEST_PARAMS, World, build_world

WINDOWS = {
    "challenge_window": TEST_PARAMS.challenge_window_s,
    "audit_window": TEST_PARAMS.audit_window_s,
    "appeal_window": TEST_PARAMS.appeal_window_s,
}
_EDGES = sorted(
    {
        w + d
        for w in (
            TEST_PARAMS.challenge_window_s,
            TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s,
            TEST_PARAMS.appeal_window_s,
            TEST_PARAMS.appeal_window_s + TEST_PARAMS.audit_window_s,
        )
        for d in (-1, 0, 1)
    }
)
ages = st.one_of(st.sampled_from(_EDGES), st.integers(-5, 1_000))
_ids = itertools.count(1_000_000)
_SETTLED_STATES = [JobState.COMMITTED, JobState.AUDITED, JobState.AUDIT_FAILED, JobState.APPEALED]
states = st.one_of(st.sampled_from(_SETTLED_STATES), st.sampled_from(list(JobState)[1:]))


@pytest.fixture(scope="module")
def world(anvil) -> Iterator[World]:
    snapshot = anvil.snapshot()
    built = build_world(anvil)
    anvil.mine(300)  # so commits more than 256 blocks old (whose draw seed is gone) exist
    yield built
    anvil.revert(snapshot)
    built.resync()


def _digest_slot(world: World) -> int:
    """The storage slot of the ``_jobDigest`` mapping, found from a real job."""
    (job_id,) = world.post()
    digest = world.admin.job_digest(job_id)
    for slot in range(64):
        key = keccak(job_id.to_bytes(32, "big") + slot.to_bytes(32, "big"))
        if bytes(world.w3.eth.get_storage_at(world.market.address, key)) == digest:
            return slot
    raise AssertionError("no storage slot holds the job digest")


def _block_env(world: World) -> tuple[int, int]:
    """(block.number, block.timestamp) as eth_call sees them (creation code returning them)."""

    def probe(opcode: int) -> int:
        code = bytes([opcode, 0x5F, 0x52, 0x60, 0x20, 0x5F, 0xF3])  # OP PUSH0 MSTORE ... RETURN
        return int.from_bytes(world.w3.eth.call({"data": code}), "big")

    return probe(0x43), probe(0x42)


@pytest.fixture(scope="module")
def digest_slot(world: World) -> int:
    return _digest_slot(world)


@settings(
    max_examples=int(os.environ.get("MESH_HYPOTHESIS_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    state=states,
    commit_age=ages,
    resolve_age=ages,
    blocks_since_commit=st.one_of(st.integers(-2, 4), st.integers(250, 300)),
    audit_bps=st.sampled_from([0, 5_000, 10_000]),
)
def test_settle_action_matches_finalize_on_chain(
    world: World,
    digest_slot: int,
    state: JobState,
    commit_age: int,
    resolve_age: int,
    blocks_since_commit: int,
    audit_bps: int,
) -> None:
    bonded = [v for v in world.verifiers if world.admin.stake_of(v.address).locked > 0]
    if not bonded:
        # a forged failed job releases its verifier's bond when it is settled: give a
        # verifier a real one (a real failed verdict's) for the calls below to release
        failed_job(world)
        bonded = [v for v in world.verifiers if world.admin.stake_of(v.address).locked > 0]
    number, timestamp = _block_env(world)
    blocks_since_commit = min(blocks_since_commit, number)
    job_id = next(_ids)
    record = JobRecord(
        client=world.clients[0].address,
        worker=world.workers[0].address,
        auditor=bonded[0].address if state >= JobState.AUDIT_FAILED else ZERO_ADDRESS,
        reward=100,
        audit_fee=7,
        collateral=0,
        deadline=timestamp + 3600,
        lease_expiry=timestamp + 600,
        committed_at=timestamp - commit_age,
        committed_block=number - blocks_since_commit,
        resolved_at=timestamp - resolve_age,
        audit_bps=audit_bps,
        state=state,
        spec_hash=b"\x01" * 32,
        result_hash=b"\x02" * 32,
    )
    slot = keccak(job_id.to_bytes(32, "big") + digest_slot.to_bytes(32, "big"))
    world.chain._rpc(
        "anvil_setStorageAt",
        [world.market.address, "0x" + slot.hex(), "0x" + world.admin.hash_job(record).hex()],
    )
    assert world.admin.job_digest(job_id) == world.admin.hash_job(record)

    def audited(jid: int, rec: JobRecord) -> bool | None:
        drawable, drawn = world.admin.audit_status(jid, rec)
        return drawn if drawable else None

    expected = settle_action(job_id, record, now=timestamp, audited=audited, **WINDOWS)
    try:
        world.market.functions.finalize(job_id, record.as_tuple()).call(
            {"from": world.outsider.address}
        )
        accepted = True
    except ContractLogicError:
        accepted = False
    assert _block_env(world) == (number, timestamp)  # same block throughout
    assert (expected is not None) == accepted, (state, commit_age, resolve_age, expected)
    event(f"{state.name} -> {None if expected is None else expected.value}")
    if expected is SettleAction.RECORD_DRAW:
        assert blocks_since_commit > 257 or audit_bps > 0
