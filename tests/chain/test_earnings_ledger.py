"""The earnings ledger the dashboard keeps (meshcompute/chain/earnings.py): extended block by
block, every report equals a fresh read of the whole history (``mesh earnings --json``), and a
reorganization under what it kept makes it read the history again instead of keeping jobs the
chain no longer has."""

from __future__ import annotations

import pytest

from meshcompute.chain.contracts import MeshContracts
from meshcompute.chain.earnings import CONFIRMATIONS, EarningsLedger, earnings_report
from tests.contracts.world import TEST_PARAMS, World

pytestmark = pytest.mark.anvil

EVIDENCE = b"\x0e" * 32


def _paid(world: World, worker, n: int = 2) -> list[int]:
    jobs = [world.committed_job(worker=worker) for _ in range(n)]
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize_batch(jobs)
    return jobs


def _slashed(world: World, worker) -> int:
    job = world.audited_job(worker=worker)
    world.verifier_for(job).resolve_audit(job, False, EVIDENCE)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize(job)
    return job


def _fresh(contracts: MeshContracts, who: str) -> dict:
    """The whole history read the other way: the filtered report's path (each event kind
    read on its own from the deployment, the held jobs by open_jobs), filtered from time 0."""
    report = earnings_report(contracts, who, since_block_time=0).to_json()
    assert report.pop("filters") == {"since_block_time": 0}
    return {**report, "filters": {}}


def _job_ids(report: dict, status: str) -> list[int]:
    return [row["job_id"] for row in report["rows"] if row["status"] == status]


def test_extended_reports_equal_a_fresh_read(world: World) -> None:
    contracts = MeshContracts(world.w3, world.deployment)
    me = world.workers[0]
    ledger = EarningsLedger(contracts)
    first = _paid(world, me)
    world.chain.mine(CONFIRMATIONS + 1)
    report = ledger.report(me.address).to_json()
    assert report == _fresh(contracts, me.address)
    assert _job_ids(report, "final") == first
    assert ledger.rebuilds == 1
    # more history: paid, slashed, pending, and another worker's job (not in the report)
    second = _paid(world, me, 3)
    slashed = _slashed(world, me)
    world.committed_job(worker=world.workers[1])
    pending = world.committed_job(worker=me)
    for _ in range(2):  # the newest blocks (above the kept scan) and once they are kept
        report = ledger.report(me.address).to_json()
        assert report == _fresh(contracts, me.address)
        world.chain.mine(CONFIRMATIONS + 1)
    assert _job_ids(report, "final") == first + second
    assert _job_ids(report, "pending") == [pending]
    assert [s["job_id"] for s in report["slashes"]] == [slashed]
    assert ledger.rebuilds == 1, "the kept history was read again instead of extended"


def test_a_reorganization_under_the_kept_history_reads_it_again(world: World, anvil) -> None:
    contracts = MeshContracts(world.w3, world.deployment)
    me = world.workers[0]
    ledger = EarningsLedger(contracts)
    before = _paid(world, me)
    fork = anvil.snapshot()
    gone = _paid(world, me)
    world.chain.mine(CONFIRMATIONS + 2)
    assert _job_ids(ledger.report(me.address).to_json(), "final") == before + gone
    kept = ledger._scans[me.address].block
    # the chain reorganizes: the blocks that paid `gone` are replaced by others, higher (so
    # the kept block is below the new head's confirmations: only its hash tells)
    anvil.revert(fork)
    world.resync()
    other = _paid(world, me, 1)
    world.chain.mine(max(1, kept + CONFIRMATIONS + 1 - int(world.w3.eth.block_number)))
    assert int(world.w3.eth.block_number) - CONFIRMATIONS > kept
    report = ledger.report(me.address).to_json()
    assert report == _fresh(contracts, me.address)
    assert _job_ids(report, "final") == before + other
    assert ledger.rebuilds == 2


def test_an_address_with_no_history_is_not_kept(world: World) -> None:
    """Views of random addresses cannot push the providers' kept histories out."""
    contracts = MeshContracts(world.w3, world.deployment)
    ledger = EarningsLedger(contracts, size=2)
    me = world.workers[0]
    _paid(world, me)
    world.chain.mine(CONFIRMATIONS + 1)
    ledger.report(me.address)
    for i in range(5):
        report = ledger.report("0x" + f"{i + 1:040x}").to_json()
        assert report["rows"] == [] and report["totals"]["earned"]["wei"] == "0"
    assert list(ledger._scans) == [me.address]
    ledger.report(me.address)
    assert ledger.rebuilds == 6  # the provider once, each empty address once
