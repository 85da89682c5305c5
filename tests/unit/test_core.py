"""The pure core: payout math, job state transitions and the import boundary."""

from __future__ import annotations

import ast
import pathlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcompute.core.job import (
    TERMINAL_STATES,
    TRANSITIONS,
    JobRecord,
    JobState,
    UnknownEvent,
    apply_event,
    can_transition,
)
from meshcompute.core.payout import BPS, slash_split, split_reward

CORE = pathlib.Path(__file__).resolve().parents[2] / "meshcompute" / "core"
FORBIDDEN = {"web3", "eth_account", "eth_abi", "eth_utils", "redis", "celery", "torch", "httpx",
             "fastapi", "requests", "socket", "subprocess"}


def test_core_imports_no_adapters() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@given(st.integers(0, 2**96 - 1), st.integers(0, BPS))
def test_split_reward_fee_rounds_up_and_conserves(reward: int, fee_bps: int) -> None:
    pay, fee = split_reward(reward, fee_bps)
    assert pay + fee == reward
    assert fee * BPS >= reward * fee_bps  # never below the exact fee: rounding favours no payee
    assert (fee - 1) * BPS < reward * fee_bps or fee == 0


def test_split_reward_refuses_bad_bps() -> None:
    with pytest.raises(ValueError, match="fee_bps"):
        split_reward(100, BPS + 1)


@given(st.integers(0, 2**96), st.integers(0, 2**96))
def test_slash_split_makes_the_client_whole_and_no_richer(collateral: int, fee: int) -> None:
    compensation, remainder = slash_split(collateral, fee)
    assert compensation + remainder == collateral
    assert compensation == min(collateral, fee)
    # The escrowed reward comes back from the escrow: with the compensation the client gets
    # back at most reward + audit fee, what it paid.
    assert compensation <= fee


def test_terminal_states_have_no_exit() -> None:
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
        assert state.terminal
    for state in set(JobState) - TERMINAL_STATES - {JobState.NONE}:
        assert TRANSITIONS[state], f"{state} must have a way out"


def test_can_transition_only_forward() -> None:
    assert can_transition(JobState.POSTED, JobState.ASSIGNED)
    assert not can_transition(JobState.FINALIZED, JobState.POSTED)
    assert not can_transition(JobState.COMMITTED, JobState.REFUNDED)


POSTED = {
    "jobId": 1,
    "client": "0x" + "11" * 20,
    "specHash": b"\x01" * 32,
    "reward": 100,
    "auditFee": 10,
    "collateral": 50,
    "deadline": 1000,
    "auditBps": 500,
}


def test_apply_event_follows_the_contract() -> None:
    record = apply_event(None, "JobPosted", POSTED)
    assert record.state == JobState.POSTED and record.escrow == 110
    record = apply_event(record, "JobAssigned", {"worker": "0x" + "22" * 20, "leaseExpiry": 500,
                                                 "auditBps": 700})
    assert record.holds_collateral and record.audit_bps == 700
    record = apply_event(record, "JobCommitted", {"resultHash": b"\x02" * 32, "committedAt": 600,
                                                  "committedBlock": 9,
                                                  "worker": "0x" + "22" * 20,
                                                  "leaseExpiry": 500, "auditBps": 700})
    assert (record.state, record.worker, record.lease_expiry, record.audit_bps) == (
        JobState.COMMITTED, "0x" + "22" * 20, 500, 700)
    record = apply_event(record, "AuditDrawn", {"audited": True})
    record = apply_event(record, "AuditResolved", {"verifier": "0x" + "33" * 20, "passed": False,
                                                   "resolvedAt": 700, "evidenceHash": b""})
    assert record.state == JobState.AUDIT_FAILED and record.escrow == 110  # fee held
    record = apply_event(record, "JobSlashed", {})
    record = apply_event(record, "JobRefunded", {})
    assert record.state == JobState.SLASHED and record.escrow == 0


def test_apply_event_pass_is_disputable_by_the_client() -> None:
    """A pass holds the verifier's bond and the fee until it stands; the client's dispute
    adds its bond (one more audit fee) to the escrow."""
    record = apply_event(None, "JobPosted", POSTED)
    record = apply_event(record, "JobCommitted", {"resultHash": b"\x02" * 32, "committedAt": 600,
                                                  "committedBlock": 9,
                                                  "worker": "0x" + "22" * 20,
                                                  "leaseExpiry": 500, "auditBps": 700})
    verifier = "0x" + "33" * 20
    record = apply_event(record, "AuditResolved", {"verifier": verifier, "passed": True,
                                                   "resolvedAt": 700, "evidenceHash": b""})
    assert record.state == JobState.AUDIT_PASSED and record.escrow == 110
    assert record.locks() == {"0x" + "22" * 20: 50, verifier: 1000}  # 10 rewards behind a pass
    record = apply_event(record, "AuditAppealed", {"appellant": POSTED["client"]})
    assert record.state == JobState.DISPUTED and record.escrow == 120
    assert record.locks() == {"0x" + "22" * 20: 50, verifier: 1000}  # 10 rewards behind a pass
    record = apply_event(record, "JobPaid", {})
    assert record.state == JobState.FINALIZED and record.escrow == 0 and record.locks() == {}


def test_apply_event_commit_from_posted_is_assignment_and_commit() -> None:
    """assignAndCommit emits only JobCommitted: from a posted job (or one whose lease another
    worker let expire) it sets the lease and the result at once."""
    posted = apply_event(None, "JobPosted", POSTED)
    committed = {"resultHash": b"\x05" * 32, "committedAt": 610, "committedBlock": 11,
                 "worker": "0x" + "44" * 20, "leaseExpiry": 900, "auditBps": 800}
    record = apply_event(posted, "JobCommitted", committed)
    assert record == replace(
        posted,
        worker="0x" + "44" * 20,
        lease_expiry=900,
        audit_bps=800,
        result_hash=b"\x05" * 32,
        committed_at=610,
        committed_block=11,
        state=JobState.COMMITTED,
    )
    assert record.holds_collateral and record.escrow == 110
    # a takeover: assigned to someone else, whose lease expired
    held = apply_event(posted, "JobAssigned", {"worker": "0x" + "22" * 20, "leaseExpiry": 500,
                                               "auditBps": 700})
    held = apply_event(held, "LeaseExpired", {"worker": "0x" + "22" * 20})
    assert apply_event(held, "JobCommitted", committed) == record


def test_apply_event_rejects_unknown_and_orphans() -> None:
    record = apply_event(None, "JobPosted", POSTED)
    with pytest.raises(UnknownEvent):
        apply_event(record, "Bogus", {})
    with pytest.raises(ValueError, match="no JobPosted"):
        apply_event(None, "JobPaid", {})


def test_record_tuple_roundtrip() -> None:
    record = apply_event(None, "JobPosted", POSTED)
    assert JobRecord.from_tuple(record.as_tuple()) == record


def test_sha256_names_are_exactly_64_lowercase_hex() -> None:
    from meshcompute.core.spec import is_sha256_hex

    good = "ab" * 32
    assert is_sha256_hex(good)
    for bad in (good + "\n", "\n" + good, good.upper(), good[:-1], good + "0", 42, None):
        assert not is_sha256_hex(bad), repr(bad)
