"""`mesh provider stake|unstake|withdraw-unbonded|status` against anvil: the numbers it
prints are the contract's."""

from __future__ import annotations

import json

import pytest

from meshcompute.units import TOKEN
from tests.cli.conftest import WALLET_MESH, assert_one_line_error, worker_actor
from tests.contracts.world import TEST_PARAMS

pytestmark = pytest.mark.anvil


def test_stake_and_unstake_match_the_contract(world, cli_wallet, run_mesh) -> None:
    who = cli_wallet.address
    staked = run_mesh("provider", "stake", "1000.5", "--json")
    assert staked.code == 0, staked.err
    position = world.admin.stake_of(who)
    assert position.free == 1000 * TOKEN + TOKEN // 2
    assert world.admin.balance_of(who) == WALLET_MESH - position.free
    assert json.loads(staked.out)["free"]["wei"] == str(position.free)

    unstaked = run_mesh("provider", "unstake", "200.25")
    assert unstaked.code == 0, unstaked.err
    position = world.admin.stake_of(who)
    assert position.unbonding == 200 * TOKEN + TOKEN // 4
    assert position.free == 800 * TOKEN + TOKEN // 4

    status = json.loads(run_mesh("provider", "status", "--json").out)
    assert status["stake"]["free"]["wei"] == str(position.free)
    assert status["stake"]["locked"]["wei"] == str(position.locked) == "0"
    assert status["stake"]["unbonding"]["wei"] == str(position.unbonding)
    assert status["stake"]["release_at"] == position.release_at
    assert status["stake"]["wallet"]["wei"] == str(world.admin.balance_of(who))
    assert status["jobs_in_progress"] == []
    text = run_mesh("provider", "status")
    assert text.code == 0 and "800.25 MESH" in text.out and "200.25 MESH" in text.out


def test_status_lists_jobs_in_progress_and_the_record(world, cli_wallet, run_mesh) -> None:
    assert run_mesh("provider", "stake", "5000").code == 0
    me = worker_actor(world, cli_wallet)
    done = world.committed_job(worker=me)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(done)
    committed = world.committed_job(worker=me, collateral=70 * TOKEN)
    (assigned,) = world.post(collateral=30 * TOKEN)
    world.assign(me, [assigned])
    (other,) = world.post()
    world.assign(world.workers[1], [other])  # someone else's job is not listed

    status = json.loads(run_mesh("provider", "status", "--json").out)
    jobs = {job["job_id"]: job for job in status["jobs_in_progress"]}
    assert set(jobs) == {committed, assigned}
    assert jobs[committed]["state"] == "committed"
    assert jobs[assigned]["state"] == "assigned"
    assert jobs[committed]["collateral"]["wei"] == str(70 * TOKEN)
    position = world.admin.stake_of(cli_wallet.address)
    assert position.locked == 100 * TOKEN
    assert status["stake"]["locked"]["wei"] == str(position.locked)
    record = world.admin.worker_record(cli_wallet.address)
    assert record.completed == 1
    assert status["record"] == {
        "completed": record.completed,
        "missed": record.missed,
        "slashed": record.slashed,
        "audits_passed": record.audits_passed,
    }
    text = run_mesh("provider", "status")
    assert text.code == 0 and "2 job(s) in progress" in text.out


def test_status_of_another_address_needs_no_wallet(world, mesh_env, run_mesh) -> None:
    worker = world.workers[0].address
    status = json.loads(run_mesh("provider", "status", "--address", worker, "--json").out)
    assert status["stake"]["free"]["wei"] == str(world.admin.stake_of(worker).free)


def test_withdraw_unbonded_after_the_delay(world, cli_wallet, run_mesh) -> None:
    who = cli_wallet.address
    assert run_mesh("provider", "stake", "100").code == 0
    assert run_mesh("provider", "unstake", "40").code == 0
    early = run_mesh("provider", "withdraw-unbonded")
    assert_one_line_error(early, "still unbonding until")
    world.advance(TEST_PARAMS.unbonding_delay_s + 1)
    before = world.admin.balance_of(who)
    done = run_mesh("provider", "withdraw-unbonded", "--json")
    assert done.code == 0, done.err
    assert world.admin.balance_of(who) == before + 40 * TOKEN
    assert world.admin.stake_of(who).unbonding == 0
    assert_one_line_error(run_mesh("provider", "withdraw-unbonded"), "nothing is unbonding")


def test_stake_more_than_the_balance_names_the_shortfall(world, cli_wallet, run_mesh) -> None:
    line = assert_one_line_error(run_mesh("provider", "stake", "60000"), "mesh wallet faucet")
    assert "you have 50000 MESH, staking 60000 MESH needs 10000 MESH more" in line
    assert world.admin.stake_of(cli_wallet.address).free == 0


def test_unstake_more_than_the_free_stake(world, cli_wallet, run_mesh) -> None:
    assert run_mesh("provider", "stake", "100").code == 0
    me = worker_actor(world, cli_wallet)
    (job,) = world.post(collateral=80 * TOKEN)
    world.assign(me, [job])
    line = assert_one_line_error(run_mesh("provider", "unstake", "50"), "free stake")
    assert "you have 20 MESH free stake (80 MESH locked in jobs)" in line
    assert "30 MESH more" in line
    assert world.admin.stake_of(cli_wallet.address).unbonding == 0


@pytest.mark.parametrize("amount", ["0", "-1", "abc", "1.0000000000000000001", "nan"])
def test_bad_amounts_are_one_line(cli_wallet, run_mesh, amount: str) -> None:
    assert_one_line_error(run_mesh("provider", "stake", "--", amount), "MESH")
