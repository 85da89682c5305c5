"""Reentrancy: StakeManager and JobMarket deployed on ReentrantToken, a hostile ERC20 whose
transfers, once armed, first call ``target`` with ``payload`` and bubble up its revert.

Every token transfer of the two contracts happens inside a ``nonReentrant`` function, so a
callback into any guarded function of the same contract reverts the whole transaction with
ReentrancyGuardReentrantCall and leaves every balance as it was.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshcompute.chain.contracts import MeshActor, mesh_sender
from meshcompute.chain.deploy import ASSIGNER_ROLE, Deployment
from meshcompute.core.job import JobState
from meshcompute.errors import NotPermitted
from meshcompute.units import TOKEN
from tests.contracts.helpers import (
    assert_solvent,
    deploy,
    reverts,
    send,
    snapshot_balances,
)
from tests.contracts.world import FUNDS, STAKE, TEST_PARAMS, World

EVIDENCE = b"\xee" * 32


class HostileWorld(World):
    """A World whose credit token is ReentrantToken (MeshCredit's ABI covers the calls the
    bindings make on it: balanceOf, allowance, approve, transfer, mint)."""

    token: object = None

    def arm(self, target: str, call) -> None:
        """Arm the token: its next transfers call ``target`` with ``call``'s calldata."""
        payload = call._encode_transaction_data()
        send(self.admin, self.token.functions.arm(target, payload))

    def disarm(self) -> None:
        send(self.admin, self.token.functions.disarm())


def build_hostile_world(chain) -> HostileWorld:
    w3 = chain.w3()
    accounts = chain.accounts
    admin_sender = mesh_sender(w3, accounts[0])
    admin = accounts[0].address
    p = TEST_PARAMS
    first_block = w3.eth.block_number + 1
    token = deploy(admin_sender, "ReentrantToken")
    stakes = deploy(admin_sender, "StakeManager", token.address, admin, p.unbonding_delay_s)
    config = (p.fee_bps, p.min_audit_bps, p.challenge_window_s, p.audit_window_s, p.appeal_window_s,
              p.audit_deterrence)
    registry = deploy(admin_sender, "VerifierRegistry", token.address, admin, p.verifier_deposit,
                      p.unbonding_delay_s)
    market = deploy(admin_sender, "JobMarket", token.address, stakes.address, registry.address,
                    admin, admin, config)
    admin_sender.send(stakes.functions.setJobMarket(market.address))
    admin_sender.send(registry.functions.setJobMarket(market.address))
    admin_sender.send(market.functions.grantRole(ASSIGNER_ROLE, accounts[1].address))
    admin_sender.send(token.functions.mint(admin, 2 * p.verifier_deposit))
    admin_sender.send(token.functions.approve(registry.address, 2 * p.verifier_deposit))
    for i in (7, 8):
        admin_sender.send(registry.functions.joinFor(accounts[i].address, p.verifier_deposit))
    deployment = Deployment(
        chain_id=admin_sender.chain_id,
        block=first_block,
        addresses={
            "MeshCredit": token.address,
            "StakeManager": stakes.address,
            "VerifierRegistry": registry.address,
            "JobMarket": market.address,
        },
        deployer=admin,
        params=p,
    )

    def actor(i: int) -> MeshActor:
        return MeshActor(w3, deployment, accounts[i])

    world = HostileWorld(
        chain=chain,
        deployment=deployment,
        admin=MeshActor(w3, deployment, accounts[0], admin_sender),
        assigner=accounts[1],
        clients=[actor(2), actor(3)],
        workers=[actor(4), actor(5), actor(6)],
        verifiers=[actor(7), actor(8)],
        outsider=actor(9),
    )
    world.token = token
    world.actors = [world.admin, *world.clients, *world.workers, *world.verifiers, world.outsider]
    for a in [*world.clients, *world.workers, *world.verifiers, world.outsider]:
        world.admin.mint(a.address, FUNDS)
    for w in [*world.workers, *world.verifiers]:  # a failing verdict locks a verifier bond
        w.stake(STAKE)
    return world


@pytest.fixture(scope="module")
def _hostile(anvil) -> Iterator[HostileWorld]:
    snapshot = anvil.snapshot()
    world = build_hostile_world(anvil)
    yield world
    anvil.revert(snapshot)
    world.resync()


@pytest.fixture
def hw(_hostile: HostileWorld, anvil) -> Iterator[HostileWorld]:
    snapshot = anvil.snapshot()
    yield _hostile
    anvil.revert(snapshot)
    _hostile.resync()


def _paid_job(world: HostileWorld, worker=None) -> int:
    worker = worker or world.workers[0]
    job_id = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)
    return job_id


def _settleable_job(world: HostileWorld, worker=None) -> int:
    worker = worker or world.workers[1]
    job_id = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    return job_id


def _assert_blocked(world: HostileWorld, action, family=NotPermitted) -> None:
    before = snapshot_balances(world)
    digests = {i: world.admin.job_digest(i) for i in range(1, world.admin.next_job_id())}
    with reverts("ReentrancyGuardReentrantCall", family):
        action()
    world.disarm()
    assert snapshot_balances(world) == before
    assert {i: world.admin.job_digest(i) for i in digests} == digests
    assert_solvent(world)


# ------------------------------------------------------------------------ the hostile world


def test_finalize_and_withdraw_work_on_unarmed_hostile_token(hw: HostileWorld) -> None:
    """Unarmed, the hostile token is a plain ERC20: the market works on it."""
    worker = hw.workers[0]
    job_id = _paid_job(hw, worker)
    assert hw.job(job_id).state == JobState.FINALIZED
    worker.withdraw()
    assert_solvent(hw)


# ------------------------------------------------------------------------- JobMarket


def test_withdraw_reentered_from_withdraw_transfer_reverts(hw: HostileWorld) -> None:
    worker = hw.workers[0]
    _paid_job(hw, worker)
    hw.arm(hw.market.address, hw.market.functions.withdraw())
    _assert_blocked(hw, worker.withdraw)
    worker.withdraw()  # disarmed, the same withdrawal goes through once
    assert worker.account_of(worker.address).withdrawable == 0


@pytest.mark.parametrize("batch", [False, True], ids=["finalize", "finalizeBatch"])
def test_finalize_reentered_from_withdraw_transfer_reverts(hw: HostileWorld, batch: bool) -> None:
    worker = hw.workers[0]
    _paid_job(hw, worker)
    job_id = _settleable_job(hw)
    record = hw.job(job_id)
    if batch:
        call = hw.market.functions.finalizeBatch([job_id], [record.as_tuple()])
    else:
        call = hw.market.functions.finalize(job_id, record.as_tuple())
    hw.arm(hw.market.address, call)
    _assert_blocked(hw, worker.withdraw)
    assert hw.job(job_id).state == JobState.COMMITTED


@pytest.mark.parametrize("batch", [False, True], ids=["finalize", "finalizeBatch"])
def test_finalize_reentered_from_reclaim_transfer_reverts(hw: HostileWorld, batch: bool) -> None:
    client = hw.clients[0]
    (stale,) = hw.post(client, deadline=hw.now() + 100)
    job_id = _settleable_job(hw)
    hw.advance(100)
    record = hw.job(job_id)
    if batch:
        call = hw.market.functions.finalizeBatch([job_id], [record.as_tuple()])
    else:
        call = hw.market.functions.finalize(job_id, record.as_tuple())
    hw.arm(hw.market.address, call)
    _assert_blocked(hw, lambda: client.reclaim(stale))
    assert hw.job(stale).state == JobState.POSTED


def test_withdraw_reentered_from_slash_transfer_reverts(hw: HostileWorld) -> None:
    """A slash moves collateral from the StakeManager to the market inside finalize: a
    callback into the market's withdraw is refused too."""
    worker = hw.workers[0]
    _paid_job(hw, worker)
    job_id = hw.audited_job(worker=hw.workers[1])
    hw.verifier_for(job_id).resolve_audit(job_id, False, EVIDENCE)
    hw.advance(TEST_PARAMS.appeal_window_s + 1)
    hw.arm(hw.market.address, hw.market.functions.withdraw())
    _assert_blocked(hw, lambda: hw.outsider.finalize(job_id))
    assert hw.job(job_id).state == JobState.AUDIT_FAILED


# ---------------------------------------------------------------------- StakeManager


def test_withdrawUnbonded_reentered_from_its_transfer_reverts(hw: HostileWorld) -> None:
    worker = hw.workers[0]
    worker.unstake(100 * TOKEN)
    hw.advance(TEST_PARAMS.unbonding_delay_s)
    hw.arm(hw.admin.stakes.address, hw.admin.stakes.functions.withdrawUnbonded())
    _assert_blocked(hw, worker.withdraw_unbonded)
    worker.withdraw_unbonded()
    assert worker.stake_of(worker.address).unbonding == 0


def test_unstake_reentered_from_stake_transfer_reverts(hw: HostileWorld) -> None:
    worker = hw.workers[0]
    worker.approve(hw.admin.stakes.address, TOKEN)
    hw.arm(hw.admin.stakes.address, hw.admin.stakes.functions.unstake(1))
    _assert_blocked(hw, lambda: worker.stake(TOKEN, approve=False))


def test_unstake_reentered_from_withdrawUnbonded_transfer_reverts(hw: HostileWorld) -> None:
    worker = hw.workers[0]
    worker.unstake(100 * TOKEN)
    hw.advance(TEST_PARAMS.unbonding_delay_s)
    hw.arm(hw.admin.stakes.address, hw.admin.stakes.functions.unstake(1))
    _assert_blocked(hw, worker.withdraw_unbonded)


def test_withdrawUnbonded_reentered_from_slash_transfer_reverts(hw: HostileWorld) -> None:
    job_id = hw.audited_job(worker=hw.workers[1])
    hw.verifier_for(job_id).resolve_audit(job_id, False, EVIDENCE)
    hw.advance(TEST_PARAMS.appeal_window_s + 1)
    hw.arm(hw.admin.stakes.address, hw.admin.stakes.functions.withdrawUnbonded())
    _assert_blocked(hw, lambda: hw.outsider.finalize(job_id))


# ------------------------------------------------------------- a contract as receiver


def test_withdraw_by_contract_receiver_pays_once(hw: HostileWorld) -> None:
    """The token contract itself is the fee recipient. It can call the market's withdraw
    from inside another contract's transfer (StakeManager's guard is not the market's), and
    is paid exactly what it is owed; a second try finds nothing, and the transaction that
    carried it reverts whole."""
    token = hw.token.address
    send(hw.admin, hw.market.functions.setFeeRecipient(token))
    worker = hw.workers[0]
    _paid_job(hw, worker)
    _paid_job(hw, worker)
    owed = hw.admin.account_of(token).withdrawable
    assert owed > 0
    balance = hw.admin.balance_of(token)

    worker.unstake(2)
    hw.advance(TEST_PARAMS.unbonding_delay_s)
    hw.arm(hw.market.address, hw.market.functions.withdraw())
    worker.withdraw_unbonded()  # its transfer makes the token withdraw its fees
    assert hw.admin.balance_of(token) == balance + owed
    assert hw.admin.account_of(token).withdrawable == 0
    assert hw.admin.account_of(token).withdrawn == owed
    assert_solvent(hw)

    worker.unstake(1)
    hw.advance(TEST_PARAMS.unbonding_delay_s)
    before = snapshot_balances(hw)
    with reverts("NothingToWithdraw") as e:
        worker.withdraw_unbonded()
    assert list(e.value.args_dict.values()) == [token]
    hw.disarm()
    assert snapshot_balances(hw) == before
    assert hw.admin.balance_of(token) == balance + owed
    assert_solvent(hw)
