"""ChainIndexer on a real anvil and a real Redis/Valkey: following, restarting, reorgs.

The module runs its own anvil (reorgs and reverts here must not disturb the session chain)
with the contract-test world deployed once; each test starts from a snapshot and gets its own
Redis prefix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_lib
from hypothesis import given
from hypothesis import strategies as st

from meshcompute.chain.contracts import ChainEvent, MeshContracts
from meshcompute.chain.local import LocalChain
from meshcompute.core.job import TERMINAL_STATES, JobState
from meshcompute.errors import BadInput, ChainError, ConfigError
from meshcompute.market.indexer import BlockRef, ChainIndexer, common_ancestor, first_broken_link
from tests.contracts.world import TEST_PARAMS, World, build_world

# ---------------------------------------------------------------------------- pure logic


def _hashes(tag: str, n: int) -> list[str]:
    return [f"0x{tag}{i:04x}" for i in range(n)]


@given(st.integers(1, 60), st.integers(0, 60), st.integers(0, 10), st.integers(0, 20))
def test_common_ancestor_is_the_fork_point(length: int, fork: int, start: int, extra: int) -> None:
    fork = min(fork, length - 1)
    old = _hashes("a", length)
    new = old[: fork + 1] + _hashes("b", length + extra)[fork + 1 :]
    stored = {i: old[i] for i in range(start, length)}
    chain = {i: new[i] for i in range(len(new))}
    expected = fork if fork >= start else None
    assert common_ancestor(stored, chain) == expected


def test_common_ancestor_treats_missing_chain_blocks_as_gone() -> None:
    assert common_ancestor({5: "0x5", 6: "0x6"}, {5: "0x5", 6: None}) == 5
    assert common_ancestor({5: "0x5"}, {}) is None


def test_first_broken_link_finds_the_block_that_does_not_extend_its_parent() -> None:
    headers = [BlockRef(10, "0xa", "0x9"), BlockRef(11, "0xb", "0xa"), BlockRef(12, "0xc", "0xb")]
    assert first_broken_link("0x9", headers) is None
    assert first_broken_link(None, headers) is None
    assert first_broken_link("0xother", headers) == 10
    forked = [headers[0], BlockRef(11, "0xb2", "0xa2"), headers[2]]
    assert first_broken_link("0x9", forked) == 11
    gap = [headers[0], headers[2]]
    assert first_broken_link("0x9", gap) == 12


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chain(anvil_binary: str) -> Iterator[LocalChain]:
    with LocalChain(anvil_path=anvil_binary) as own_chain:
        yield own_chain


@pytest.fixture(scope="module")
def _deployed(chain: LocalChain) -> World:
    return build_world(chain)


@pytest.fixture
def world(_deployed: World, chain: LocalChain) -> Iterator[World]:
    snapshot = chain.snapshot()
    yield _deployed
    chain.revert(snapshot)
    _deployed.resync()


def make_indexer(world: World, redis_client: redis_lib.Redis, prefix: str) -> ChainIndexer:
    contracts = MeshContracts(world.w3, world.deployment)
    return ChainIndexer(redis_client, contracts, start_block=world.deployment.block, prefix=prefix)


def chain_events(world: World) -> list[ChainEvent]:
    return MeshContracts(world.w3, world.deployment).events()


def keys(events: list[ChainEvent]) -> list[tuple[str, int]]:
    return [(e.tx_hash, e.log_index) for e in events]


def paid_job(world: World) -> int:
    """A job committed, past its challenge window, and finalized (JobPaid)."""
    job_id = world.committed_job()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.outsider.finalize(job_id)
    return job_id


def assert_matches_chain(indexer: ChainIndexer, world: World) -> None:
    """The index holds exactly the chain's events, and every record equals the contract's."""
    assert keys(indexer.events()) == keys(chain_events(world))
    assert indexer.events() == chain_events(world)
    expected = MeshContracts(world.w3, world.deployment).job_records(verify=True)
    assert indexer.job_records(verify=True) == expected
    assert indexer.open_job_records() == {
        i: r for i, r in expected.items() if not r.state.terminal
    }
    assert indexer.indexed_block == world.w3.eth.block_number
    assert indexer.head_lag() == 0
    # the running tallies (moved by each write, rewind and prune) equal a fresh count
    assert indexer.history_tallies() == indexer.counted_tallies()
    # and the end times kept by final state hold each ended job once, under its state
    ended = indexer.ended_counts(0, 10**11, 1)
    for state in TERMINAL_STATES:
        held = sum(1 for r in expected.values() if r.state == state)
        assert ended[state.name.lower()] == [held], (state, ended)


# ---------------------------------------------------------------------------- following


def test_indexer_follows_a_live_chain(world: World, redis_client, prefix: str) -> None:
    indexer = make_indexer(world, redis_client, prefix)
    assert indexer.indexed_block == world.deployment.block - 1
    assert indexer.job_records() == {}
    assert indexer.head_lag() > 0

    first = indexer.sync()
    assert first.from_block == world.deployment.block
    assert first.reorged_blocks == 0
    names = {e.name for e in first.new_events}
    assert {"Transfer", "Staked"} <= names  # mints and stakes of the world's setup
    assert_matches_chain(indexer, world)

    posted = world.post(n=3)
    paid = paid_job(world)
    second = indexer.sync()
    assert second.from_block == first.to_block + 1
    assert "JobPaid" in {e.name for e in second.new_events}
    assert_matches_chain(indexer, world)

    records = indexer.job_records()
    assert {records[i].state for i in posted} == {JobState.POSTED}
    assert indexer.job_record(paid).state == JobState.FINALIZED
    assert indexer.job_record(10_000) is None
    job_events = [e.name for e in indexer.events(job_id=paid)]
    assert job_events == ["JobPosted", "JobAssigned", "JobCommitted", "JobPaid"]
    assert [e.args["jobId"] for e in indexer.events(name="JobPosted")] == [*posted, paid]
    assert indexer.events(job_id=paid, name="JobPaid")[0].args["worker"] == world.workers[0].address

    idle = indexer.sync()
    assert idle.new_events == [] and idle.to_block < idle.from_block


def test_open_records_are_built_once_for_an_index_written_before_the_open_set(
    world: World, redis_client, prefix: str
) -> None:
    posted = world.post(n=2)
    paid = paid_job(world)
    make_indexer(world, redis_client, prefix).sync()
    redis_client.delete(prefix + "open", prefix + "open-built")  # an older index
    indexer = make_indexer(world, redis_client, prefix)
    opened = indexer.open_job_records()
    assert set(opened) == set(posted) and paid not in opened
    assert indexer.records_of([paid, 10_000]) == {paid: indexer.job_record(paid)}
    more = world.post()
    indexer.sync()
    assert set(indexer.open_job_records()) == {*posted, *more}
    assert_matches_chain(indexer, world)


def test_indexer_syncs_in_ranges_of_max_blocks(world: World, redis_client, prefix: str) -> None:
    world.post(n=2)
    indexer = make_indexer(world, redis_client, prefix)
    head = world.w3.eth.block_number
    reports = []
    while indexer.indexed_block < head:
        reports.append(indexer.sync(max_blocks=4))
    assert all(r.to_block - r.from_block + 1 <= 4 for r in reports)
    assert [r.from_block for r in reports[1:]] == [r.to_block + 1 for r in reports[:-1]]
    assert_matches_chain(indexer, world)
    with pytest.raises(BadInput, match="max_blocks"):
        indexer.sync(max_blocks=0)


def test_indexer_resumes_after_restart_without_duplicates(
    world: World, redis_client, prefix: str
) -> None:
    world.post(n=2)
    first = make_indexer(world, redis_client, prefix)
    first.sync(max_blocks=5)
    stopped_at = first.indexed_block
    seen = keys(first.events())

    paid_job(world)
    restarted = make_indexer(world, redis_client, prefix)  # a new process, same Redis
    assert restarted.indexed_block == stopped_at
    report = restarted.sync()
    assert report.from_block == stopped_at + 1
    assert not set(keys(report.new_events)) & set(seen)
    all_keys = keys(restarted.events())
    assert len(all_keys) == len(set(all_keys))
    assert_matches_chain(restarted, world)


def test_indexer_refuses_a_prefix_of_another_deployment(
    world: World, redis_client, prefix: str
) -> None:
    make_indexer(world, redis_client, prefix).sync()
    other = ChainIndexer(
        redis_client,
        MeshContracts(world.w3, world.deployment),
        start_block=world.deployment.block + 1,
        prefix=prefix,
    )
    with pytest.raises(ConfigError, match="start_block"):
        other.sync()


def test_indexer_crash_before_commit_leaves_nothing_of_the_range(
    world: World, redis_client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The range is written in one MULTI/EXEC: a crash before EXEC leaves no partial range."""
    world.post(n=2)
    indexer = make_indexer(world, redis_client, prefix)
    indexer.sync(max_blocks=3)
    before = (indexer.indexed_block, keys(indexer.events()), indexer.job_records())
    paid_job(world)

    original = redis_lib.client.Pipeline.execute

    def crash(self, raise_on_error: bool = True):
        if self.command_stack:
            self.reset()
            raise redis_lib.exceptions.ConnectionError("killed during EXEC")
        return original(self, raise_on_error)

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", crash)
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        indexer.sync()
    monkeypatch.undo()
    assert (indexer.indexed_block, keys(indexer.events()), indexer.job_records()) == before
    indexer.sync()
    assert_matches_chain(indexer, world)


def test_two_indexers_on_one_redis_write_each_range_once(
    world: World, redis_client, prefix: str
) -> None:
    for _ in range(3):
        world.post(n=2)
    paid_job(world)
    indexers = [make_indexer(world, redis_client, prefix) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    head = world.w3.eth.block_number

    def run(indexer: ChainIndexer) -> None:
        try:
            barrier.wait()
            while indexer.indexed_block < head:
                indexer.sync(max_blocks=3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in indexers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    all_keys = keys(indexers[0].events())
    assert len(all_keys) == len(set(all_keys))
    assert_matches_chain(indexers[1], world)


# ---------------------------------------------------------------------------- reorgs


def test_indexer_follows_a_reorg_of_depth_3_after_a_paid_job(
    world: World, chain: LocalChain, redis_client, prefix: str
) -> None:
    job_id = paid_job(world)
    chain.mine(2)  # JobPaid is now 3 blocks deep
    indexer = make_indexer(world, redis_client, prefix)
    indexer.sync()
    assert indexer.job_record(job_id).state == JobState.FINALIZED
    paid_events = indexer.events(name="JobPaid")
    assert [e.args["jobId"] for e in paid_events] == [job_id]
    head = world.w3.eth.block_number
    assert paid_events[0].block_number == head - 2
    assert_matches_chain(indexer, world)  # the running tallies exist before the reorg

    # The replacement chain holds another transaction instead: a new job posted.
    client = world.clients[0]
    params = world.params()
    post = client.market.functions.postJob(params.as_tuple()).build_transaction(
        {"from": client.address, "gas": 500_000}
    )
    replacement = {k: post[k] for k in ("from", "to", "data", "gas")}
    chain._rpc("anvil_reorg", [3, [[replacement, 1]]])
    world.resync()
    assert world.w3.eth.block_number == head  # same height, different blocks

    report = indexer.sync()
    assert report.reorged_blocks == 3
    assert indexer.events(name="JobPaid") == []
    assert indexer.job_record(job_id).state == JobState.COMMITTED
    assert [e.name for e in report.new_events] == ["JobPosted", "Transfer"]  # escrow moved
    assert report.new_events[0].args["specHash"] == params.spec_hash
    assert_matches_chain(indexer, world)

    # The job is still payable on the new chain; the index follows.
    world.outsider.finalize(job_id)
    indexer.sync()
    assert indexer.job_record(job_id).state == JobState.FINALIZED
    assert_matches_chain(indexer, world)


def test_indexer_rewinds_when_the_chain_gets_shorter(
    world: World, chain: LocalChain, redis_client, prefix: str
) -> None:
    """evm_revert to an earlier snapshot drops blocks the index already holds; different
    blocks then arrive at the same heights."""
    indexer = make_indexer(world, redis_client, prefix)
    world.post()
    indexer.sync()
    fork = chain.snapshot()
    paid_job(world)
    world.post(n=2)
    indexer.sync()
    dropped = indexer.indexed_block
    chain.revert(fork)
    world.resync()
    forked_head = world.w3.eth.block_number

    report = indexer.sync()  # the chain is shorter than the index
    assert report.reorged_blocks == dropped - forked_head
    assert_matches_chain(indexer, world)

    world.post(n=3)
    indexer.sync()
    assert_matches_chain(indexer, world)


def test_indexer_verify_reports_a_record_behind_the_contract(
    world: World, redis_client, prefix: str
) -> None:
    job_id = world.committed_job()
    indexer = make_indexer(world, redis_client, prefix)
    indexer.sync()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.outsider.finalize(job_id)  # not yet indexed
    with pytest.raises(ChainError, match=f"job {job_id}"):
        indexer.job_records(verify=True)


def test_the_index_keeps_only_recent_block_hashes_and_survives_a_deeper_reorg(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    from meshcompute.market import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", 4)
    indexer = make_indexer(world, redis_client, prefix)
    paid_job(world)
    chain.mine(10)
    indexer.sync()
    kept = sorted(int(n) for n in redis_client.hkeys(f"{prefix}blocks"))
    head = world.w3.eth.block_number
    assert kept == list(range(head - 3, head + 1))  # not one hash per block forever
    assert_matches_chain(indexer, world)
    # a reorg deeper than the kept hashes: no ancestor among them, the index rewinds whole
    client = world.clients[0]
    post = client.market.functions.postJob(world.params().as_tuple()).build_transaction(
        {"from": client.address, "gas": 500_000})
    chain._rpc("anvil_reorg", [8, [[{k: post[k] for k in ("from", "to", "data", "gas")}, 1]]])
    world.resync()
    report = indexer.sync()
    assert report.reorged_blocks >= 8
    assert_matches_chain(indexer, world)


def test_posted_jobs_under_the_reward_floor_stay_out_of_the_open_scan(
    world: World, redis_client, prefix: str
) -> None:
    contracts = MeshContracts(world.w3, world.deployment)
    indexer = ChainIndexer(redis_client, contracts, start_block=world.deployment.block,
                           prefix=prefix, min_reward=10)
    (spam,) = world.post(reward=1)
    (real,) = world.post()
    indexer.sync()
    assert set(indexer.open_job_records()) == {real}  # matching never reads the 1-wei job
    assert indexer.job_record(spam).state == JobState.POSTED  # still indexed
    world.clients[0].reclaim(spam)  # the client cancels it: it ends like any other
    indexer.sync()
    assert indexer.job_record(spam).state == JobState.REFUNDED
    assert set(indexer.open_job_records()) == {real}


def _indexer_keeping(blocks: int, world: World, redis_client, prefix: str,
                     monkeypatch) -> ChainIndexer:
    """An indexer that keeps only ``blocks`` block hashes (so pruning has deep blocks to
    work on without mining thousands)."""
    from meshcompute.market import indexer as indexer_module

    monkeypatch.setattr(indexer_module, "KEPT_BLOCK_HASHES", blocks)
    return make_indexer(world, redis_client, prefix)


def test_prune_forgets_jobs_ended_long_ago_once_no_reorg_can_reach_them(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    indexer = _indexer_keeping(40, world, redis_client, prefix, monkeypatch)
    paid = paid_job(world)
    audited = world.audited_job()
    world.verifier_for(audited).resolve_audit(audited, True, b"\xee" * 32)
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.outsider.finalize(audited)  # paid after the appeal window
    (open_job,) = world.post()
    indexer.sync()
    assert indexer.job_record(paid).state == JobState.FINALIZED
    assert indexer.job_record(audited).state.terminal, indexer.job_record(audited).state
    assert redis_client.zcard(f"{prefix}other") > 0  # the world's mints and stakes
    # ended, but its events are still within reach of a reorg: kept
    assert indexer.prune(time.time() + 1) == []
    chain.mine(45)
    indexer.sync()
    # deep enough, but it ended after the cutoff: kept
    assert indexer.prune(time.time() - 3600) == []
    history = indexer.history_tallies()
    assert history == indexer.counted_tallies()
    assert indexer.prune(time.time() + 1) == [paid, audited]
    assert indexer.history_tallies() == history  # counts over all history survive
    assert indexer.counted_tallies() == history  # the running ones moved with the prune
    assert indexer.job_record(paid) is None
    assert indexer.events(job_id=paid) == []
    assert not redis_client.exists(f"{prefix}job:{paid}")
    # the open job and its events are untouched; deep events about no job are gone
    assert indexer.job_record(open_job).state == JobState.POSTED
    assert [e.name for e in indexer.events(job_id=open_job)] == ["JobPosted"]
    assert set(indexer.open_job_records()) == {open_job}
    assert redis_client.zcard(f"{prefix}other") > 0  # events about no job: their own step
    assert indexer.prune_unrelated_events() > 0
    assert redis_client.zcard(f"{prefix}other") == 0
    names = {e.name for e in indexer.events()}
    assert names == {"JobPosted"}
    # what metrics count over all history survives: two jobs finalized, one audit drawn and
    # passed (the paid job's draw, at rate 0, was never recorded)
    assert indexer.pruned_tallies() == {"state:finalized": 2, "audit:drawn": 1,
                                        "audit:passed": 1}
    assert indexer.prune(time.time() + 1) == []  # nothing twice
    # the index still follows the chain after pruning
    reclaimed = world.post()[0]
    world.clients[0].reclaim(reclaimed)
    indexer.sync()
    assert indexer.job_record(reclaimed).state == JobState.REFUNDED
    assert indexer.job_records(verify=True)[open_job].state == JobState.POSTED


def test_an_index_written_before_running_tallies_counts_them_once_then_moves_them(
    world: World, chain: LocalChain, redis_client, prefix: str
) -> None:
    indexer = make_indexer(world, redis_client, prefix)
    audited = world.audited_job()
    world.verifier_for(audited).resolve_audit(audited, True, b"\xee" * 32)
    indexer.sync()
    # what an index of the previous release holds: records and events, no running tallies
    redis_client.delete(f"{prefix}tallies", f"{prefix}tallies-built")
    counted = indexer.counted_tallies()
    assert counted["state:audit_passed"] == 1 and counted["audit:passed"] == 1
    assert indexer.history_tallies() == counted  # counted once from what is held
    world.advance(TEST_PARAMS.appeal_window_s + 1)
    world.outsider.finalize(audited)
    world.post()
    indexer.sync()  # then moved by each write
    tallies = indexer.history_tallies()
    assert tallies == indexer.counted_tallies()
    assert tallies.get("state:audit_passed", 0) == 0 and tallies["state:finalized"] == 1
    assert tallies["state:posted"] == 1


def test_an_index_written_before_end_times_by_state_sorts_them_once(
    world: World, redis_client, prefix: str
) -> None:
    indexer = make_indexer(world, redis_client, prefix)
    paid = paid_job(world)
    (cancelled,) = world.post()
    world.clients[0].reclaim(cancelled)
    indexer.sync()
    # what an index of the previous release holds: end times, none by final state
    redis_client.delete(*(f"{prefix}ended:{s.name.lower()}" for s in TERMINAL_STATES),
                        f"{prefix}ended-states-built")
    counts = indexer.ended_counts(0, 10**11, 1)
    assert counts == {"finalized": [1], "slashed": [0], "refunded": [1]}
    assert indexer.job_record(paid).state == JobState.FINALIZED


def test_an_index_written_before_pruning_existed_is_pruned_too(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    indexer = _indexer_keeping(4, world, redis_client, prefix, monkeypatch)
    paid = paid_job(world)
    chain.mine(6)
    indexer.sync()
    # what an index of the previous release holds: no end times, no list of other events
    redis_client.delete(f"{prefix}ended", f"{prefix}other")
    before = time.time()
    assert indexer.prune(before - 1) == []  # their retention counts from now
    assert redis_client.zcard(f"{prefix}ended") == 1
    assert redis_client.zcard(f"{prefix}other") > 0  # the other events got their list
    assert indexer.prune_unrelated_events() > 0  # the deep transfers and stakes: gone
    assert redis_client.zcard(f"{prefix}other") == 0
    assert indexer.prune(time.time() + 1) == [paid]
    assert indexer.events() == []


def test_prune_calls_forget_first_before_the_index_forgets_and_a_failure_there_keeps_the_jobs(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    indexer = _indexer_keeping(4, world, redis_client, prefix, monkeypatch)
    jobs = world.post(n=3)
    for job_id in jobs:
        world.clients[0].reclaim(job_id)
    chain.mine(6)
    indexer.sync()
    seen: list[list[int]] = []

    def crash(job_ids: list[int]) -> None:
        seen.append(job_ids)
        assert all(indexer.job_record(job_id) is not None for job_id in job_ids)
        raise RuntimeError("the market died here")

    with pytest.raises(RuntimeError):
        indexer.prune(time.time() + 1, limit=2, forget_first=crash)
    assert seen == [jobs[:2]]
    assert set(indexer.records_of(jobs)) == set(jobs)  # nothing forgotten: the next round
    assert indexer.prune(time.time() + 1, limit=2, forget_first=seen.append) == jobs[:2]
    assert seen[-1] == jobs[:2] and set(indexer.records_of(jobs)) == {jobs[2]}


def test_was_pruned_tells_a_forgotten_job_from_one_not_posted_or_still_held(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    indexer = _indexer_keeping(4, world, redis_client, prefix, monkeypatch)
    first, second, kept = world.post(n=3)
    for job_id in (first, second):
        world.clients[0].reclaim(job_id)
    chain.mine(6)
    indexer.sync()
    assert not indexer.was_pruned(first)  # nothing pruned yet
    assert indexer.prune(time.time() + 1) == [first, second]
    assert indexer.was_pruned(first) and indexer.was_pruned(second)
    assert not indexer.was_pruned(kept)  # open: still indexed
    assert not indexer.was_pruned(kept + 1) and not indexer.was_pruned(0)


def test_prune_unrelated_events_forgets_deep_ones_at_most_limit_at_a_time(
    world: World, chain: LocalChain, redis_client, prefix: str, monkeypatch
) -> None:
    indexer = _indexer_keeping(4, world, redis_client, prefix, monkeypatch)
    chain.mine(6)
    indexer.sync()
    deep = redis_client.zcount(f"{prefix}other", "-inf", indexer.indexed_block - 4)
    assert deep > 3  # the world's mints, approvals and stakes
    assert indexer.prune_unrelated_events(limit=3) == 3
    assert redis_client.zcard(f"{prefix}other") == deep - 3
    while indexer.prune_unrelated_events(limit=3):
        pass
    assert redis_client.zcard(f"{prefix}other") == 0
    assert indexer.events() == []
    with pytest.raises(BadInput):
        indexer.prune_unrelated_events(limit=0)
