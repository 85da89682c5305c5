"""Helpers for the contract suites: revert assertions, raw deployments, solvency checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3 import Web3

from meshcompute.chain.artifacts import load_artifact
from meshcompute.chain.contracts import MeshActor, MeshContracts
from meshcompute.chain.sender import TxSender
from meshcompute.core.job import JobRecord
from meshcompute.errors import ContractRevert

FIXTURE_ARTIFACTS = Path(__file__).resolve().parents[1] / "fixtures" / "artifacts"
ZERO = "0x" + "00" * 20


# ---------------------------------------------------------------------------- reverts


@contextmanager
def reverts(
    error_name: str, family: type[BaseException] = ContractRevert, **expected_args: Any
) -> Iterator[pytest.ExceptionInfo[ContractRevert]]:
    """``pytest.raises(family)`` that also asserts the decoded custom error's name (and,
    given as keywords, some of its arguments)."""
    with pytest.raises(family) as info:
        yield info
    error = info.value
    assert isinstance(error, ContractRevert), repr(error)
    assert error.error_name == error_name, str(error)
    for key, value in expected_args.items():
        assert key in error.args_dict, f"{key!r} not in {error.args_dict}"
        got = error.args_dict[key]
        if isinstance(got, str) and isinstance(value, str):
            got, value = got.lower(), value.lower()
        assert got == value, f"{error_name}.{key}: {got!r} != {value!r}"


def send(actor: MeshActor, call: Any) -> Any:
    """Send a raw bound contract call from ``actor``."""
    return actor.sender.send(call)


# ---------------------------------------------------------------------------- deployment


def artifact(name: str) -> dict[str, Any]:
    """A shipped artifact, or a test-only one from tests/fixtures/artifacts."""
    path = FIXTURE_ARTIFACTS / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return load_artifact(name)


def deploy(sender: TxSender, name: str, *args: Any) -> Any:
    """Deploy contract ``name`` with constructor ``args``; returns the web3 contract."""
    art = artifact(name)
    w3 = sender.w3
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = sender.send(factory.constructor(*args))
    address = Web3.to_checksum_address(receipt["contractAddress"])
    sender.name_contract(address, name)
    return w3.eth.contract(address=address, abi=art["abi"])


def at(w3: Web3, name: str, address: str) -> Any:
    return w3.eth.contract(address=address, abi=artifact(name)["abi"])


# ---------------------------------------------------------------------------- records and events


def forged(record: JobRecord, **changes: Any) -> JobRecord:
    """A copy of ``record`` with some fields changed (a forged or stale record)."""
    from dataclasses import replace

    return replace(record, **changes)


def market_events(contracts: MeshContracts, name: str, from_block: int | None = None) -> list:
    return [
        e
        for e in contracts.events(from_block, addresses=[contracts.deployment.address("JobMarket")])
        if e.name == name
    ]


def events_in(contracts: MeshContracts, receipt: Any, name: str) -> list:
    """Decoded events called ``name`` emitted in the transaction of ``receipt``."""
    block = int(receipt["blockNumber"])
    tx = Web3.to_hex(receipt["transactionHash"])
    return [e for e in contracts.events(block, block) if e.name == name and e.tx_hash == tx]


# ---------------------------------------------------------------------------- solvency


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


_READS = {
    "balanceOf": (_selector("balanceOf(address)"), ["uint256"]),
    "accountOf": (_selector("accountOf(address)"), ["uint256"] * 4),
    "stakeOf": (_selector("stakeOf(address)"), ["uint256"] * 5),
    "jobDigest": (_selector("jobDigest(uint256)"), ["bytes32"]),
}


def batch_read(w3: Web3, calls: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
    """Many view calls ``(contract address, view name, argument)`` in one JSON-RPC batch
    (the web3 contract wrappers cost ~5 ms a call; a solvency check makes dozens)."""
    requests = []
    for to, name, arg in calls:
        selector, _ = _READS[name]
        arg_type = "uint256" if isinstance(arg, int) else "address"
        data = "0x" + (selector + abi_encode([arg_type], [arg])).hex()
        requests.append(("eth_call", [{"to": to, "data": data}, "latest"]))
    responses = w3.provider.make_batch_request(requests)
    assert isinstance(responses, list), responses
    responses = sorted(responses, key=lambda r: r["id"])
    out = []
    for (_, name, _), response in zip(calls, responses, strict=True):
        assert "result" in response, response
        out.append(tuple(abi_decode(_READS[name][1], bytes.fromhex(response["result"][2:]))))
    return out


def _addresses_in_events(contracts: MeshContracts) -> set[str]:
    found: set[str] = set()
    for event in contracts.events():
        for value in event.args.values():
            if isinstance(value, str) and Web3.is_address(value) and value != ZERO:
                found.add(Web3.to_checksum_address(value))
    return found


def assert_solvent(world: Any, extra: tuple[str, ...] = ()) -> dict[int, JobRecord]:
    """Check the two solvency equations of the deployment, and that every worker's locked
    stake is exactly the collateral of the jobs it holds.

    ``credit.balanceOf(JobMarket) == sum(escrow of every job) + sum(withdrawable of every
    account)`` and ``credit.balanceOf(StakeManager) == sum(free + locked + unbonding)``.
    Accounts are the world's actors plus every address any event of the deployment names
    (fee recipients, contract accounts...). Job records are rebuilt from events and each is
    checked against the digest the contract stores (zero for an ended job). Returns the
    records.
    """
    reader: MeshContracts = world.admin
    w3 = reader.w3
    token = reader.deployment.address("MeshCredit")
    market = reader.deployment.address("JobMarket")
    stakes = reader.deployment.address("StakeManager")
    records = reader.job_records(verify=False)
    accounts = {Web3.to_checksum_address(a.address) for a in world.actors}
    accounts |= {Web3.to_checksum_address(a) for a in extra}
    accounts |= _addresses_in_events(reader)
    ordered = sorted(accounts)
    job_ids = sorted(records)

    calls: list[tuple[str, str, Any]] = [(token, "balanceOf", market), (token, "balanceOf", stakes)]
    calls += [(market, "accountOf", a) for a in ordered]
    calls += [(stakes, "stakeOf", a) for a in ordered]
    calls += [(market, "jobDigest", i) for i in job_ids]
    results = batch_read(w3, calls)
    (market_balance,), (stake_balance,) = results[0], results[1]
    n = len(ordered)
    account_rows = results[2 : 2 + n]
    stake_rows = results[2 + n : 2 + 2 * n]
    digests = results[2 + 2 * n :]

    for job_id, (digest,) in zip(job_ids, digests, strict=True):
        # an ended job's slot is cleared: its expected digest is zero
        assert reader.expected_digest(records[job_id]) == bytes(digest), (
            f"job {job_id}: record rebuilt from events differs from the contract's digest"
        )

    escrow = sum(r.escrow for r in records.values())
    withdrawable = sum(row[0] for row in account_rows)
    assert market_balance == escrow + withdrawable, (
        f"JobMarket holds {market_balance}, owes escrow {escrow} + withdrawable {withdrawable}"
    )

    staked = 0
    for account, (free, locked, unbonding, _release, _slashed) in zip(
        ordered, stake_rows, strict=True
    ):
        staked += free + locked + unbonding
        held = sum(
            amount
            for r in records.values()
            for who, amount in r.locks().items()
            if Web3.to_checksum_address(who) == account
        )
        assert locked == held, f"{account} has {locked} locked but holds {held} in jobs"
    assert stake_balance == staked, f"StakeManager holds {stake_balance}, owes {staked}"
    return records


def snapshot_balances(world: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every token balance, market account and stake position the test could touch."""
    reader: MeshContracts = world.admin
    token = reader.deployment.address("MeshCredit")
    market = reader.deployment.address("JobMarket")
    stakes = reader.deployment.address("StakeManager")
    accounts = {a.address for a in world.actors} | set(extra)
    accounts |= set(reader.deployment.addresses.values())
    ordered = sorted(accounts)
    calls: list[tuple[str, str, Any]] = []
    for a in ordered:
        calls += [(token, "balanceOf", a), (market, "accountOf", a), (stakes, "stakeOf", a)]
    results = batch_read(reader.w3, calls)
    return {a: tuple(results[3 * k : 3 * k + 3]) for k, a in enumerate(ordered)}


# ---------------------------------------------------------------------------- job builders


def failed_job(world: Any, **kw: Any) -> int:
    """A job drawn for audit and failed by the verifier the draw assigned (state
    AuditFailed)."""
    job_id = world.audited_job(**kw)
    world.verifier_for(job_id).resolve_audit(job_id, False, b"\xee" * 32)
    return job_id


def appealed_job(world: Any, **kw: Any) -> int:
    """A failed job its worker appealed (state Appealed), with the appeal's draw taken (its
    seed, the block after the appeal, mined)."""
    job_id = failed_job(world, **kw)
    record = world.job(job_id)
    worker = next(w for w in world.workers if w.address == record.worker)
    worker.appeal(job_id)
    world.chain.mine(2)
    return job_id
