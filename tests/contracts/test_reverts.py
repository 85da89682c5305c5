"""Every revert of every external state-changing function of MeshCredit, StakeManager and
JobMarket, asserted by the decoded custom error's name (and, where it says something, its
arguments). Functions are grouped by contract, in source order; each test is
``test_<function>_reverts_<when>``.
"""

from __future__ import annotations

import pytest

from meshcompute.chain import testchain
from meshcompute.chain.contracts import mesh_sender
from meshcompute.chain.deploy import MINTER_ROLE, PAUSER_ROLE
from meshcompute.chain.tickets import sign_permit
from meshcompute.core.job import JobState
from meshcompute.errors import (
    ContractRevert,
    InsufficientFunds,
    InvalidRequest,
    NotFoundOnChain,
    NotPermitted,
    Paused,
    StaleJobRecord,
    TooEarly,
    TooLate,
    WrongJobState,
)
from meshcompute.units import TOKEN
from tests.contracts.helpers import (
    ZERO,
    appealed_job,
    at,
    deploy,
    failed_job,
    forged,
    reverts,
    send,
)
from tests.contracts.world import FUNDS, STAKE, TEST_PARAMS, World

ADMIN_ROLE = b"\x00" * 32
RESULT = b"\x42" * 32
EVIDENCE = b"\xee" * 32
CONFIG = (
    TEST_PARAMS.fee_bps,
    TEST_PARAMS.min_audit_bps,
    TEST_PARAMS.challenge_window_s,
    TEST_PARAMS.audit_window_s,
    TEST_PARAMS.appeal_window_s,
    TEST_PARAMS.audit_deterrence,
)
WINDOWS = (
    TEST_PARAMS.challenge_window_s + 4 * TEST_PARAMS.audit_window_s + TEST_PARAMS.appeal_window_s
)


def _posted(world: World, **kw):
    (job_id,) = world.post(**kw)
    return job_id, world.job(job_id)


def _assigned(world: World, worker=None, **kw):
    worker = worker or world.workers[0]
    job_id, _ = _posted(world, **kw)
    world.assign(worker, [job_id])
    return job_id, world.job(job_id)


def _earn(world: World, worker=None) -> int:
    """A job paid to ``worker`` (withdrawable > 0); returns its id."""
    worker = worker or world.workers[0]
    job_id = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)
    return job_id


# ============================================================================ MeshCredit


def test_mint_reverts_without_minter_role(world: World) -> None:
    outsider = world.outsider
    with reverts(
        "AccessControlUnauthorizedAccount",
        NotPermitted,
        account=outsider.address,
        neededRole=MINTER_ROLE,
    ) as e:
        outsider.mint(outsider.address, TOKEN)
    assert isinstance(e.value, PermissionError)


def test_mint_reverts_to_zero_address_or_past_total_supply(world: World) -> None:
    admin = world.admin
    with reverts("ERC20InvalidReceiver", receiver=ZERO):
        admin.mint(ZERO, 1)
    supply = int(admin.credit.functions.totalSupply().call())
    with reverts("Panic", code=0x11):  # checked arithmetic: totalSupply would overflow
        admin.mint(admin.address, 2**256 - supply)


def test_faucet_reverts_when_disabled_off_dev_chain() -> None:
    """Off chain id 31337 (eth-tester's chain id differs) and without enableFaucet there is
    no faucet; with enableFaucet the same chain drips."""
    chain = testchain.TesterChain()
    assert chain.chain_id != 31337
    sender = mesh_sender(chain.w3(), chain.accounts[0])
    admin = chain.accounts[0].address
    disabled = deploy(sender, "MeshCredit", admin, False, 100 * TOKEN, 3600)
    assert disabled.functions.faucetEnabled().call() is False
    with reverts("FaucetDisabled", NotPermitted) as e:
        sender.send(disabled.functions.faucet())
    assert isinstance(e.value, PermissionError)

    enabled = deploy(sender, "MeshCredit", admin, True, 100 * TOKEN, 3600)
    sender.send(enabled.functions.faucet())
    assert enabled.functions.balanceOf(admin).call() == 100 * TOKEN


def test_faucet_reverts_during_cooldown(world: World) -> None:
    outsider = world.outsider
    outsider.faucet()
    last = world.now()
    cooldown = int(outsider.credit.functions.faucetCooldown().call())
    with reverts("FaucetCooldown", TooEarly, account=outsider.address, availableAt=last + cooldown):
        outsider.faucet()
    world.advance(cooldown)
    outsider.faucet()  # open again


def test_transfer_reverts_beyond_balance_or_to_zero(world: World) -> None:
    outsider = world.outsider
    with reverts("ERC20InsufficientBalance", InsufficientFunds, balance=FUNDS, needed=FUNDS + 1):
        outsider.transfer(world.admin.address, FUNDS + 1)
    with reverts("ERC20InvalidReceiver", receiver=ZERO):
        outsider.transfer(ZERO, 1)


def test_approve_reverts_for_zero_spender(world: World) -> None:
    with reverts("ERC20InvalidSpender", spender=ZERO):
        world.outsider.approve(ZERO, 1)


def test_transferFrom_reverts_beyond_allowance(world: World) -> None:
    client, outsider = world.clients[0], world.outsider
    client.approve(outsider.address, 5)
    call = outsider.credit.functions.transferFrom(client.address, outsider.address, 6)
    with reverts("ERC20InsufficientAllowance", InsufficientFunds, allowance=5, needed=6):
        send(outsider, call)


def test_permit_reverts_when_expired_or_signed_by_another_key(world: World) -> None:
    client, outsider = world.clients[0], world.outsider
    credit = client.credit

    def permit(signer, deadline):
        p = sign_permit(
            signer,
            spender=outsider.address,
            value=TOKEN,
            nonce=int(credit.functions.nonces(client.address).call()),
            deadline=deadline,
            chain_id=world.deployment.chain_id,
            token=credit.address,
        )
        return credit.functions.permit(
            client.address, outsider.address, p.value, p.deadline, p.v, p.r, p.s
        )

    expired = world.now() - 1
    with reverts("ERC2612ExpiredSignature", TooLate, deadline=expired) as e:
        send(outsider, permit(client.account, expired))
    assert isinstance(e.value, TimeoutError)
    with reverts("ERC2612InvalidSigner", NotPermitted, owner=client.address):
        send(outsider, permit(outsider.account, world.now() + 3600))
    # A used permit cannot be replayed: the nonce moved on, so the signer no longer matches.
    good = permit(client.account, world.now() + 3600)
    send(outsider, good)
    with reverts("ERC2612InvalidSigner", NotPermitted):
        send(outsider, good)


# ====================================================================== AccessControl (all)


@pytest.mark.parametrize("contract_name", ["MeshCredit", "StakeManager", "JobMarket"])
def test_grantRole_reverts_without_admin_role(world: World, contract_name: str) -> None:
    outsider = world.outsider
    contract = at(world.w3, contract_name, world.deployment.address(contract_name))
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, neededRole=ADMIN_ROLE):
        send(outsider, contract.functions.grantRole(ADMIN_ROLE, outsider.address))


@pytest.mark.parametrize("contract_name", ["MeshCredit", "StakeManager", "JobMarket"])
def test_revokeRole_reverts_without_admin_role(world: World, contract_name: str) -> None:
    outsider = world.outsider
    contract = at(world.w3, contract_name, world.deployment.address(contract_name))
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, account=outsider.address):
        send(outsider, contract.functions.revokeRole(ADMIN_ROLE, world.admin.address))


@pytest.mark.parametrize("contract_name", ["MeshCredit", "StakeManager", "JobMarket"])
def test_renounceRole_reverts_for_another_account(world: World, contract_name: str) -> None:
    outsider = world.outsider
    contract = at(world.w3, contract_name, world.deployment.address(contract_name))
    with reverts("AccessControlBadConfirmation"):
        send(outsider, contract.functions.renounceRole(ADMIN_ROLE, world.admin.address))


# ========================================================================== StakeManager


@pytest.mark.parametrize("which", ["token", "admin"])
def test_StakeManager_constructor_reverts_on_zero_address(world: World, which: str) -> None:
    token = ZERO if which == "token" else world.deployment.address("MeshCredit")
    admin = ZERO if which == "admin" else world.admin.address
    with reverts("ZeroAddress", InvalidRequest):
        deploy(world.admin.sender, "StakeManager", token, admin, 3600)


def _fresh_stakes(world: World):
    return deploy(
        world.admin.sender,
        "StakeManager",
        world.deployment.address("MeshCredit"),
        world.admin.address,
        TEST_PARAMS.unbonding_delay_s,
    )


def test_setJobMarket_reverts_without_admin_role(world: World) -> None:
    stakes = _fresh_stakes(world)
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, neededRole=ADMIN_ROLE):
        send(world.outsider, stakes.functions.setJobMarket(world.outsider.address))


def test_setJobMarket_reverts_when_already_set(world: World) -> None:
    market = world.deployment.address("JobMarket")
    with reverts("JobMarketAlreadySet", WrongJobState, jobMarket=market):
        send(world.admin, world.admin.stakes.functions.setJobMarket(world.outsider.address))


def test_setJobMarket_reverts_on_zero_address(world: World) -> None:
    stakes = _fresh_stakes(world)
    with reverts("ZeroAddress", InvalidRequest):
        send(world.admin, stakes.functions.setJobMarket(ZERO))


def test_stake_reverts_on_zero_amount(world: World) -> None:
    with reverts("ZeroAmount", InvalidRequest):
        world.outsider.stake(0)


def test_stake_reverts_on_amount_above_uint128(world: World) -> None:
    with reverts("AmountTooLarge", InvalidRequest, amount=2**128):
        world.outsider.stake(2**128, approve=False)


def test_stake_reverts_without_allowance_or_balance(world: World) -> None:
    outsider = world.outsider
    with reverts("ERC20InsufficientAllowance", InsufficientFunds, allowance=0, needed=TOKEN):
        outsider.stake(TOKEN, approve=False)
    with reverts("ERC20InsufficientBalance", InsufficientFunds, balance=FUNDS):
        outsider.stake(FUNDS + 1)


def test_unstake_reverts_on_zero_amount(world: World) -> None:
    with reverts("ZeroAmount", InvalidRequest):
        world.workers[0].unstake(0)


def test_unstake_reverts_beyond_free_stake(world: World) -> None:
    worker = world.workers[0]
    with reverts(
        "InsufficientFreeStake", InsufficientFunds, staker=worker.address, available=STAKE
    ):
        worker.unstake(STAKE + 1)
    # Locked collateral cannot be unstaked either.
    _assigned(world, worker, collateral=STAKE)
    with reverts("InsufficientFreeStake", InsufficientFunds, available=0, required=1):
        worker.unstake(1)


def test_withdrawUnbonded_reverts_with_nothing_unbonding(world: World) -> None:
    worker = world.workers[0]
    with reverts("NothingToWithdraw", InsufficientFunds, staker=worker.address):
        worker.withdraw_unbonded()


def test_withdrawUnbonded_reverts_while_unbonding(world: World) -> None:
    worker = world.workers[0]
    worker.unstake(TOKEN)
    release = worker.stake_of(worker.address).release_at
    assert release == world.now() + TEST_PARAMS.unbonding_delay_s
    with reverts("StillUnbonding", TooEarly, staker=worker.address, releaseAt=release):
        worker.withdraw_unbonded()
    world.advance(TEST_PARAMS.unbonding_delay_s - 10)
    with reverts("StillUnbonding", TooEarly):
        worker.withdraw_unbonded()


@pytest.mark.parametrize(
    "call",
    [
        lambda s, a: s.functions.lock(a, 1),
        lambda s, a: s.functions.unlock(a, 1),
        lambda s, a: s.functions.slash(a, 1, a),
    ],
    ids=["lock", "unlock", "slash"],
)
def test_lock_unlock_slash_revert_for_caller_not_job_market(world: World, call) -> None:
    outsider = world.outsider
    fn = call(outsider.stakes, world.workers[0].address)
    with reverts("CallerNotJobMarket", NotPermitted, caller=outsider.address):
        send(outsider, fn)


def test_lock_unlock_slash_revert_beyond_stake(world: World) -> None:
    """With an account as its job market, a StakeManager's own checks on lock, unlock and
    slash are reachable directly."""
    stakes = _fresh_stakes(world)
    market, worker = world.outsider, world.workers[0]
    send(world.admin, stakes.functions.setJobMarket(market.address))
    worker.approve(stakes.address, 100)
    send(worker, stakes.functions.stake(100))
    with reverts("InsufficientFreeStake", InsufficientFunds, available=100, required=101):
        send(market, stakes.functions.lock(worker.address, 101))
    send(market, stakes.functions.lock(worker.address, 60))
    with reverts("InsufficientLockedStake", InsufficientFunds, available=60, required=61):
        send(market, stakes.functions.unlock(worker.address, 61))
    with reverts("InsufficientLockedStake", InsufficientFunds, available=60, required=61):
        send(market, stakes.functions.slash(worker.address, 61, market.address))


# ============================================================================= JobMarket


def _deploy_market(world: World, token=None, stakes=None, admin=None, fee=None, config=CONFIG,
                   registry=None):
    return deploy(
        world.admin.sender,
        "JobMarket",
        token or world.deployment.address("MeshCredit"),
        stakes or world.deployment.address("StakeManager"),
        registry or world.deployment.address("VerifierRegistry"),
        admin or world.admin.address,
        fee or world.admin.address,
        config,
    )


@pytest.mark.parametrize("which", ["token", "stakes", "admin", "feeRecipient"])
def test_JobMarket_constructor_reverts_on_zero_address(world: World, which: str) -> None:
    kw = {"token": None, "stakes": None, "admin": None, "fee": None}
    kw[{"feeRecipient": "fee"}.get(which, which)] = ZERO
    with reverts("ZeroAddress", InvalidRequest):
        _deploy_market(world, **kw)


def test_JobMarket_constructor_reverts_on_token_mismatch(world: World) -> None:
    other = deploy(world.admin.sender, "MeshCredit", world.admin.address, False, 0, 0)
    with reverts("TokenMismatch", InvalidRequest):
        _deploy_market(world, token=other.address)


@pytest.mark.parametrize("field", [0, 1], ids=["feeBps", "minAuditBps"])
def test_JobMarket_constructor_reverts_on_bps_above_10000(world: World, field: int) -> None:
    config = list(CONFIG)
    config[field] = 10_001
    with reverts("InvalidBps", InvalidRequest, bps=10_001):
        _deploy_market(world, config=tuple(config))


def test_JobMarket_constructor_reverts_when_unbonding_not_longer_than_windows(
    world: World,
) -> None:
    delay = TEST_PARAMS.unbonding_delay_s
    # windows == delay: not strictly longer, refused.
    # the longest path: audit, void confirmation, appeal, escalation and its verdict's windows
    # after the challenge
    appeal = (delay - CONFIG[2] - 4 * CONFIG[3]) // 2
    config = (*CONFIG[:3], CONFIG[3], appeal, CONFIG[5])
    assert config[2] + 4 * config[3] + 2 * config[4] == delay
    with reverts("UnbondingTooShort", InvalidRequest, unbondingDelay=delay, windows=delay):
        _deploy_market(world, config=config)
    # two seconds less is fine (the registry's exit delay, equal here, must also exceed the
    # windows by the second in which a timeout is first settled)
    _deploy_market(world, config=(*config[:4], config[4] - 1, config[5]))


def test_JobMarket_constructor_reverts_when_verifier_deposits_unbind_before_windows_close(
    world: World,
) -> None:
    """A registry whose deposits could be withdrawn before a verdict window closes would let a
    silent verifier run from its burn: refused."""
    windows = CONFIG[2] + 4 * CONFIG[3] + 2 * CONFIG[4]

    def registry(exit_delay: int) -> str:
        return deploy(world.admin.sender, "VerifierRegistry", world.deployment.address("MeshCredit"),
                      world.admin.address, TEST_PARAMS.verifier_deposit, exit_delay).address

    # A timeout is settled one second after the last window at the earliest, and the registry
    # burns silence only while every candidate's deposit is surely bound: a delay of windows + 1
    # would let a timeout settled in that very second go unpunished.
    for exit_delay in (windows, windows + 1):
        with reverts("UnbondingTooShort", InvalidRequest, unbondingDelay=exit_delay,
                     windows=windows + 1):
            _deploy_market(world, registry=registry(exit_delay))
    _deploy_market(world, registry=registry(windows + 2))


# --------------------------------------------------------------------------- postJob(s)


def test_postJob_reverts_on_zero_reward(world: World) -> None:
    with reverts("ZeroReward", InvalidRequest):
        world.clients[0].post_job(world.params(reward=0))


@pytest.mark.parametrize("offset", [0, -100])
def test_postJob_reverts_on_deadline_not_in_future(world: World, offset: int) -> None:
    deadline = world.now() + offset
    with reverts("DeadlineInPast", InvalidRequest, deadline=deadline):
        world.clients[0].post_job(world.params(deadline=deadline))


def test_postJob_reverts_on_audit_bps_above_10000(world: World) -> None:
    with reverts("InvalidBps", InvalidRequest, bps=10_001):
        world.clients[0].post_job(world.params(audit_bps=10_001))
    world.clients[0].post_job(world.params(audit_bps=10_000))


def test_postJob_reverts_when_paused(world: World) -> None:
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        world.clients[0].post_job(world.params())


def test_postJob_reverts_without_allowance(world: World) -> None:
    params = world.params()
    needed = params.reward + params.audit_fee
    with reverts("ERC20InsufficientAllowance", InsufficientFunds, allowance=0, needed=needed):
        world.clients[0].post_job(params, approve=False)


def test_postJob_reverts_beyond_balance(world: World) -> None:
    with reverts("ERC20InsufficientBalance", InsufficientFunds, balance=FUNDS) as e:
        world.outsider.post_job(world.params(reward=FUNDS, audit_fee=1))
    assert isinstance(e.value, ValueError)


def test_postJobs_reverts_on_empty_batch(world: World) -> None:
    with reverts("EmptyBatch", InvalidRequest):
        send(world.clients[0], world.market.functions.postJobs([]))


def test_postJobs_reverts_when_any_job_is_invalid(world: World) -> None:
    client = world.clients[0]
    first = client.next_job_id()
    with reverts("ZeroReward", InvalidRequest):
        client.post_jobs([world.params(), world.params(reward=0)])
    assert client.next_job_id() == first  # nothing posted


def test_postJobs_reverts_when_paused_or_without_allowance(world: World) -> None:
    client = world.clients[0]
    with reverts("ERC20InsufficientAllowance", InsufficientFunds):
        client.post_jobs([world.params(), world.params()], approve=False)
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        client.post_jobs([world.params()])


def test_postJobsWithPermit_reverts_when_paused_or_empty(world: World) -> None:
    client = world.clients[0]
    with reverts("EmptyBatch", InvalidRequest):
        client.post_jobs_with_permit([])
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        client.post_jobs_with_permit([world.params()])


def test_postJobsWithPermit_ignores_a_bad_permit_and_needs_the_allowance(world: World) -> None:
    client = world.clients[0]
    params = [world.params()]
    bad = (10**30, world.now() - 1, 27, b"\x01" * 32, b"\x02" * 32)  # expired, wrong signer
    call = world.market.functions.postJobsWithPermit([p.as_tuple() for p in params], *bad)
    with reverts("ERC20InsufficientAllowance", InsufficientFunds, allowance=0):
        send(client, call)


# ------------------------------------------------------------------------------ assign


def test_assign_reverts_on_empty_batch(world: World) -> None:
    worker = world.workers[0]
    ticket, sig = world.ticket(worker, [])
    with reverts("EmptyBatch", InvalidRequest):
        worker.assign(ticket, sig, records=[])


def test_assign_reverts_on_length_mismatch(world: World) -> None:
    worker = world.workers[0]
    a, b = world.post(n=2)
    ticket, sig = world.ticket(worker, [a, b])
    call = world.market.functions.assign([world.job(a).as_tuple()], ticket.as_tuple(), sig)
    with reverts("LengthMismatch", InvalidRequest):
        send(worker, call)


def test_assign_reverts_for_another_worker(world: World) -> None:
    w0, w1 = world.workers[0], world.workers[1]
    (job_id,) = world.post()
    ticket, sig = world.ticket(w0, [job_id])
    with reverts("TicketWorkerMismatch", NotPermitted, worker=w0.address, caller=w1.address):
        w1.assign(ticket, sig)


def test_assign_reverts_on_expired_ticket(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], lease_s=0)  # expires at the latest block
    with reverts("TicketExpired", TooLate, leaseExpiry=ticket.lease_expiry) as e:
        worker.assign(ticket, sig)
    assert isinstance(e.value, TimeoutError)


def test_assign_reverts_on_ticket_audit_bps_above_10000(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], audit_bps=10_001)
    with reverts("InvalidBps", InvalidRequest, bps=10_001):
        worker.assign(ticket, sig)


def test_assign_reverts_on_signature_of_non_assigner(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], signer=world.outsider.account)
    with reverts("InvalidTicketSigner", NotPermitted, signer=world.outsider.address):
        worker.assign(ticket, sig)


def test_assign_reverts_on_unknown_job(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _posted(world)
    ticket, sig = world.ticket(worker, [job_id + 1])
    with reverts("UnknownJob", NotFoundOnChain, jobId=job_id + 1) as e:
        worker.assign(ticket, sig, records=[record])
    assert isinstance(e.value, LookupError)


def test_assign_reverts_on_forged_record(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _posted(world)
    ticket, sig = world.ticket(worker, [job_id])
    with reverts("JobRecordMismatch", StaleJobRecord, jobId=job_id):
        worker.assign(ticket, sig, records=[forged(record, collateral=0)])


def test_assign_reverts_after_job_deadline(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _posted(world, deadline=world.now() + 100)
    world.advance(200)
    ticket, sig = world.ticket(worker, [job_id])
    with reverts("JobDeadlinePassed", TooLate, jobId=job_id, deadline=record.deadline):
        worker.assign(ticket, sig)


def test_assign_reverts_while_another_worker_holds_the_lease(world: World) -> None:
    w0, w1 = world.workers[0], world.workers[1]
    job_id, record = _assigned(world, w0)
    ticket, sig = world.ticket(w1, [job_id])
    with reverts(
        "JobLeased",
        WrongJobState,
        jobId=job_id,
        worker=w0.address,
        leaseExpiry=record.lease_expiry,
    ):
        w1.assign(ticket, sig)


@pytest.mark.parametrize("state", ["committed", "audit_failed"])
def test_assign_reverts_on_job_no_longer_open(world: World, state: str) -> None:
    worker = world.workers[0]
    if state == "committed":
        job_id = world.committed_job(worker=worker)
        expected = JobState.COMMITTED
    else:
        job_id = failed_job(world, worker=worker)
        expected = JobState.AUDIT_FAILED
    ticket, sig = world.ticket(worker, [job_id])
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=expected):
        worker.assign(ticket, sig)


def test_assign_reverts_without_free_stake_for_collateral(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post(collateral=STAKE + 1)
    ticket, sig = world.ticket(worker, [job_id])
    with reverts(
        "InsufficientFreeStake",
        InsufficientFunds,
        staker=worker.address,
        available=STAKE,
        required=STAKE + 1,
    ):
        worker.assign(ticket, sig)


def test_assign_reverts_when_paused(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id])
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        worker.assign(ticket, sig)


# ----------------------------------------------------------------------- commitResults


def test_commitResults_reverts_on_empty_batch(world: World) -> None:
    with reverts("EmptyBatch", InvalidRequest):
        world.workers[0].commit_results([], [], records=[])


def test_commitResults_reverts_on_length_mismatch(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _assigned(world, worker)
    fn = world.market.functions.commitResults
    with reverts("LengthMismatch", InvalidRequest):
        send(worker, fn([job_id], [record.as_tuple(), record.as_tuple()], [RESULT]))
    with reverts("LengthMismatch", InvalidRequest):
        send(worker, fn([job_id], [record.as_tuple()], [RESULT, RESULT]))


def test_commitResults_reverts_on_unknown_or_forged_record(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _assigned(world, worker)
    with reverts("UnknownJob", NotFoundOnChain):
        worker.commit_results([job_id + 1], [RESULT], records=[record])
    with reverts("JobRecordMismatch", StaleJobRecord):
        worker.commit_results([job_id], [RESULT], records=[forged(record, worker=ZERO)])


def test_commitResults_reverts_on_unassigned_job(world: World) -> None:
    worker = world.workers[0]
    job_id, _ = _posted(world)
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=JobState.POSTED):
        worker.commit_results([job_id], [RESULT])


def test_commitResults_reverts_on_second_commit(world: World) -> None:
    worker = world.workers[0]
    job_id = world.committed_job(worker=worker)
    with reverts("InvalidJobState", WrongJobState, state=JobState.COMMITTED):
        worker.commit_results([job_id], [RESULT])


def test_commitResults_reverts_for_another_worker(world: World) -> None:
    job_id, _ = _assigned(world, world.workers[0])
    intruder = world.workers[1]
    with reverts("NotAssignedWorker", NotPermitted, jobId=job_id, caller=intruder.address):
        intruder.commit_results([job_id], [RESULT])


def test_commitResults_reverts_after_deadline(world: World) -> None:
    worker = world.workers[0]
    job_id, record = _assigned(world, worker, deadline=world.now() + 100)
    world.advance(101)
    with reverts("JobDeadlinePassed", TooLate, jobId=job_id, deadline=record.deadline):
        worker.commit_results([job_id], [RESULT])


def test_commitResults_reverts_on_empty_result(world: World) -> None:
    worker = world.workers[0]
    job_id, _ = _assigned(world, worker)
    with reverts("EmptyResult", InvalidRequest, jobId=job_id):
        worker.commit_results([job_id], [b"\x00" * 32])


def test_commitResults_reverts_when_paused(world: World) -> None:
    worker = world.workers[0]
    job_id, _ = _assigned(world, worker)
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        worker.commit_results([job_id], [RESULT])


# --------------------------------------------------------------------- assignAndCommit


def test_assignAndCommit_reverts_on_length_mismatch(world: World) -> None:
    worker = world.workers[0]
    a, b = world.post(n=2)
    ticket, sig = world.ticket(worker, [a, b])
    with reverts("LengthMismatch", InvalidRequest):
        worker.assign_and_commit(ticket, sig, [RESULT])


def test_assignAndCommit_reverts_on_empty_batch(world: World) -> None:
    worker = world.workers[0]
    ticket, sig = world.ticket(worker, [])
    with reverts("EmptyBatch", InvalidRequest):
        worker.assign_and_commit(ticket, sig, [], records=[])


def test_assignAndCommit_reverts_on_empty_result(world: World) -> None:
    worker = world.workers[0]
    a, b = world.post(n=2)
    ticket, sig = world.ticket(worker, [a, b])
    with reverts("EmptyResult", InvalidRequest, jobId=b):
        worker.assign_and_commit(ticket, sig, [RESULT, b"\x00" * 32])


def test_assignAndCommit_reverts_when_paused(world: World) -> None:
    worker = world.workers[0]
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id])
    world.admin.pause()
    with reverts("EnforcedPause", Paused):
        worker.assign_and_commit(ticket, sig, [RESULT])


# ------------------------------------------------------------------------------ appeal


def test_appeal_reverts_for_another_account(world: World) -> None:
    job_id = failed_job(world)
    for intruder in (world.workers[1], world.clients[0]):
        with reverts("NotAssignedWorker", NotPermitted, jobId=job_id, caller=intruder.address):
            intruder.appeal(job_id)


def test_appeal_reverts_unless_audit_failed(world: World) -> None:
    worker = world.workers[0]
    job_id = world.audited_job(worker=worker)
    with reverts("InvalidJobState", WrongJobState, state=JobState.AUDITED):
        worker.appeal(job_id)
    job_id = appealed_job(world, worker=worker)
    with reverts("InvalidJobState", WrongJobState, state=JobState.APPEALED):
        worker.appeal(job_id)  # only once


def test_appeal_reverts_after_appeal_window(world: World) -> None:
    worker = world.workers[0]
    job_id = failed_job(world, worker=worker)
    closes = world.job(job_id).resolved_at + TEST_PARAMS.appeal_window_s
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    with reverts("WindowClosed", TooLate, jobId=job_id, closedAt=closes):
        worker.appeal(job_id)


def test_appeal_reverts_on_unknown_or_forged_record(world: World) -> None:
    worker = world.workers[0]
    job_id = failed_job(world, worker=worker)
    record = world.job(job_id)
    with reverts("UnknownJob", NotFoundOnChain):
        worker.appeal(job_id + 1, record)
    with reverts("JobRecordMismatch", StaleJobRecord):
        worker.appeal(job_id, forged(record, resolved_at=record.resolved_at + 1))


# ---------------------------------------------------------------------------- withdraw


def test_withdraw_reverts_with_nothing_to_withdraw(world: World) -> None:
    """JobMarket's NothingToWithdraw(address account) has the selector of StakeManager's
    NothingToWithdraw(address staker), so the decoded argument may carry either name."""
    worker = world.workers[0]
    with reverts("NothingToWithdraw", InsufficientFunds) as e:
        worker.withdraw()
    assert list(e.value.args_dict.values()) == [worker.address]
    _earn(world, worker)
    worker.withdraw()
    with reverts("NothingToWithdraw", InsufficientFunds) as e:
        worker.withdraw()  # nothing left after the first
    assert e.value.contract == "JobMarket"


@pytest.mark.xfail(
    strict=True,
    reason="BUG (bindings): custom_errors decodes by selector alone across all artifacts, so "
    "JobMarket's NothingToWithdraw(address account) is reported with StakeManager's argument "
    "name (`staker=`), whichever contract reverted",
)
def test_withdraw_revert_names_its_own_argument(world: World) -> None:
    worker = world.workers[0]
    with reverts("NothingToWithdraw", InsufficientFunds, account=worker.address):
        worker.withdraw()


# ------------------------------------------------------------------------ resolveAudit


def test_resolveAudit_reverts_for_anyone_but_the_assigned_verifier(world: World) -> None:
    job_id = world.audited_job()
    assigned = world.verifier_for(job_id).address
    for intruder in (world.outsider, world.admin, world.other_verifier(world.verifier_for(job_id))):
        with reverts("NotAssignedVerifier", NotPermitted, jobId=job_id, caller=intruder.address,
                     assigned=assigned):
            intruder.resolve_audit(job_id, False, EVIDENCE)


def test_resolveAudit_reverts_for_verifier_that_did_the_job(world: World) -> None:
    worker = world.workers[0]
    worker.join_verifiers(TEST_PARAMS.verifier_deposit)  # anyone may take a seat
    job_id = world.audited_job(worker=worker)
    with reverts("VerifierConflict", NotPermitted, jobId=job_id, verifier=worker.address):
        worker.resolve_audit(job_id, True, EVIDENCE)


def test_resolveAudit_reverts_before_draw_block(world: World) -> None:
    job_id = world.committed_job(audit_bps=10_000)
    drawn_at = world.job(job_id).committed_block + 2
    with reverts("AuditDrawPending", TooEarly, jobId=job_id, blockNumber=drawn_at):
        world.verifiers[0].resolve_audit(job_id, True, EVIDENCE)


def test_resolveAudit_reverts_when_not_drawn(world: World) -> None:
    job_id = world.committed_job(audit_bps=0)
    world.chain.mine(2)
    with reverts("NotDrawnForAudit", WrongJobState, jobId=job_id):
        world.verifiers[0].resolve_audit(job_id, False, EVIDENCE)


@pytest.mark.parametrize("state", ["posted", "assigned", "audit_failed"])
def test_resolveAudit_reverts_on_job_not_awaiting_verdict(world: World, state: str) -> None:
    verifier = world.verifiers[0]
    if state == "posted":
        job_id, _ = _posted(world)
        expected = JobState.POSTED
    elif state == "assigned":
        job_id, _ = _assigned(world)
        expected = JobState.ASSIGNED
    else:
        job_id = failed_job(world)
        expected = JobState.AUDIT_FAILED  # a verdict cannot be given twice
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=expected):
        verifier.resolve_audit(job_id, True, EVIDENCE)


@pytest.mark.parametrize("draw_recorded", [True, False], ids=["audited", "committed"])
def test_resolveAudit_reverts_after_audit_window(world: World, draw_recorded: bool) -> None:
    if draw_recorded:
        job_id = world.audited_job()
        world.advance(TEST_PARAMS.audit_window_s)
    else:
        job_id = world.committed_job(audit_bps=10_000)
        world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s + 1)
    record = world.job(job_id)
    closes = record.committed_at + TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s
    assert world.now() > closes
    with reverts("WindowClosed", TooLate, jobId=job_id, closedAt=closes):
        world.verifiers[0].resolve_audit(job_id, True, EVIDENCE)


def test_resolveAudit_reverts_on_unknown_or_forged_record(world: World) -> None:
    job_id = world.audited_job()
    record = world.job(job_id)
    verifier = world.verifiers[0]
    with reverts("UnknownJob", NotFoundOnChain):
        verifier.resolve_audit(job_id + 1, True, EVIDENCE, record)
    with reverts("JobRecordMismatch", StaleJobRecord):
        verifier.resolve_audit(job_id, True, EVIDENCE, forged(record, state=JobState.COMMITTED))


# ----------------------------------------------------------------------- resolveAppeal


def test_resolveAppeal_reverts_for_anyone_but_the_assigned_verifier(world: World) -> None:
    job_id = appealed_job(world)
    assigned = world.verifier_for(job_id).address
    with reverts("NotAssignedVerifier", NotPermitted, jobId=job_id,
                 caller=world.outsider.address, assigned=assigned):
        world.outsider.resolve_appeal(job_id, True, EVIDENCE)


def test_resolveAppeal_reverts_unless_appealed(world: World) -> None:
    job_id = failed_job(world)
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=JobState.AUDIT_FAILED):
        world.verifiers[1].resolve_appeal(job_id, True, EVIDENCE)


def test_resolveAppeal_reverts_for_first_verifier_or_worker(world: World) -> None:
    worker = world.workers[0]
    worker.join_verifiers(TEST_PARAMS.verifier_deposit)
    job_id = appealed_job(world, worker=worker)
    first = world.auditor_of(job_id)
    with reverts("VerifierConflict", NotPermitted, jobId=job_id, verifier=first.address):
        first.resolve_appeal(job_id, False, EVIDENCE)
    with reverts("VerifierConflict", NotPermitted, jobId=job_id, verifier=worker.address):
        worker.resolve_appeal(job_id, True, EVIDENCE)


def test_resolveAppeal_reverts_after_verdict_window(world: World) -> None:
    job_id = appealed_job(world)
    record = world.job(job_id)
    closes = record.resolved_at + TEST_PARAMS.appeal_window_s + TEST_PARAMS.audit_window_s
    world.advance(closes - world.now() + 1)
    with reverts("WindowClosed", TooLate, jobId=job_id, closedAt=closes):
        world.other_verifier(world.auditor_of(job_id)).resolve_appeal(job_id, True, EVIDENCE)


def test_resolveAppeal_reverts_on_unknown_or_forged_record(world: World) -> None:
    job_id = appealed_job(world)
    record = world.job(job_id)
    verifier = world.verifiers[1]
    with reverts("UnknownJob", NotFoundOnChain):
        verifier.resolve_appeal(job_id + 1, True, EVIDENCE, record)
    with reverts("JobRecordMismatch", StaleJobRecord):
        verifier.resolve_appeal(job_id, True, EVIDENCE, forged(record, auditor=ZERO))


# ---------------------------------------------------------------------------- finalize


@pytest.mark.parametrize("state", ["committed", "audited", "audit_failed", "appealed"])
def test_finalize_reverts_before_outcome_is_decided(world: World, state: str) -> None:
    c, a, p = (
        TEST_PARAMS.challenge_window_s,
        TEST_PARAMS.audit_window_s,
        TEST_PARAMS.appeal_window_s,
    )
    if state == "committed":
        job_id = world.committed_job()
        open_at = world.job(job_id).committed_at + c
    elif state == "audited":
        job_id = world.audited_job()
        open_at = world.job(job_id).committed_at + c + a + 1
    elif state == "audit_failed":
        job_id = failed_job(world)
        open_at = world.job(job_id).resolved_at + p + 1
    else:
        job_id = appealed_job(world)
        open_at = world.job(job_id).resolved_at + p + a + 1
    with reverts("NotYetSettleable", TooEarly, jobId=job_id, openAt=open_at):
        world.outsider.finalize(job_id)


def test_finalize_reverts_before_draw_block(world: World) -> None:
    job_id = world.committed_job()
    world.chain.increase_time(TEST_PARAMS.challenge_window_s + 1)  # mines one block only
    drawn_at = world.job(job_id).committed_block + 2
    with reverts("AuditDrawPending", TooEarly, jobId=job_id, blockNumber=drawn_at):
        world.outsider.finalize(job_id)


@pytest.mark.parametrize("state", ["posted", "assigned"])
def test_finalize_reverts_on_job_without_outcome(world: World, state: str) -> None:
    if state == "posted":
        job_id, _ = _posted(world)
        expected = JobState.POSTED
    else:
        job_id, _ = _assigned(world)
        expected = JobState.ASSIGNED
    with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=expected):
        world.outsider.finalize(job_id)


def test_finalize_reverts_on_unknown_or_forged_record(world: World) -> None:
    job_id = world.committed_job()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    record = world.job(job_id)
    with reverts("UnknownJob", NotFoundOnChain, jobId=10**9):
        world.outsider.finalize(10**9, record)
    with reverts("JobRecordMismatch", StaleJobRecord, jobId=job_id) as e:
        world.outsider.finalize(job_id, forged(record, reward=record.reward * 2))
    assert isinstance(e.value, ValueError)
    audited = world.audited_job()
    stale = world.job(audited)  # Audited; the pass below makes it stale
    world.verifier_for(audited).resolve_audit(audited, True, EVIDENCE)
    with reverts("JobRecordMismatch", StaleJobRecord, jobId=audited):
        world.outsider.finalize(audited, stale)  # passed, open for a dispute
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.outsider.finalize(audited)
    with reverts("JobClosed", WrongJobState, jobId=audited):
        world.outsider.finalize(audited, stale)  # paid: ended, whatever record is passed
    world.outsider.finalize(job_id)
    with reverts("JobClosed", WrongJobState, jobId=job_id):
        world.outsider.finalize(job_id, record)  # the pre-settlement record


def test_finalizeBatch_reverts_on_length_mismatch(world: World) -> None:
    job_id = world.committed_job()
    record = world.job(job_id)
    call = world.market.functions.finalizeBatch([job_id, job_id], [record.as_tuple()])
    with reverts("LengthMismatch", InvalidRequest):
        send(world.outsider, call)


# ------------------------------------------------------------------------------- admin


def test_pause_reverts_without_pauser_role(world: World) -> None:
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, neededRole=PAUSER_ROLE):
        world.outsider.pause()


def test_pause_reverts_when_already_paused(world: World) -> None:
    world.admin.pause()
    with reverts("ExpectedPause"):
        world.admin.pause()


def test_unpause_reverts_without_pauser_role(world: World) -> None:
    world.admin.pause()
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, neededRole=PAUSER_ROLE):
        world.outsider.unpause()


def test_unpause_reverts_when_not_paused(world: World) -> None:
    with reverts("ExpectedPause"):
        world.admin.unpause()


def test_setFeeRecipient_reverts_without_admin_role(world: World) -> None:
    call = world.market.functions.setFeeRecipient(world.outsider.address)
    with reverts("AccessControlUnauthorizedAccount", NotPermitted, neededRole=ADMIN_ROLE):
        send(world.outsider, call)


def test_setFeeRecipient_reverts_on_zero_address(world: World) -> None:
    with reverts("ZeroAddress", InvalidRequest):
        send(world.admin, world.market.functions.setFeeRecipient(ZERO))


# ----------------------------------------------------------------------------- reclaim


def test_reclaim_reverts_for_another_account(world: World) -> None:
    job_id, _ = _posted(world, deadline=world.now() + 10)
    world.advance(11)
    for intruder in (world.clients[1], world.outsider):
        with reverts("NotJobClient", NotPermitted, jobId=job_id, caller=intruder.address):
            intruder.reclaim(job_id)


@pytest.mark.parametrize("state", ["committed", "refunded"])
def test_reclaim_reverts_once_result_committed_or_refunded(world: World, state: str) -> None:
    client = world.clients[0]
    if state == "committed":
        job_id = world.committed_job(deadline=world.now() + 100)
        expected = JobState.COMMITTED
    else:
        job_id, record = _posted(world, deadline=world.now() + 100)
    world.advance(101)
    if state == "committed":
        with reverts("InvalidJobState", WrongJobState, jobId=job_id, state=expected):
            client.reclaim(job_id)
        return
    client.reclaim(job_id)
    with reverts("JobClosed", WrongJobState, jobId=job_id):
        client.reclaim(job_id, record)


def test_reclaim_of_a_held_job_reverts_before_deadline(world: World) -> None:
    client = world.clients[0]
    job_id, record = _assigned(world, deadline=world.now() + 1000)
    with reverts("DeadlineNotReached", TooEarly, jobId=job_id, deadline=record.deadline):
        client.reclaim(job_id)


def test_a_posted_job_is_cancelled_at_once_and_cannot_then_be_taken(world: World) -> None:
    client = world.clients[0]
    job_id, record = _posted(world, deadline=world.now() + 1000)
    before = client.balance_of(client.address)
    client.reclaim(job_id)
    assert client.balance_of(client.address) == before + record.reward + record.audit_fee
    assert client.job(job_id).state == JobState.REFUNDED
    with reverts("JobClosed", WrongJobState, jobId=job_id):
        client.reclaim(job_id, record)
    ticket, signature = world.ticket(world.workers[0], [job_id])
    with reverts("JobClosed", WrongJobState, jobId=job_id):  # a worker's late ticket
        world.workers[0].assign(ticket, signature, records=[record])


def test_reclaim_reverts_on_unknown_or_forged_record(world: World) -> None:
    client = world.clients[0]
    job_id, record = _posted(world, deadline=world.now() + 10)
    world.advance(11)
    with reverts("UnknownJob", NotFoundOnChain):
        client.reclaim(job_id + 1, record)
    with reverts("JobRecordMismatch", StaleJobRecord):
        client.reclaim(job_id, forged(record, audit_fee=record.audit_fee + 1))


# ---------------------------------------------------------------------- error families


def test_reverts_are_caught_by_their_family_builtins(world: World) -> None:
    """A caller can catch reverts by builtin: NotPermitted is a PermissionError, TooLate a
    TimeoutError, NotFoundOnChain a LookupError, bad arguments and money a ValueError."""
    worker = world.workers[0]
    with pytest.raises(PermissionError):
        world.outsider.mint(world.outsider.address, 1)
    (job_id,) = world.post()
    ticket, sig = world.ticket(worker, [job_id], lease_s=-5)
    with pytest.raises(TimeoutError):
        worker.assign(ticket, sig)
    with pytest.raises(LookupError):
        world.outsider.finalize(10**6, world.job(job_id))  # the contract's UnknownJob
    with pytest.raises(LookupError):
        world.outsider.job(10**6)  # the bindings' own lookup
    with pytest.raises(ValueError):
        world.outsider.post_job(world.params(reward=0))
    with pytest.raises(ValueError):
        world.outsider.withdraw()
    with pytest.raises(ContractRevert) as e:
        world.outsider.withdraw()
    assert e.value.contract == "JobMarket"
    assert e.value.data is not None and e.value.data.startswith("0x")


def test_withdraw_revert_in_mined_transaction_is_decoded(world: World) -> None:
    """A transaction that passes estimation but reverts on chain (explicit gas) comes back
    with the same error name and its transaction hash."""
    worker = world.workers[0]
    with reverts("NothingToWithdraw", InsufficientFunds) as e:
        worker.sender.send(worker.market.functions.withdraw(), tx_params={"gas": 100_000})
    assert e.value.tx_hash is not None


def test_job_lookup_of_unknown_id_raises_not_found(world: World) -> None:
    """MeshContracts.job() on a missing id raises the contract's UnknownJob class, a
    NotFoundOnChain (LookupError)."""
    with reverts("UnknownJob", NotFoundOnChain) as e:
        world.workers[0].job(4242)
    assert isinstance(e.value, LookupError)


def test_commitResults_binding_check_of_unknown_job_raises_not_found(world: World) -> None:
    with reverts("UnknownJob", NotFoundOnChain) as e:
        world.workers[0].commit_results([4242], [RESULT])  # records rebuilt from events
    assert isinstance(e.value, LookupError)


# ============================================================ ended jobs (every job function)


def _ended(world: World, how: str) -> int:
    """A job that ended by payment, slash or refund (its digest slot is cleared)."""
    if how == "finalized":
        return _earn(world)
    if how == "slashed":
        job_id = failed_job(world)
        world.advance(TEST_PARAMS.appeal_window_s + 1)
        world.outsider.finalize(job_id)
        return job_id
    job_id, _ = _posted(world, deadline=world.now() + 10)
    world.advance(11)
    world.clients[0].reclaim(job_id)
    return job_id


_JOB_FUNCTIONS = {
    "reclaim": lambda w, i, r: w.clients[0].reclaim(i, r),
    "assign": lambda w, i, r: w.workers[0].assign(*w.ticket(w.workers[0], [i]), records=[r]),
    "assignAndCommit": lambda w, i, r: w.workers[0].assign_and_commit(
        *w.ticket(w.workers[0], [i]), [RESULT], records=[r]
    ),
    "commitResults": lambda w, i, r: w.workers[0].commit_results([i], [RESULT], records=[r]),
    "appeal": lambda w, i, r: w.workers[0].appeal(i, r),
    "resolveAudit": lambda w, i, r: w.verifiers[1].resolve_audit(i, True, EVIDENCE, r),
    "resolveAppeal": lambda w, i, r: w.verifiers[1].resolve_appeal(i, True, EVIDENCE, r),
    "finalize": lambda w, i, r: w.outsider.finalize(i, r),
}


@pytest.mark.parametrize("how", ["finalized", "slashed", "refunded"])
@pytest.mark.parametrize("function", sorted(_JOB_FUNCTIONS))
def test_job_functions_revert_on_ended_job(world: World, function: str, how: str) -> None:
    """A finished job's digest is deleted: every function that takes a job record answers
    JobClosed for it, whatever record is passed (the events still hold the full record)."""
    job_id = _ended(world, how)
    record = world.job(job_id)
    assert record.state == JobState[how.upper()]
    assert world.admin.job_digest(job_id) == b"\x00" * 32
    with reverts("JobClosed", WrongJobState, jobId=job_id):
        _JOB_FUNCTIONS[function](world, job_id, record)


def test_job_functions_revert_on_id_zero_as_unknown(world: World) -> None:
    """Ids start at 1: id 0 was never posted, so it is unknown rather than ended."""
    _, record = _posted(world)
    with reverts("UnknownJob", NotFoundOnChain, jobId=0):
        world.outsider.finalize(0, record)


def test_finalizeBatch_skips_ended_jobs(world: World) -> None:
    ended = _ended(world, "finalized")
    job_id = world.committed_job()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    records = [world.job(ended), world.job(job_id)]
    receipt = world.outsider.finalize_batch([ended, job_id], records)
    paid = [e.args["jobId"] for e in world.admin.job_events([ended, job_id]) if e.name == "JobPaid"]
    assert paid == [ended, job_id] and receipt["status"] == 1


# ---------------------------------------------------------------------- JobMarketSettlement


def test_settlement_half_reverts_when_called_directly(world: World) -> None:
    """The settlement half runs only on the JobMarket's storage, by its DELEGATECALL: called at
    its own address, every function refuses, so nobody can act on a second, empty copy."""
    market = world.market
    settlement = at(world.w3, "JobMarket", market.functions.settlement().call())
    assert settlement.address != market.address
    job_id = world.committed_job()
    record = world.job(job_id).as_tuple()
    with reverts("NotThroughMarket", NotPermitted):
        send(world.outsider, settlement.functions.finalize(job_id, record))
    with reverts("NotThroughMarket", NotPermitted):
        send(world.outsider, settlement.functions.finalizeBatch([job_id], [record]))
