"""The fast ABI paths of MeshContracts (event decoding, call encoding) give exactly what
web3's own decoder and contract functions give, on every log a full job life cycle writes."""

from __future__ import annotations

import pytest
from web3._utils.events import get_event_data

from meshcompute.chain.contracts import MeshContracts
from tests.contracts.world import TEST_PARAMS

pytestmark = pytest.mark.anvil


def test_fast_event_decoding_matches_web3_on_every_log(world) -> None:
    paid = world.committed_job()
    world.advance(TEST_PARAMS.challenge_window_s + 1)
    world.outsider.finalize(paid)
    world.audited_job()
    world.post(n=3)
    contracts = MeshContracts(world.w3, world.deployment)
    logs = world.w3.eth.get_logs({"fromBlock": world.deployment.block, "toBlock": "latest",
                                  "address": list(world.deployment.addresses.values())})
    names = set()
    for log in logs:
        event = contracts.decode_log(log)
        assert event is not None
        _name, abi = contracts._events_by_topic[bytes(log["topics"][0])]
        assert event.args == dict(get_event_data(world.w3.codec, abi, log)["args"])
        names.add(event.name)
    assert {"Transfer", "Staked", "JobPosted", "JobCommitted", "JobPaid", "AuditDrawn"} <= names


def test_encoded_calls_match_web3_contract_functions(world) -> None:
    contracts = MeshContracts(world.w3, world.deployment)
    ids = world.post(n=2)
    records = [contracts.job(i) for i in ids]
    ticket, signature = world.ticket(world.workers[0], ids)
    params = [world.params().as_tuple(), world.params(audit_bps=700).as_tuple()]
    cases = [
        ("finalizeBatch", (ids, [r.as_tuple() for r in records])),
        ("postJobs", (params,)),
        ("postJobsWithPermit", (params, 10**18, 2**40, 27, b"\x01" * 32, b"\x02" * 32)),
        ("assignAndCommit", ([r.as_tuple() for r in records], ticket.as_tuple(),
                             bytes(signature), [b"\x03" * 32, b"\x04" * 32])),
    ]
    market = contracts.market
    for name, args in cases:
        ours = contracts.encoded_call(market, name, *args)
        theirs = getattr(market.functions, name)(*args)._encode_transaction_data()
        assert ours == {"to": market.address, "data": theirs}, name
    with pytest.raises(Exception, match="takes 2 arguments"):
        contracts.encoded_call(market, "finalizeBatch", ids)
