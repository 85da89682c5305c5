"""MarketState on a real Redis: the guards that make tasks and API calls idempotent."""

from __future__ import annotations

import pytest
import redis as redis_lib

from meshcompute.core.lease import MatchPlan, PlannedOffer
from meshcompute.errors import AuthError
from meshcompute.market.state import LeaseInfo, MarketState

W1 = "0x" + "11" * 20
W2 = "0x" + "22" * 20


@pytest.fixture
def state(redis_url):
    client = redis_lib.Redis.from_url(f"{redis_url.rstrip('/')}/14")
    client.flushdb()
    yield MarketState(client)
    client.close()


def _lease(job_id: int, worker: str, expiry: int) -> LeaseInfo:
    return LeaseInfo(job_id=job_id, worker=worker, collateral=5, expiry=expiry, audit_bps=0,
                     ticket={"worker": worker, "job_ids": [job_id], "audit_bps": 0,
                             "lease_expiry": expiry},
                     signature="0x" + "00" * 65, leased_at=1.0)


def test_nonce_is_accepted_once(state):
    state.claim_nonce(W1, "a" * 32, expires=110, now=100)
    with pytest.raises(AuthError, match="already used"):
        state.claim_nonce(W1, "a" * 32, expires=110, now=100)
    state.claim_nonce(W2, "a" * 32, expires=110, now=100)  # nonces are per address


def test_a_job_has_one_offer_and_then_one_lease(state):
    assert state.create_offer(7, W1, 5, now=10, ttl_s=30)
    assert not state.create_offer(7, W2, 5, now=11, ttl_s=30)
    (offer,) = state.offers_for(W1)
    assert state.offers_for(W2) == []
    assert state.offer_to_lease(offer, _lease(7, W1, 100))
    assert not state.offer_to_lease(offer, _lease(7, W1, 100))  # the offer is gone
    assert not state.create_offer(7, W2, 5, now=12, ttl_s=30)  # leased: no new offer
    assert [lease.job_id for lease in state.leases_of(W1)] == [7]


def test_ending_a_lease_counts_once(state):
    state.create_offer(3, W1, 5, now=10, ttl_s=30)
    (offer,) = state.offers_for(W1)
    lease = _lease(3, W1, 100)
    state.offer_to_lease(offer, lease)
    assert [item.job_id for item in state.expired_leases(100)] == [3]
    assert state.expired_leases(99) == []
    assert state.end_lease(lease)
    assert not state.end_lease(lease)
    assert state.lease(3) is None and state.leases_of(W1) == []


def test_renewal_needs_the_current_lease(state):
    state.create_offer(4, W1, 5, now=10, ttl_s=30)
    (offer,) = state.offers_for(W1)
    old = _lease(4, W1, 100)
    state.offer_to_lease(offer, old)
    assert state.renew_lease(old, _lease(4, W1, 200))
    assert not state.renew_lease(old, _lease(4, W1, 300))  # stale view of the lease
    assert state.lease(4).expiry == 200
    assert not state.end_lease(old)  # an old lease cannot end the renewed one


def test_exclusions_expire(state):
    state.exclude(9, W1, until=50)
    state.exclude(9, W1, until=40)  # never shortened
    assert state.excluded(9, now=45) == {W1}
    assert state.excluded(9, now=51) == frozenset()


def test_metric_with_a_key_counts_once(state):
    state.incr_metric("lease_expiries", key="3:w:100")
    state.incr_metric("lease_expiries", key="3:w:100")
    state.incr_metric("lease_expiries", key="4:w:100")
    assert state.metrics()["lease_expiries"] == 2


def test_a_group_belongs_to_the_client_that_named_it_first(state):
    group = "ab" * 32
    assert state.add_to_group(group, 0, 1, W1)
    assert state.add_to_group(group, 1, 2, W1.upper().replace("0X", "0x"))
    # another client naming the same (public) group id cannot swap in its own shard
    assert not state.add_to_group(group, 1, 3, W2)
    assert state.group(group) == {0: 1, 1: 2}
    # the owner re-posting a shard replaces it
    assert state.add_to_group(group, 1, 4, W1)
    assert state.group(group) == {0: 1, 1: 4}


def test_offers_in_bulk_each_refuse_a_job_already_offered_or_leased(state):
    assert state.create_offer(1, W1, 5, now=10, ttl_s=30)
    assert state.offer_to_lease(state.offer(1), _lease(1, W1, 100))
    assert state.create_offer(2, W2, 5, now=10, ttl_s=30)
    made = state.create_offers([(1, W2, 5), (2, W1, 5), (3, W1, 7), (4, W2, 9)], now=20,
                               ttl_s=30, batch="b")
    assert made == [False, False, True, True]
    offers = {o.job_id: o for o in state.all_offers()}
    assert set(offers) == {2, 3, 4}  # 1 is leased
    assert offers[3].worker == W1 and offers[3].collateral == 7 and offers[3].batch == "b"
    assert offers[3].expires_at == 50.0 and offers[2].worker == W2
    assert state.drop_offer(3, W1)
    assert {o.job_id for o in state.all_offers()} == {2, 4}
    assert state.end_leases([_lease(1, W1, 100), _lease(1, W1, 100)]) == [True, False]


def test_offers_written_before_the_offer_index_are_found_once(state):
    assert state.create_offers([(5, W1, 5), (6, W2, 5)], now=10, ttl_s=30) == [True, True]
    state.r.delete(state._k("offer-ids"), state._k("offer-ids-built"))  # an older market
    fresh = MarketState(state.r)
    assert {o.job_id for o in fresh.all_offers()} == {5, 6}
    state.r.delete(state._k("offer", 6))  # gone without the index knowing: pruned
    assert {o.job_id for o in fresh.all_offers()} == {5}
    assert state.r.smembers(state._k("offer-ids")) == {b"5"}


def test_queue_facts_read_what_a_match_round_needs_in_one_go(state):
    group = "cd" * 32
    state.exclude(8, W1, until=50)
    state.exclude(8, W2, until=10)
    state.record_failure(8, W2, "oom")
    state.add_to_group(group, 0, 9, W1)
    state.r.set(state._k("spec-problem", 9), "bad spec")
    facts = state.queue_facts([8, 9], now=20)
    assert facts[8].first_seen == 20.0 and facts[8].failures == 1
    assert facts[8].excluded == {W1} and facts[8].group is None
    assert facts[9].spec_problem == "bad spec" and facts[9].group == group
    assert state.queue_facts([8], now=30)[8].first_seen == 20.0  # first seen once
    assert state.queue_facts([], now=30) == {}
    assert state.group_owners([group, "ef" * 32]) == {group: W1.lower()}


def test_write_match_applies_a_plan_in_one_round_trip(state):
    group = "cd" * 32
    ending = _lease(1, W1, 100)
    assert state.create_offer(1, W1, 5, now=10, ttl_s=30)
    assert state.offer_to_lease(state.offer(1), ending)
    state.r.set(state._k("spec-problem", 2), "old problem")
    assert state.create_offer(4, W2, 5, now=10, ttl_s=30)
    plan = MatchPlan(
        ending=[ending, _lease(7, W1, 100)],  # 7 holds no lease: not ended by this call
        joins=[(group, 0, 3, W2)],
        problem_changes={2: None, 5: "no spec"},
        offers=[PlannedOffer(3, W1, 7, "3-2-20.000000"), PlannedOffer(4, W1, 7, "")],
    )
    ended, made = state.write_match(plan, now=20, ttl_s=30)
    assert ended == [True, False] and made == [True, False]  # 4 is offered to W2 already
    assert state.lease(1) is None
    assert state.group(group) == {0: 3}
    assert state.failure(2) is None and state.failure(5) == "no spec"
    offer = state.offer(3)
    assert (offer.worker, offer.collateral, offer.batch, offer.expires_at) == (
        W1, 7, "3-2-20.000000", 50.0)
    assert state.write_match(MatchPlan(), now=20, ttl_s=30) == ([], [])


def test_forget_jobs_drops_every_key_of_the_jobs_and_only_theirs(state):
    for job_id in (7, 8):
        state.record_failure(job_id, W1, "broke")
        state.exclude(job_id, W1, 10**10)
        state.save_result(job_id, W1, "ab" * 32, 1.0)
        state.hold_for_ticket(job_id, 10**10)
        state.queue_facts([job_id], 1.0)
    state.create_offer(7, W2, 5, now=10, ttl_s=30)
    offer = state.offer(7)
    assert offer is not None
    state.offer_to_lease(offer, _lease(7, W2, 500))
    state.create_offer(8, W2, 5, now=10, ttl_s=30)
    assert state.add_to_group("g", 0, 7, W1) and state.add_to_group("g", 1, 8, W1)
    assert state.forget_jobs([7]) == 0  # shard 1 still names the group
    assert state.lease(7) is None and state.leases_of(W2) == [] and state.all_leases() == []
    assert state.failures(7) == {} and state.failure(7) is None and state.result(7) is None
    assert state.excluded(7, 0) == frozenset() and 7 not in state.held_for_tickets(0)
    assert state.group("g") == {1: 8}
    assert not any(key.decode().endswith(":7") for key in state.r.scan_iter())
    assert not state.r.hexists(f"{state.prefix}first-seen", "7")
    # the other job keeps everything; forgetting twice changes nothing more
    assert state.offer(8) is not None and state.failures(8) and 8 in state.held_for_tickets(0)
    assert state.forget_jobs([7]) == 0
    assert state.forget_jobs([8]) == 1 and state.group_owner("g") is None
    assert [o.job_id for o in state.all_offers()] == []
