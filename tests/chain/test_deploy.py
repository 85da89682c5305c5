"""Deployment and bindings: the same tests on eth-tester and on anvil."""

from __future__ import annotations

import os

import pytest
from web3 import Web3

from meshcompute.chain.contracts import JobParams, MeshActor, mesh_sender
from meshcompute.chain.deploy import (
    DeployParams,
    deploy_contracts,
    load_deployment,
    save_deployment,
)
from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.core.job import JobState
from meshcompute.errors import ConfigError, DeploymentNotFound, InvalidRequest, NotFoundOnChain
from meshcompute.units import TOKEN


@pytest.fixture
def deployed(dev_chain):
    accounts = dev_chain.accounts
    sender = mesh_sender(dev_chain.w3(), accounts[0])
    deployment = deploy_contracts(
        sender,
        # eth-tester has no EIP-2935 history: the draw sees 256 blocks, so say blocks are 12 s
        DeployParams(challenge_window_s=10, min_audit_bps=0, audit_deterrence=False,
                     min_block_time_s=12.0),
        assigners=(accounts[1].address,),
        verifiers=(accounts[4].address,),
    )
    return dev_chain, deployment


def test_deploy_contracts_links_and_records(deployed, tmp_path) -> None:
    chain, deployment = deployed
    w3 = chain.w3()
    assert deployment.chain_id == w3.eth.chain_id
    for address in deployment.addresses.values():
        assert len(w3.eth.get_code(address)) > 0
    actor = MeshActor(w3, deployment, chain.accounts[0])
    assert actor.stakes.functions.jobMarket().call() == deployment.address("JobMarket")
    assert actor.market.functions.token().call() == deployment.address("MeshCredit")
    assert actor.config()["challenge_window_s"] == 10
    path = save_deployment(deployment, tmp_path)
    assert path.name == f"{deployment.chain_id}.json"
    assert load_deployment(tmp_path, deployment.chain_id) == deployment


def test_load_deployment_missing_names_chain_id(tmp_path) -> None:
    with pytest.raises(DeploymentNotFound, match="chain id 999"):
        load_deployment(tmp_path, 999)


def test_deploy_params_refuse_short_unbonding() -> None:
    with pytest.raises(ConfigError, match="unbonding_delay_s"):
        DeployParams(unbonding_delay_s=100, audit_window_s=600)


def test_job_lifecycle_through_bindings(deployed) -> None:
    chain, deployment = deployed
    w3 = chain.w3()
    admin, assigner, client_acct, worker_acct = chain.accounts[:4]
    admin_actor = MeshActor(w3, deployment, admin)
    client = MeshActor(w3, deployment, client_acct)
    worker = MeshActor(w3, deployment, worker_acct)
    admin_actor.mint(client.address, 1_000 * TOKEN)
    minted = admin_actor.mint(worker.address, 1_000 * TOKEN)
    assert [e.name for e in admin_actor.receipt_events(minted)] == ["Transfer"]
    assert admin_actor.receipt_events(minted, "JobMarket") == []
    worker.stake(100 * TOKEN)
    now = w3.eth.get_block("latest")["timestamp"]
    ids = client.post_jobs(
        [JobParams(os.urandom(32), 10 * TOKEN, TOKEN, 5 * TOKEN, now + 3600) for _ in range(3)]
    )
    assert ids == [1, 2, 3]
    ticket = AssignTicket(worker.address, tuple(ids), 0, now + 600)
    signature = sign_ticket(
        ticket, assigner, chain_id=deployment.chain_id, job_market=deployment.address("JobMarket")
    )
    worker.assign_and_commit(ticket, signature, [os.urandom(32) for _ in ids])
    assert worker.stake_of(worker.address).locked == 15 * TOKEN
    chain.increase_time(11)
    chain.mine(2)
    # a settlement batch as the market's settler sends it: no wait, a gas floor above the estimate
    tx_hash = admin_actor.finalize_batch(ids, wait=False, min_gas=1_000_000)
    receipt = admin_actor.wait_for_receipt(tx_hash)
    assert w3.eth.get_transaction(tx_hash)["gas"] == 1_000_000
    assert admin_actor.mined_receipt(tx_hash) == receipt
    assert admin_actor.mined_receipt(b"\x00" * 32) is None
    settled = admin_actor.receipt_events(receipt, "JobMarket")
    assert sorted(e.args["jobId"] for e in settled if e.name == "JobPaid") == ids
    assert {e.address for e in settled} == {deployment.address("JobMarket")}
    assert admin_actor.receipt_events(receipt) == settled  # no other contract's events
    records = admin_actor.job_records(ids)  # verified against the contract's digests
    assert {r.state for r in records.values()} == {JobState.FINALIZED}
    paid = [e for e in admin_actor.job_events(ids) if e.name == "JobPaid"]
    assert sorted(e.args["jobId"] for e in paid) == ids
    assert worker.stake_of(worker.address).locked == 0
    assert Web3.is_checksum_address(records[1].worker)


def test_custom_errors_decode_into_the_tree(deployed) -> None:
    chain, deployment = deployed
    client = MeshActor(chain.w3(), deployment, chain.accounts[2])
    with pytest.raises(NotFoundOnChain) as unknown:
        client.job(42)
    assert isinstance(unknown.value, LookupError)
    now = chain.w3().eth.get_block("latest")["timestamp"]
    with pytest.raises(InvalidRequest) as zero:
        client.post_job(JobParams(b"\x01" * 32, 0, 0, 0, now + 100), approve=False)
    assert zero.value.error_name == "ZeroReward"
    assert isinstance(zero.value, ValueError)
    assert "JobMarket reverted with ZeroReward()" in str(zero.value)


def test_deploy_refuses_windows_the_draw_cannot_see(dev_chain) -> None:
    """A draw's seed must stay readable through its verdict's window: the audit's through the
    challenge and audit windows, a later verdict's (seeded after the appeal that opened it)
    through the appeal and audit windows. At one block a second, 610 s of windows need 610
    blocks, more than blockhash's 256 (eth-tester) but well within EIP-2935's 8191 (anvil)."""
    from meshcompute.chain.deploy import check_draw_coverage, draw_coverage_blocks
    from meshcompute.errors import ConfigError

    params = DeployParams(challenge_window_s=10, appeal_window_s=10, audit_window_s=600,
                          min_block_time_s=1.0)
    with pytest.raises(ConfigError, match="800 s"):  # the appeal window is the longer here
        check_draw_coverage(DeployParams(challenge_window_s=10, appeal_window_s=200,
                                         audit_window_s=600, min_block_time_s=1.0), 256)
    coverage = draw_coverage_blocks(dev_chain.w3())
    if coverage == 256:
        with pytest.raises(ConfigError, match="610 blocks"):
            deploy_contracts(mesh_sender(dev_chain.w3(), dev_chain.accounts[0]), params)
    else:
        assert coverage == 8191
        check_draw_coverage(params, coverage)
        with pytest.raises(ConfigError, match="EIP-2935"):
            check_draw_coverage(DeployParams(audit_window_s=9000, min_block_time_s=1.0), coverage)
