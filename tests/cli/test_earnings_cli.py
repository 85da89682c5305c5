"""`mesh earnings` and `mesh withdraw` for a worker that did real jobs on anvil: rows and
totals match the JobPaid events and the contract's accountOf/stakeOf."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from meshcompute.chain.contracts import AccountState, MeshContracts
from meshcompute.chain.earnings import earnings_report
from meshcompute.core.payout import split_reward
from meshcompute.units import TOKEN
from tests.cli.conftest import WALLET_MESH, assert_one_line_error, worker_actor
from tests.contracts.world import TEST_PARAMS, World

pytestmark = pytest.mark.anvil

EVIDENCE = b"\x0e" * 32


def _work_history(world: World, me) -> dict[str, int]:
    """Two unaudited paid jobs, one audited and passed, one audited, failed and slashed, and
    one committed job still in its challenge window."""
    plain = [world.committed_job(worker=me), world.committed_job(worker=me, reward=40 * TOKEN)]
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize_batch(plain)
    passed = world.audited_job(worker=me)
    world.verifier_for(passed).resolve_audit(passed, True, EVIDENCE)
    failed = world.audited_job(worker=me)
    world.verifier_for(failed).resolve_audit(failed, False, EVIDENCE)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.admin.finalize(passed)  # the pass stands: paid
    world.admin.finalize(failed)  # the failed audit stands: slash
    other = world.committed_job(worker=world.workers[0])  # another worker's job
    pending = world.committed_job(worker=me, reward=20 * TOKEN)
    return {
        "plain1": plain[0],
        "plain2": plain[1],
        "passed": passed,
        "failed": failed,
        "pending": pending,
        "other": other,
    }


def _paid_events(world: World, address: str) -> list[dict]:
    logs = world.admin.market.events.JobPaid().get_logs(
        from_block=world.deployment.block, argument_filters={"worker": address}
    )
    return [dict(log["args"]) | {"blockNumber": log["blockNumber"]} for log in logs]


@pytest.fixture
def history(world: World, cli_wallet, run_mesh) -> dict[str, int]:
    assert run_mesh("provider", "stake", "5000").code == 0
    return _work_history(world, worker_actor(world, cli_wallet))


def test_rows_and_totals_match_the_chain(world, cli_wallet, history, run_mesh) -> None:
    who = cli_wallet.address
    result = run_mesh("earnings", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    paid = _paid_events(world, who)
    assert {e["jobId"] for e in paid} == {history[k] for k in ("plain1", "plain2", "passed")}

    final = [row for row in report["rows"] if row["status"] == "final"]
    assert [row["job_id"] for row in final] == [e["jobId"] for e in paid]
    for row, event in zip(final, paid, strict=True):
        assert row["amount"]["wei"] == str(event["amount"])
        assert row["fee"]["wei"] == str(event["fee"])
        assert row["audited"] is event["audited"]
        assert row["block_number"] == event["blockNumber"]
    assert [row["audited"] for row in final] == [False, False, True]

    pending = [row for row in report["rows"] if row["status"] == "pending"]
    assert [row["job_id"] for row in pending] == [history["pending"]]
    expected_pay, _fee = split_reward(20 * TOKEN, TEST_PARAMS.fee_bps)
    assert pending[0]["amount"]["wei"] == str(expected_pay)
    assert pending[0]["stage"] == "challenge window"

    account = world.admin.account_of(who)
    totals = report["totals"]
    assert int(totals["earned"]["wei"]) == account.earned == sum(e["amount"] for e in paid)
    assert int(totals["withdrawable"]["wei"]) == account.withdrawable
    assert int(totals["withdrawn"]["wei"]) == account.withdrawn == 0
    assert int(totals["pending"]["wei"]) == expected_pay
    assert totals["completed_jobs"] == account.completed == 3
    slashed = world.admin.stake_of(who).slashed
    assert slashed == 50 * TOKEN  # the failed job's collateral
    assert int(totals["slashed"]["wei"]) == slashed
    assert [s["job_id"] for s in report["slashes"]] == [history["failed"]]
    assert report["slashes"][0]["amount"]["wei"] == str(slashed)

    text = run_mesh("earnings")
    assert text.code == 0
    assert "pending: challenge window" in text.out
    assert f"earned          {account.earned / TOKEN:g} MESH over 3 jobs" in text.out


def test_filters_by_job_and_date(world, cli_wallet, history, run_mesh) -> None:
    one = json.loads(run_mesh("earnings", "--job", str(history["passed"]), "--json").out)
    assert [row["job_id"] for row in one["rows"]] == [history["passed"]]
    assert one["rows"][0]["audited"] is True
    assert one["filters"] == {"job_id": history["passed"]}
    assert one["totals"]["rows_total"] == one["rows"][0]["amount"]
    assert one["totals"]["earned"]["wei"] == str(world.admin.account_of(cli_wallet.address).earned)

    paid = {e["jobId"]: e for e in _paid_events(world, cli_wallet.address)}
    passed_time = world.w3.eth.get_block(paid[history["passed"]]["blockNumber"])["timestamp"]
    since = datetime.fromtimestamp(passed_time, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    later = json.loads(run_mesh("earnings", "--since", since, "--json").out)
    assert [r["job_id"] for r in later["rows"]] == [history["passed"], history["pending"]]

    future = datetime.fromtimestamp(world.now() + 86_400, UTC).date().isoformat()
    none = json.loads(run_mesh("earnings", "--since", future, "--json").out)
    assert none["rows"] == [] and none["totals"]["rows_total"]["wei"] == "0"

    assert_one_line_error(run_mesh("earnings", "--since", "last tuesday"), "--since")


def test_any_address_without_a_wallet(world, mesh_env, run_mesh) -> None:
    worker = world.workers[1]
    job = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job)
    report = json.loads(run_mesh("earnings", worker.address, "--json").out)
    assert [row["job_id"] for row in report["rows"]] == [job]
    assert_one_line_error(run_mesh("earnings", "0x1234"), "not an Ethereum address")


def test_report_function_matches_the_cli(world, cli_wallet, history, run_mesh) -> None:
    contracts = MeshContracts(world.w3, world.deployment)
    report = earnings_report(contracts, cli_wallet.address)
    cli = json.loads(run_mesh("earnings", "--json").out)
    assert report.to_json() | {"chain_id": world.deployment.chain_id} == cli
    assert report.rows_total == report.earned


def test_withdraw_moves_the_withdrawable_amount(world, cli_wallet, history, run_mesh) -> None:
    who = cli_wallet.address
    owed = world.admin.account_of(who).withdrawable
    assert owed > 0
    before = world.admin.balance_of(who)
    result = run_mesh("withdraw", "--json")
    assert result.code == 0, result.err
    assert int(json.loads(result.out)["withdrawn"]["wei"]) == owed
    assert world.admin.balance_of(who) == before + owed
    account = world.admin.account_of(who)
    assert account.withdrawable == 0 and account.withdrawn == owed
    totals = json.loads(run_mesh("earnings", "--json").out)["totals"]
    assert totals["withdrawn"]["wei"] == str(owed) and totals["withdrawable"]["wei"] == "0"
    line = assert_one_line_error(run_mesh("withdraw"), "nothing to withdraw")
    assert "1 committed job(s) will pay once settled" in line
    assert world.admin.balance_of(who) == before + owed
    assert before == WALLET_MESH - 5000 * TOKEN


def test_contract_revert_comes_out_as_one_line(world, cli_wallet, run_mesh, monkeypatch) -> None:
    """With the balance check fooled, the real withdraw() reverts NothingToWithdraw on chain;
    the CLI still prints one line and exits 1."""
    monkeypatch.setattr(MeshContracts, "account_of", lambda self, account: AccountState(1, 0, 0, 0))
    line = assert_one_line_error(run_mesh("withdraw"), "NothingToWithdraw")
    assert "JobMarket" in line
