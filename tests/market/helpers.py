"""Helpers for market tests: blobs, specs and jobs posted on chain."""

from __future__ import annotations

import os

from eth_account.signers.local import LocalAccount

from meshcompute.chain.contracts import MeshActor
from meshcompute.core.spec import JobSpec
from meshcompute.market import rounds
from meshcompute.wire.market_client import Hardware, MarketClient
from tests.market.conftest import Market

CPU = Hardware(device="cpu", cores=2, memory_mb=4096, torch="2.13.0")


def upload_spec(client: MarketClient, **spec_fields) -> JobSpec:
    program = client.put_blob(b"program " + os.urandom(16))
    inputs = client.put_blob(b"inputs " + os.urandom(16))
    spec = JobSpec(program=program, inputs=inputs, **spec_fields)
    client.put_spec(spec)
    return spec


def post(mk: Market, spec: JobSpec | None = None, *, client: MeshActor | None = None,
         spec_hash: bytes | None = None, **overrides) -> int:
    client = client or mk.world.clients[0]
    if spec_hash is None:
        assert spec is not None
        spec_hash = bytes.fromhex(spec.sha256)
    return client.post_job(mk.world.params(spec_hash=spec_hash, **overrides))


def register(mk: Market, worker: MeshActor | LocalAccount, *, slots: int = 4,
             price_wei: int = 0) -> MarketClient:
    account = worker.account if isinstance(worker, MeshActor) else worker
    client = mk.client(account)
    client.register(CPU, price_wei=price_wei, slots=slots)
    return client


def index_and_match(mk: Market) -> rounds.MatchReport:
    mk.rt.indexer.sync()
    return rounds.match_round(mk.rt)


def pass_chain_time(mk: Market, moment: int) -> None:
    """Move chain time past ``moment`` (anvil's clock after snapshot reverts is not exactly
    the wall clock plus the increases, so step until the market's clock is past it)."""
    for _ in range(20):
        now = mk.rt.chain_now()
        if now > moment:
            return
        mk.world.chain.increase_time(moment - now + 1)
    raise AssertionError(f"chain time did not pass {moment}")
