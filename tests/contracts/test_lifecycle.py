"""The happy paths of the job lifecycle, end to end on anvil."""

from __future__ import annotations

from meshcompute.core.job import JobState
from meshcompute.core.payout import split_reward

from tests.contracts.world import TEST_PARAMS, World


def test_finalize_pays_worker_after_challenge_window(world: World) -> None:
    worker = world.workers[0]
    job_id = world.committed_job(worker=worker)
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.admin.finalize(job_id)
    record = world.job(job_id)
    assert record.state == JobState.FINALIZED
    pay, _fee = split_reward(record.reward, TEST_PARAMS.fee_bps)
    assert world.admin.account_of(worker.address).withdrawable == pay
