"""Stateful property test of the deployed marketplace on anvil.

A hypothesis ``RuleBasedStateMachine`` drives the real MeshCredit, StakeManager and JobMarket
with random actors (two clients; three staked workers, an unstaked outsider and a verifier who
also takes work; two verifiers). Rules: stake, unstake, withdrawUnbonded, post one job, post a
batch, assign, commit, assignAndCommit, advance the clock (by a random amount or to one second
around a deadline/window boundary), finalize, finalizeBatch (duplicates, settled, forged and
unknown entries included), resolveAudit, appeal, resolveAppeal, reclaim, withdraw, faucet,
pause/unpause, plus ``progress``, which drives open jobs along their life so that examples
reach payment, slashing and refunds.

A Python model predicts every call field for field: a call must either succeed or revert with
exactly the custom error the model predicts for that situation (``Panic``, ``Revert`` and
``UnknownError`` never qualify). After every transaction the job records rebuilt from events
(checked against the contract's digests, and now and then against a full
``job_records(verify=True)``) must equal the model's, and so must every market account, worker
record, stake position and token balance. Independently of the model, after every
transaction:

* solvency: ``balanceOf(JobMarket) == sum(JobRecord.escrow) + sum(withdrawable)`` over every
  account (the fee recipient is the admin) and ``balanceOf(StakeManager) == sum(free + locked
  + unbonding)``;
* each staker's locked stake is the collateral of the jobs it holds (``holds_collateral``);
* no job has more than one terminal outcome (JobPaid, JobSlashed, or a JobRefunded that is not
  the client half of a slash), and a job is terminal exactly when it has one; the ledger events
  carry the amounts of ``core.payout``;
* job states only move forward: the new state is reachable from the old through
  ``core.job.TRANSITIONS`` (several hops allowed, e.g. POSTED -> COMMITTED);
* a staker's total stake shrinks only when a slash or an unbonded withdrawal of that staker
  happened in the step, and exactly by those amounts;
* the token supply changes only by mints (faucet drips).

Time is deterministic: every example runs with ``anvil_setBlockTimestampInterval(0)``, so each
block keeps the previous timestamp and the clock moves only when the machine moves it
(``evm_setNextBlockTimestamp``; anvil ignores ``evm_increaseTime`` while an interval is set,
so ``World.advance`` is not used). Gas estimation then sees the timestamp of the block that
will mine the transaction (it runs one block number behind, which the model accounts for), so
every revert happens at estimation, with its decoded error.

Each example starts from an anvil snapshot that its teardown reverts (then ``world.resync()``).
``MESH_HYPOTHESIS_EXAMPLES`` (default 130) and ``MESH_HYPOTHESIS_STEPS`` (default 25) override
the settings for longer local runs, ``MESH_HYPOTHESIS_RANDOM=1`` draws new examples instead of
the fixed ones; ``MESH_INVARIANTS_STATS=1`` prints every counter.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3

from meshcompute.chain.contracts import ChainEvent, JobParams, MeshActor
from meshcompute.chain.local import LocalChain
from meshcompute.core.audit_draw import VerifierSeat, assigned_verifier, verdict_covers
from meshcompute.core.audit_rate import audit_bps
from meshcompute.core.job import (
    JOB_EVENTS,
    TERMINAL_STATES,
    TRANSITIONS,
    ZERO_ADDRESS,
    ZERO_HASH,
    JobRecord,
    JobState,
    apply_event,
    verifier_bond,
)
from meshcompute.core.lease import escalated
from meshcompute.core.payout import BPS, slash_split, split_reward
from meshcompute.errors import ContractRevert
from meshcompute.units import TOKEN
from tests.contracts.world import FUNDS, TEST_PARAMS, World, build_world

pytestmark = [pytest.mark.property, pytest.mark.anvil]

EXAMPLES = int(os.environ.get("MESH_HYPOTHESIS_EXAMPLES", "130"))
STEPS = int(os.environ.get("MESH_HYPOTHESIS_STEPS", "25"))
VACUITY_MIN_EXAMPLES = 100

FEE_BPS = TEST_PARAMS.fee_bps
#: The state machine runs on a production-like deployment: the chain raises each job's audit
#: rate to the deterrence rate of the worker's record and free stake at assignment.
PARAMS = replace(TEST_PARAMS, audit_deterrence=True)
MIN_AUDIT_BPS = PARAMS.min_audit_bps
DETERRENCE = PARAMS.audit_deterrence
CHALLENGE = TEST_PARAMS.challenge_window_s
AUDIT = TEST_PARAMS.audit_window_s
APPEAL = TEST_PARAMS.appeal_window_s
UNBONDING = TEST_PARAMS.unbonding_delay_s
MAX_UINT = 2**256 - 1
BATCH_GAS = 3_000_000
HISTORY_WINDOW = 8191  # EIP-2935 block hash history (anvil has it)

#: Reverts that no model may ever allow: they mean an assertion, an arithmetic fault or a
#: revert the decoder could not explain.
NEVER_OK = frozenset({"Panic", "Revert", "UnknownError", "Error"})

#: Counters over the whole run (all examples, shrinking included), for the summary and the
#: non-vacuity check.
STATS: Counter[str] = Counter()

#: Non-terminal states, in order.
ACTIVE = tuple(s for s in JobState if s != JobState.NONE and not s.terminal)


def _reachable() -> dict[JobState, frozenset[JobState]]:
    """For each state, the states reachable through TRANSITIONS in zero or more hops."""
    out: dict[JobState, frozenset[JobState]] = {}
    for start in JobState:
        seen = {start}
        todo = deque([start])
        while todo:
            for nxt in TRANSITIONS[todo.popleft()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        out[start] = frozenset(seen)
    return out


REACHABLE = _reachable()


# ------------------------------------------------------------------------------ model types


@dataclass
class StakeModel:
    free: int
    locked: int
    unbonding: int
    release_at: int
    slashed: int

    @property
    def total(self) -> int:
        return self.free + self.locked + self.unbonding


@dataclass
class AccountModel:
    withdrawable: int
    earned: int
    withdrawn: int
    completed: int
    missed: int
    slashed: int
    audits_passed: int


@dataclass
class ChainView:
    """One consistent read of everything the invariants need (one JSON-RPC batch)."""

    block: int
    now: int
    supply: int
    paused: bool
    next_job_id: int
    tokens: dict[str, int]
    accounts: dict[str, AccountModel]
    stakes: dict[str, StakeModel]
    digests: dict[int, bytes]


class Revert(Exception):
    """Raised by a prediction: the contract must revert with this custom error."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


class _Reader:
    """Reads everything the invariants need in one JSON-RPC batch. The call data is encoded
    once (building web3 contract calls costs more than anvil answering them)."""

    def __init__(
        self, w3: Web3, addresses: dict[str, str], accounts: Sequence[str], holders: Sequence[str]
    ) -> None:
        self.w3 = w3
        self.accounts = list(accounts)
        self.holders = list(holders)
        credit, market, stakes = (addresses[n] for n in ("MeshCredit", "JobMarket", "StakeManager"))
        self.market = market

        def call(to: str, signature: str, *args: str) -> dict[str, Any]:
            data = _selector(signature) + b"".join(
                bytes.fromhex(a[2:]).rjust(32, b"\0") for a in args
            )
            return {
                "method": "eth_call",
                "params": [{"to": to, "data": "0x" + data.hex()}, "latest"],
            }

        self.static: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
        fixed = [
            call(credit, "totalSupply()"),
            call(market, "paused()"),
            call(market, "nextJobId()"),
            *(call(credit, "balanceOf(address)", a) for a in self.holders),
            *(call(market, "accountOf(address)", a) for a in self.accounts),
            *(call(market, "workerRecord(address)", a) for a in self.accounts),
            *(call(stakes, "stakeOf(address)", a) for a in self.accounts),
        ]
        self.static += [(c["method"], c["params"]) for c in fixed]
        self.digest_selector = _selector("jobDigest(uint256)")

    def read(self, job_ids: Sequence[int]) -> ChainView:
        requests = list(self.static)
        for job_id in job_ids:
            data = self.digest_selector + job_id.to_bytes(32, "big")
            requests.append(
                ("eth_call", [{"to": self.market, "data": "0x" + data.hex()}, "latest"])
            )
        responses = self.w3.provider.make_batch_request(requests)  # type: ignore[arg-type]
        assert isinstance(responses, list), f"batch request failed: {responses}"
        for (method, _params), response in zip(requests, responses, strict=True):
            assert "error" not in response, f"{method} failed: {response['error']}"
        block = responses[0]["result"]
        words = [_words(r["result"]) for r in responses[1:]]
        supply, paused, next_id = words[0][0], words[1][0], words[2][0]
        at = 3
        tokens = {a: words[at + i][0] for i, a in enumerate(self.holders)}
        at += len(self.holders)
        n = len(self.accounts)
        accounts = {
            a: AccountModel(*words[at + i][:4], *words[at + n + i][1:])
            for i, a in enumerate(self.accounts)
        }
        stakes = {a: StakeModel(*words[at + 2 * n + i]) for i, a in enumerate(self.accounts)}
        at += 3 * n
        digests = {job_id: words[at + i][0].to_bytes(32, "big") for i, job_id in enumerate(job_ids)}
        return ChainView(
            block=int(block["number"], 16),
            now=int(block["timestamp"], 16),
            supply=supply,
            paused=bool(paused),
            next_job_id=next_id,
            tokens=tokens,
            accounts=accounts,
            stakes=stakes,
            digests=digests,
        )


def _words(raw: str) -> list[int]:
    data = bytes.fromhex(raw[2:])
    return [int.from_bytes(data[i : i + 32], "big") for i in range(0, len(data), 32)]


# ------------------------------------------------------------------------------ strategies

REWARDS = st.sampled_from([100 * TOKEN, 1, 3, 10**15 + 1, 1234 * TOKEN // 7])
AUDIT_FEES = st.sampled_from([10 * TOKEN, 0, 1, 3 * TOKEN + 5])
COLLATERALS = st.sampled_from([50 * TOKEN, 0, 1, 2_000 * TOKEN, 6_000 * TOKEN, 20_000 * TOKEN])
DEADLINE_IN = st.sampled_from([3600, 600, 120, 30, 1])
#: One job in ten is malformed in one way (or too expensive for the client).
JOB_FLAWS = st.sampled_from([None] * 9 + ["zero reward", "deadline now", "bps", "expensive"])
JOB_AUDIT_BPS = st.sampled_from([0, 10_000, 5_000, 2_500])
TICKET_AUDIT_BPS = st.sampled_from([0, 10_000, 5_000])
LEASES = st.sampled_from([600, 60, 3600])
TICKET_VARIANTS = st.sampled_from(
    ["ok"] * 8 + ["expired", "wrong_sender", "bad_signer", "bad_bps", "duplicate"]
)
RESULTS = st.sampled_from([b"\x42" * 32, b"\x07" * 32, ZERO_HASH])
ADVANCE_SECONDS = st.sampled_from([61, 301, 1, 30, 0, 700, 3600, UNBONDING + 1])
#: Now and then more than 256 blocks, past what ``blockhash`` sees: the draw's seed is then
#: read from the EIP-2935 history (8191 blocks) and must not change; anvil takes ~0.1 s to mine
#: them, hence rarely.
ADVANCE_BLOCKS = st.sampled_from([2, 1, 5, 2, 1, 5, 2, 1, 5, 300])


def _has_open_job(machine: MarketMachine) -> bool:
    return any(not j.state.terminal for j in machine.jobs.values())


def _more(name: str) -> Any:
    """One more registration of the ``progress`` rule, under its own name: hypothesis
    disables a random subset of rules (by name) in each example ("swarm testing"), and the
    lifecycle driver should rarely be off altogether."""

    def progress(self: MarketMachine, data: st.DataObject) -> None:
        type(self).progress(self, data)

    progress.__name__ = progress.__qualname__ = name
    return precondition(_has_open_job)(rule(data=st.data())(progress))


class MarketMachine(RuleBasedStateMachine):
    """The marketplace and its model. ``world`` is set by the test before the run."""

    world: World
    base: dict[str, Any] | None = None

    # ================================================================== setup / teardown

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.w3 = w.w3
        self.reader: MeshActor = w.admin
        self.snapshot_id = w.chain.snapshot()
        STATS["examples"] += 1
        self._rpc("anvil_setBlockTimestampInterval", [0])
        try:
            self._setup()
        except BaseException:
            self.teardown()  # hypothesis only tears down machines it finished building
            raise

    def _setup(self) -> None:
        w = self.world
        d = w.deployment
        self.market_addr = d.address("JobMarket")
        self.stakes_addr = d.address("StakeManager")
        self.accounts = [a.address for a in w.actors] + [w.assigner.address]
        self.holders = [*self.accounts, self.market_addr, self.stakes_addr]
        self.clients = list(w.clients)
        self.workers = [*w.workers, w.outsider, w.verifiers[0]]
        self.stakers = [*w.workers, w.outsider, *w.verifiers]
        self.verifier_pool = [*w.verifiers, w.clients[0]]  # a client holds no verifier seat
        self.unit, _exit = w.verifiers[0].registry_terms()
        self.blockhashes: dict[int, bytes] = {}
        self.digests: dict[JobRecord, bytes] = {}
        self.chain_reader = _Reader(self.w3, d.addresses, self.accounts, self.holders)

        # Every example starts from the same snapshot: read its state once.
        base = type(self).base
        if base is None:
            credit = self.reader.credit.functions
            cooldown = int(credit.faucetCooldown().call())
            last_drip = {}  # 0 when never
            for a in w.actors:
                next_time = int(credit.nextFaucetTime(a.address).call())
                last_drip[a.address] = next_time - cooldown if next_time else 0
            records = self.reader.job_records(verify=True)
            base = type(self).base = {
                "fee_recipient": self.reader.market.functions.feeRecipient().call(),
                "faucet_amount": int(credit.faucetAmount().call()),
                "faucet_cooldown": cooldown,
                "faucet_last": last_drip,
                "records": records,
                "view": self._read(records),
            }
        self.fee_recipient: str = base["fee_recipient"]
        self.faucet_amount: int = base["faucet_amount"]
        self.faucet_cooldown: int = base["faucet_cooldown"]
        self.faucet_last: dict[str, int] = dict(base["faucet_last"])

        # The chain as it is now is the model's starting point.
        self.records: dict[int, JobRecord] = dict(base["records"])
        view: ChainView = base["view"]
        self.block = view.block
        self.now = view.now
        self.supply = view.supply
        self.paused = view.paused
        self.next_job_id = view.next_job_id
        self.tokens = dict(view.tokens)
        self.accts = {a: replace(m) for a, m in view.accounts.items()}
        self.stake = {a: replace(m) for a, m in view.stakes.items()}
        self.jobs: dict[int, JobRecord] = dict(self.records)
        #: The block of the transaction that opened each job's pending later verdict (an
        #: appeal, a dispute, a void's proposal): that verdict's draw is seeded by the next one.
        self.stage_blocks: dict[int, int] = {}
        self.seen_block = view.block
        self.prev_view = view
        #: The registry's seats and the block they were read in, kept while the blocks mined
        #: since carry no event of the registry (every change of a seat emits one: a join, an
        #: admission, a leave, a burn for silence); None: read them again.
        self.seat_cache: tuple[int, list[VerifierSeat]] | None = None
        self.registry_addr = d.address("VerifierRegistry").lower()
        self.terminal_events: Counter[int] = Counter()
        self.checks = 0
        self.spec_counter = 0

    def teardown(self) -> None:
        for j in getattr(self, "jobs", {}).values():
            STATS[f"left in {j.state.name}"] += 1
        w = self.world
        w.chain.revert(self.snapshot_id)
        self._rpc("anvil_removeBlockTimestampInterval", [])
        w.resync()

    def _rpc(self, method: str, params: list[Any]) -> Any:
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in response, f"{method}: {response['error']}"
        return response.get("result")

    # ================================================================== chain reads

    def _read(self, records: dict[int, JobRecord]) -> ChainView:
        return self.chain_reader.read(sorted(records))

    def _digest(self, record: JobRecord) -> bytes:
        """What jobDigest reads for ``record``: zero once the job has ended (the contract
        clears the slot), its hash while it is open."""
        if record.state.terminal:
            return ZERO_HASH
        digest = self.digests.get(record)
        if digest is None:
            digest = self.digests[record] = self.reader.hash_job(record)
        return digest

    def _open(self, job_id: int) -> None:
        """The contract's record check on a known job: an ended job has no digest left."""
        if self.jobs[job_id].state.terminal:
            raise Revert("JobClosed")

    def _blockhash(self, number: int) -> bytes:
        if number not in self.blockhashes:
            self.blockhashes[number] = bytes(self.w3.eth.get_block(number)["hash"])
        return self.blockhashes[number]

    def _drawn(self, job_id: int, j: JobRecord, number: int) -> bool:
        """JobMarket._drawAudit as evaluated in a block numbered ``number``."""
        seed_block = j.committed_block + 1
        if not number - HISTORY_WINDOW <= seed_block < number:
            return True  # neither blockhash() nor EIP-2935 has it: the job counts as drawn
        seed = self._blockhash(seed_block)
        draw = int.from_bytes(keccak(abi_encode(["bytes32", "uint256"], [seed, job_id])), "big")
        return draw % BPS < j.audit_bps

    def _assignee(self, job_id: int, j: JobRecord, appealed: bool) -> str | None:
        """JobMarket._assignee (VerifierRegistry.assignee; the pure core's
        ``assigned_verifier``) in the latest block. A proposed void's confirmation (stage 3)
        goes to a seat other than the proposer, within an audit window of the proposal."""
        confirm = j.state == JobState.VOID_PROPOSED
        closes = (j.resolved_at + APPEAL + AUDIT) if appealed else (
            j.resolved_at + AUDIT if confirm else j.committed_at + CHALLENGE + AUDIT)
        seed_block = self._seed_block(job_id, j, later=appealed or confirm)
        if self.block <= seed_block:
            return None  # the seed block is not mined: nobody is assigned yet
        in_reach = self.block - HISTORY_WINDOW <= seed_block < self.block
        seed = self._blockhash(seed_block) if in_reach else bytes(32)
        excluded = [j.worker, j.client, *([j.auditor] if appealed or confirm else [])]
        seats, stage = self._seats(), 3 if confirm else int(appealed)
        assigned = None
        for cover in verdict_covers(j, stage):  # the first cover some candidate holds
            def draw(escalate: bool, cover: int = cover) -> str | None:
                return assigned_verifier(
                    seats, seed, job_id, committed_block=j.committed_block, cover=cover,
                    unit=self.unit, excluded=excluded, stage=stage, escalated=escalate,
                    keccak=keccak)
            if draw(False) is not None:
                assigned = draw(escalated(self.now, closes, AUDIT))
                break
        return assigned

    def _seed_block(self, job_id: int, j: JobRecord, *, later: bool) -> int:
        """JobMarketSettlement._seedBlock: the block after the commit for the audit, after the
        transaction that opened the verdict for a later one."""
        later = later and j.state in (JobState.APPEALED, JobState.DISPUTED,
                                      JobState.VOID_PROPOSED)
        if not later:  # (asked of a job no later verdict is open for: the audit's seed)
            return j.committed_block + 1
        if job_id not in self.stage_blocks:  # opened before the model started: from events
            opened = [e.block_number for e in self.world.admin.job_events([job_id])
                      if e.name in ("AuditAppealed", "VoidProposed")]
            self.stage_blocks[job_id] = max(opened)
        return self.stage_blocks[job_id] + 1

    def _draw_pending(self, job_id: int, j: JobRecord, *, later: bool) -> bool:
        """Whether gas estimation (in the latest block) finds the draw's seed block unmined."""
        return self.block <= self._seed_block(job_id, j, later=later)

    def _seats(self) -> list[VerifierSeat]:
        """The registry's seats in the latest block, read from the chain (a burn for silence
        can make one leave, for later jobs). Read again unless every block since the last read
        has been scanned for events (by the invariants) and none came from the registry."""
        if self.seat_cache is None or self.seat_cache[0] != self.block:
            self.seat_cache = (self.block, self.world.admin.verifier_seats())
        return self.seat_cache[1]

    def _assigned_actor(self, job_id: int, j: JobRecord, appealed: bool) -> MeshActor | None:
        address = self._assignee(job_id, j, appealed)
        return next((v for v in self.world.verifiers if v.address == address), None)

    # ================================================================== sending

    def _send(self, label: str, predict: Callable[[], Any], send: Callable[[], Any]) -> Any:
        """Run ``predict`` (raises Revert when the model expects one), then ``send``; checks
        that both agree. Returns (True, prediction) on success, (False, None) on a revert."""
        try:
            predicted = predict()
            expected: str | None = None
        except Revert as exc:
            predicted, expected = None, exc.name
        try:
            send()
        except ContractRevert as exc:
            name = exc.error_name
            assert name not in NEVER_OK, f"{label}: {exc}"
            assert expected is not None, f"{label}: unexpected revert: {exc}"
            assert name == expected, (
                f"{label}: reverted with {name}, model expected {expected}: {exc}"
            )
            STATS[f"revert {label}: {name}"] += 1
            event(f"revert {label}: {name}")
            return False, None
        assert expected is None, f"{label}: succeeded, model expected {expected}"
        self.block += 1
        STATS[f"ok {label}"] += 1
        event(f"ok {label}")
        return True, predicted

    # ================================================================== model effects

    def _credit(self, account: str, amount: int) -> None:
        self.accts[account].withdrawable += amount

    def _move_tokens(self, source: str, dest: str, amount: int) -> None:
        self.tokens[source] -= amount
        self.tokens[dest] += amount

    def _unlock(self, worker: str, amount: int) -> None:
        s = self.stake[worker]
        assert s.locked >= amount, f"model: unlock {amount} of {worker} with {s.locked} locked"
        s.locked -= amount
        s.free += amount

    def _pay(self, job_id: int, j: JobRecord, *, refund_audit_fee: bool) -> None:
        pay, fee = split_reward(j.reward, FEE_BPS)
        worker = self.accts[j.worker]
        worker.withdrawable += pay
        worker.earned += pay
        worker.completed += 1
        self._credit(self.fee_recipient, fee)
        if refund_audit_fee:
            self._credit(j.client, j.audit_fee)
        self._unlock(j.worker, j.collateral)
        self.jobs[job_id] = replace(j, state=JobState.FINALIZED)

    def _slash(self, job_id: int, j: JobRecord, appeal_verifier: str | None = None) -> None:
        """The failure stands: client compensated, the failing verifier earns its held fee and
        gets its bond back, an upholding appeal verifier is paid up to the audit fee from the
        collateral, the rest goes to the protocol."""
        compensation, remainder = slash_split(j.collateral, j.audit_fee)
        overturned_pass = j.state == JobState.DISPUTED
        appeal_fee = min(remainder, j.audit_fee) if appeal_verifier and not overturned_pass else 0
        remainder -= appeal_fee
        self.accts[j.worker].slashed += 1
        self._credit(j.client, j.reward + compensation)
        self._credit(self.fee_recipient, remainder)
        if overturned_pass:
            # a wrong pass: its fee to the appeal verifier, its bond and the dispute bond to
            # the client
            assert appeal_verifier is not None
            self._credit(appeal_verifier, j.audit_fee)
            self._credit(j.client, j.audit_fee + j.verifier_bond)
            self._slash_verifier(j)
        else:
            self._credit(j.auditor, j.audit_fee)
            if appeal_verifier:
                self._credit(appeal_verifier, appeal_fee)
            self._unlock(j.auditor, j.reward)
        s = self.stake[j.worker]
        s.locked -= j.collateral
        s.slashed += j.collateral
        self._move_tokens(self.stakes_addr, self.market_addr, j.collateral)
        self.jobs[job_id] = replace(j, state=JobState.SLASHED)

    def _slash_verifier(self, j: JobRecord) -> None:
        bond = self.stake[j.auditor]
        bond.locked -= j.verifier_bond
        bond.slashed += j.verifier_bond
        self._move_tokens(self.stakes_addr, self.market_addr, j.verifier_bond)
        STATS["verifier slashed"] += 1

    def _pass_stands(self, job_id: int, j: JobRecord, dispute_winner: str | None) -> None:
        """A pass stands: worker paid, the passing verifier its fee and bond back; a dispute
        bond to the appeal verifier who upheld it."""
        self.accts[j.worker].audits_passed += 1
        self._pay(job_id, j, refund_audit_fee=False)
        self._credit(j.auditor, j.audit_fee)
        self._unlock(j.auditor, j.verifier_bond)
        if j.state == JobState.DISPUTED:
            assert dispute_winner is not None  # an unjudged dispute is void, not a pass
            self._credit(dispute_winner, j.audit_fee)

    def _void_unjudged(self, job_id: int, j: JobRecord) -> None:
        """An appeal or a dispute no appeal verdict judged in time: void (Refunded). The client
        gets its reward back (a dispute's bond goes to the protocol), the first verifier earns
        its fee and gets its bond back, the worker its collateral. (The silent verifiers' burned
        deposits are the registry's, outside this model's holders.)"""
        self._credit(j.auditor, j.audit_fee)
        if j.state == JobState.DISPUTED:
            self._credit(self.fee_recipient, j.audit_fee)
        self._unlock(j.auditor, j.verifier_bond)
        self._credit(j.client, j.reward)
        self._unlock(j.worker, j.collateral)
        self.jobs[job_id] = replace(j, state=JobState.REFUNDED)
        STATS[f"{j.state.name.lower()} unjudged: void"] += 1

    def _void(self, job_id: int, j: JobRecord) -> None:
        """Drawn for audit, no verdict in time (or a void proposed and not confirmed): escrow
        back to the client, collateral back to the worker, a proposer's bond back, nobody
        paid."""
        self._credit(j.client, j.reward + j.audit_fee)
        self._unlock(j.worker, j.collateral)
        if j.state == JobState.VOID_PROPOSED:
            self._unlock(j.auditor, j.verifier_bond)
        self.jobs[job_id] = replace(j, state=JobState.REFUNDED)

    def _settle_outcome(self, job_id: int, j: JobRecord, pending_at: int, draw_at: int) -> str:
        """JobMarket._settle: 'pay', 'void', 'slash' or 'draw', or raises Revert with the strict
        error. ``pending_at``/``draw_at``: the block number seen by the draw-pending check
        and by the draw (gas estimation runs in the latest block, the transaction in the
        next one)."""
        s = j.state
        if s == JobState.COMMITTED:
            if self.now < j.committed_at + CHALLENGE:
                raise Revert("NotYetSettleable")
            if pending_at <= j.committed_block + 1:
                raise Revert("AuditDrawPending")
            return "draw" if self._drawn(job_id, j, draw_at) else "pay"
        if s == JobState.AUDITED:
            if self.now <= j.committed_at + CHALLENGE + AUDIT:
                raise Revert("NotYetSettleable")
            return "void"
        if s == JobState.VOID_PROPOSED:  # no second seat confirmed or replaced it in time
            if self.now <= j.resolved_at + AUDIT:
                raise Revert("NotYetSettleable")
            return "void"
        if s == JobState.AUDIT_FAILED:
            if self.now <= j.resolved_at + APPEAL:
                raise Revert("NotYetSettleable")
            return "slash"
        if s == JobState.AUDIT_PASSED:
            if self.now <= j.resolved_at + APPEAL:
                raise Revert("NotYetSettleable")
            return "stand"
        if s in (JobState.DISPUTED, JobState.APPEALED):
            if self.now <= j.resolved_at + APPEAL + AUDIT:
                raise Revert("NotYetSettleable")
            return "void_unjudged"
        raise Revert("InvalidJobState")

    def _apply_settle(self, job_id: int, j: JobRecord, outcome: str) -> None:
        if outcome == "draw":
            self.jobs[job_id] = replace(j, state=JobState.AUDITED)
        elif outcome == "pay":
            self._pay(job_id, j, refund_audit_fee=True)
        elif outcome == "void":
            self._void(job_id, j)
        elif outcome == "slash":
            self._slash(job_id, j)
        elif outcome == "stand":
            self._pass_stands(job_id, j, None)
        elif outcome == "void_unjudged":
            self._void_unjudged(job_id, j)

    def _not_paused(self) -> None:
        if self.paused:
            raise Revert("EnforcedPause")

    # ================================================================== actions
    # Each _do_* method predicts the outcome (Revert or a plan), sends the transaction, checks
    # that chain and model agree on success or revert, and applies the effects to the model.
    # Rules draw the arguments at random; `progress` draws arguments that move a job along.

    def _do_stake(self, actor: MeshActor, amount: int) -> bool:
        a = actor.address

        def predict() -> None:
            if amount == 0:
                raise Revert("ZeroAmount")
            if self.tokens[a] < amount:
                raise Revert("ERC20InsufficientBalance")

        ok, _ = self._send("stake", predict, lambda: actor.stake(amount, approve=False))
        if ok:
            self.stake[a].free += amount
            self._move_tokens(a, self.stakes_addr, amount)
        return ok

    def _do_unstake(self, actor: MeshActor, amount: int) -> bool:
        s = self.stake[actor.address]

        def predict() -> None:
            if amount == 0:
                raise Revert("ZeroAmount")
            if s.free < amount:
                raise Revert("InsufficientFreeStake")

        ok, _ = self._send("unstake", predict, lambda: actor.unstake(amount))
        if ok:
            s.free -= amount
            s.unbonding += amount
            s.release_at = self.now + UNBONDING
        return ok

    def _do_withdraw_unbonded(self, actor: MeshActor) -> bool:
        a = actor.address
        s = self.stake[a]

        def predict() -> None:
            if s.unbonding == 0:
                raise Revert("NothingToWithdraw")
            if self.now < s.release_at:
                raise Revert("StillUnbonding")

        ok, _ = self._send("withdrawUnbonded", predict, actor.withdraw_unbonded)
        if ok:
            self._move_tokens(self.stakes_addr, a, s.unbonding)
            s.unbonding = 0
            s.release_at = 0
        return ok

    def _do_post(self, client: MeshActor, params: Sequence[JobParams]) -> bool:
        def predict() -> None:
            self._not_paused()
            for p in params:
                if p.reward == 0:
                    raise Revert("ZeroReward")
                if p.deadline <= self.now:
                    raise Revert("DeadlineInPast")
                if p.audit_bps > BPS:
                    raise Revert("InvalidBps")
            if self.tokens[client.address] < sum(p.reward + p.audit_fee for p in params):
                raise Revert("ERC20InsufficientBalance")

        if len(params) == 1:
            label, send = "postJob", lambda: client.post_job(params[0], approve=False)
        else:
            label, send = "postJobs", lambda: client.post_jobs(params, approve=False)
        ok, _ = self._send(label, predict, send)
        if not ok:
            return False
        for p in params:
            job_id = self.next_job_id
            self.next_job_id += 1
            self.jobs[job_id] = JobRecord(
                client=client.address,
                worker=ZERO_ADDRESS,
                auditor=ZERO_ADDRESS,
                reward=p.reward,
                audit_fee=p.audit_fee,
                collateral=p.collateral,
                deadline=p.deadline,
                lease_expiry=0,
                committed_at=0,
                committed_block=0,
                resolved_at=0,
                audit_bps=max(p.audit_bps, MIN_AUDIT_BPS),
                state=JobState.POSTED,
                spec_hash=p.spec_hash,
                result_hash=ZERO_HASH,
            )
            self._move_tokens(client.address, self.market_addr, p.reward + p.audit_fee)
        return True

    def _do_reclaim(self, job_id: int, client: MeshActor) -> bool:
        j = self.jobs[job_id]

        def predict() -> None:
            self._open(job_id)
            if client.address != j.client:
                raise Revert("NotJobClient")
            if j.state not in (JobState.POSTED, JobState.ASSIGNED):
                raise Revert("InvalidJobState")
            if j.state == JobState.ASSIGNED and self.now <= j.deadline:
                raise Revert("DeadlineNotReached")  # a Posted job is cancelled at any time

        ok, _ = self._send("reclaim", predict, lambda: client.reclaim(job_id, j))
        if ok:
            self.jobs[job_id] = replace(j, state=JobState.REFUNDED)
            self._move_tokens(self.market_addr, j.client, j.reward + j.audit_fee)
            if j.state == JobState.ASSIGNED:
                self.accts[j.worker].missed += 1
                self._unlock(j.worker, j.collateral)
        return ok

    def _do_faucet(self, actor: MeshActor) -> bool:
        last = self.faucet_last[actor.address]

        def predict() -> None:
            if last != 0 and self.now < last + self.faucet_cooldown:
                raise Revert("FaucetCooldown")

        ok, _ = self._send("faucet", predict, actor.faucet)
        if ok:
            self.faucet_last[actor.address] = self.now
            self.tokens[actor.address] += self.faucet_amount
            self.supply += self.faucet_amount
        return ok

    def _do_assign(
        self,
        worker: MeshActor,
        ids: Sequence[int],
        *,
        commit: bool,
        hashes: Sequence[bytes] = (),
        variant: str = "ok",
        lease: int = 600,
        bps: int = 0,
    ) -> bool:
        """assign (or assignAndCommit) a ticket for ``ids`` signed for ``worker``. Variants:
        the ticket has expired, is sent by another worker, is signed by a non-assigner,
        carries an audit rate above 100%, or lists its first job twice."""
        label = "assignAndCommit" if commit else "assign"
        if variant == "duplicate":
            ids = [*ids, ids[0]]
            hashes = [*hashes, hashes[0]] if commit else hashes
        if variant == "expired":
            lease = 0
        if variant == "bad_bps":
            bps = BPS + 1
        signer = self.clients[0].account if variant == "bad_signer" else None
        sender = worker
        if variant == "wrong_sender":
            sender = next(w for w in self.workers if w is not worker)
        ticket, signature = self.world.ticket(
            worker, ids, audit_bps=bps, lease_s=lease, signer=signer
        )
        records = [self.jobs[i] for i in ids]
        me = sender.address

        def predict() -> tuple[int, list[tuple[str, int]]]:
            self._not_paused()
            if ticket.worker != me:
                raise Revert("TicketWorkerMismatch")
            if self.now >= ticket.lease_expiry:
                raise Revert("TicketExpired")
            if ticket.audit_bps > BPS:
                raise Revert("InvalidBps")
            if signer is not None:
                raise Revert("InvalidTicketSigner")
            to_lock, unlocks, current = 0, [], {}
            standing = self.accts[me]
            free_before = self.stake[me].free
            for i, (job_id, j) in enumerate(zip(ids, records, strict=True)):
                self._open(job_id)
                if current.get(job_id, j) != j:  # changed by an earlier entry of the ticket
                    raise Revert("JobRecordMismatch")
                if self.now > j.deadline:
                    raise Revert("JobDeadlinePassed")
                if j.state == JobState.POSTED:
                    to_lock += j.collateral
                elif j.state == JobState.ASSIGNED:
                    if j.worker != me:  # a takeover once the lease has expired
                        if self.now < j.lease_expiry:
                            raise Revert("JobLeased")
                        unlocks.append((j.worker, j.collateral))
                        to_lock += j.collateral
                else:
                    raise Revert("InvalidJobState")
                # the chain's deterrence rate for this worker's record and free stake (read
                # once per ticket, before its collateral is locked); the ticket only raises it
                rate = j.audit_bps
                if DETERRENCE:
                    rate = audit_bps(
                        reward=j.reward, collateral=j.collateral, free_stake=free_before,
                        completed=standing.completed, audits_passed=standing.audits_passed,
                        slashed=standing.slashed, min_bps=j.audit_bps,
                    )
                new = replace(
                    j,
                    worker=me,
                    lease_expiry=ticket.lease_expiry,
                    audit_bps=max(rate, ticket.audit_bps),
                    state=JobState.ASSIGNED,
                )
                if commit:
                    if hashes[i] == ZERO_HASH:
                        raise Revert("EmptyResult")
                    new = replace(
                        new,
                        result_hash=hashes[i],
                        committed_at=self.now,
                        committed_block=self.block + 1,  # the block that will mine it
                        state=JobState.COMMITTED,
                    )
                current[job_id] = new
            if to_lock > 0 and self.stake[me].free < to_lock:
                raise Revert("InsufficientFreeStake")
            return to_lock, unlocks, current

        if commit:
            send = lambda: sender.assign_and_commit(ticket, signature, list(hashes), records)
        else:
            send = lambda: sender.assign(ticket, signature, records)
        ok, plan = self._send(label, predict, send)
        if not ok:
            return False
        to_lock, unlocks, current = plan
        for old_worker, amount in unlocks:
            self.accts[old_worker].missed += 1
            self._unlock(old_worker, amount)
        s = self.stake[me]
        s.free -= to_lock
        s.locked += to_lock
        self.jobs.update(current)
        return True

    def _do_commit(self, worker: MeshActor, ids: Sequence[int], hashes: Sequence[bytes]) -> bool:
        records = [self.jobs[i] for i in ids]
        me = worker.address

        def predict() -> dict[int, JobRecord]:
            self._not_paused()
            current: dict[int, JobRecord] = {}
            for job_id, j, h in zip(ids, records, hashes, strict=True):
                self._open(job_id)
                if current.get(job_id, j) != j:  # committed by an earlier entry
                    raise Revert("JobRecordMismatch")
                if j.state != JobState.ASSIGNED:
                    raise Revert("InvalidJobState")
                if j.worker != me:
                    raise Revert("NotAssignedWorker")
                if self.now > j.deadline:
                    raise Revert("JobDeadlinePassed")
                if h == ZERO_HASH:
                    raise Revert("EmptyResult")
                current[job_id] = replace(
                    j,
                    result_hash=h,
                    committed_at=self.now,
                    committed_block=self.block + 1,
                    state=JobState.COMMITTED,
                )
            return current

        ok, current = self._send(
            "commitResults", predict, lambda: worker.commit_results(ids, hashes, records)
        )
        if ok:
            self.jobs.update(current)
        return ok

    def _do_appeal(self, job_id: int, actor: MeshActor) -> bool:
        """appeal: the worker appeals a failure; the client disputes a pass (with a bond of
        the audit fee)."""
        j = self.jobs[job_id]
        dispute = j.state == JobState.AUDIT_PASSED

        def predict() -> None:  # works while paused: a pause must not take the appeal
            self._open(job_id)
            if dispute:
                if actor.address != j.client:
                    raise Revert("NotJobClient")
            else:
                if actor.address != j.worker:
                    raise Revert("NotAssignedWorker")
                if j.state != JobState.AUDIT_FAILED:
                    raise Revert("InvalidJobState")
            if self.now > j.resolved_at + APPEAL:
                raise Revert("WindowClosed")
            if dispute and self.tokens[actor.address] < j.audit_fee:
                raise Revert("ERC20InsufficientBalance")

        ok, _ = self._send("appeal", predict, lambda: actor.appeal(job_id, j))
        if ok:
            self.stage_blocks[job_id] = self.block  # the appeal's block seeds its draw
            if dispute:
                self._move_tokens(actor.address, self.market_addr, j.audit_fee)
                STATS["pass disputed"] += 1
            state = JobState.DISPUTED if dispute else JobState.APPEALED
            self.jobs[job_id] = replace(j, state=state)
        return ok

    def _predict_verdict(self, job_id: int, j: JobRecord, verifier: MeshActor) -> None:
        """JobMarket._openAudit: the checks every verdict on a drawn job passes first."""
        self._open(job_id)
        if verifier.address in (j.worker, j.client):
            raise Revert("VerifierConflict")
        if j.state == JobState.COMMITTED:
            # gas estimation runs in the latest block (the transaction in the next)
            if self.block <= j.committed_block + 1:
                raise Revert("AuditDrawPending")
            if not self._drawn(job_id, j, self.block):
                raise Revert("NotDrawnForAudit")
        elif j.state not in (JobState.AUDITED, JobState.VOID_PROPOSED):
            raise Revert("InvalidJobState")
        closes = (j.resolved_at + AUDIT if j.state == JobState.VOID_PROPOSED
                  else j.committed_at + CHALLENGE + AUDIT)
        if self.now > closes:
            raise Revert("WindowClosed")
        confirm = j.state == JobState.VOID_PROPOSED
        if confirm and self._draw_pending(job_id, j, later=True):
            raise Revert("AuditDrawPending")  # the proposal's block seeds the confirmation
        if verifier.address != self._assignee(job_id, j, appealed=False):
            raise Revert("NotAssignedVerifier")

    def _do_resolve_audit(self, job_id: int, verifier: MeshActor, passed: bool) -> bool:
        j = self.jobs[job_id]
        evidence = keccak(text=f"evidence-{job_id}")

        def bond_for(passed: bool) -> int:
            return verifier_bond(j.reward, JobState.AUDIT_PASSED if passed
                                 else JobState.AUDIT_FAILED)

        def predict() -> None:
            self._predict_verdict(job_id, j, verifier)
            if bond_for(passed) > self.stake[verifier.address].free:
                raise Revert("InsufficientFreeStake")  # no bond behind the verdict

        ok, _ = self._send(
            "resolveAudit", predict, lambda: verifier.resolve_audit(job_id, passed, evidence, j)
        )
        if not ok:
            return False
        STATS[f"audit {'passed' if passed else 'failed'}"] += 1
        if j.state == JobState.VOID_PROPOSED:  # the replaced proposal's bond: to the protocol
            STATS["void replaced"] += 1
            self._slash_verifier(j)
            self._credit(self.fee_recipient, j.verifier_bond)
        # either verdict: the fee stays in escrow; the verifier's bond is locked
        bond = self.stake[verifier.address]
        bond.free -= bond_for(passed)
        bond.locked += bond_for(passed)
        state = JobState.AUDIT_PASSED if passed else JobState.AUDIT_FAILED
        self.jobs[job_id] = replace(j, auditor=verifier.address, resolved_at=self.now,
                                    state=state)
        return True

    def _do_void_audit(self, job_id: int, verifier: MeshActor) -> bool:
        """voidAudit: a drawn job that cannot be judged. The first seat only proposes it
        (VoidProposed); a second seat's void confirms it: the proposer earns the audit fee, the
        client gets its reward back, the worker its collateral; nobody is paid the reward."""
        j = self.jobs[job_id]
        evidence = keccak(text=f"void-{job_id}")

        proposal = j.reward + j.audit_fee  # the proposer's bond

        def predict() -> None:
            self._predict_verdict(job_id, j, verifier)
            if j.state != JobState.VOID_PROPOSED and proposal > self.stake[verifier.address].free:
                raise Revert("InsufficientFreeStake")

        ok, _ = self._send("voidAudit", predict, lambda: verifier.void_audit(job_id, evidence, j))
        if not ok:
            return False
        if j.state != JobState.VOID_PROPOSED:
            STATS["void proposed"] += 1
            self.stage_blocks[job_id] = self.block
            bond = self.stake[verifier.address]
            bond.free -= proposal
            bond.locked += proposal
            self.jobs[job_id] = replace(j, auditor=verifier.address, resolved_at=self.now,
                                        state=JobState.VOID_PROPOSED)
            return True
        STATS["void confirmed"] += 1
        self._unlock(j.auditor, proposal)
        self._credit(j.auditor, j.audit_fee)
        self._credit(j.client, j.reward)
        self._unlock(j.worker, j.collateral)
        self.jobs[job_id] = replace(j, state=JobState.REFUNDED)
        return True

    def _do_resolve_appeal(self, job_id: int, verifier: MeshActor, worker_wins: bool) -> bool:
        j = self.jobs[job_id]
        evidence = keccak(text=f"appeal-{job_id}")

        def predict() -> None:
            self._open(job_id)
            if j.state not in (JobState.APPEALED, JobState.DISPUTED):
                raise Revert("InvalidJobState")
            if verifier.address in (j.auditor, j.worker, j.client):
                raise Revert("VerifierConflict")
            if self.now > j.resolved_at + APPEAL + AUDIT:
                raise Revert("WindowClosed")
            if self._draw_pending(job_id, j, later=True):
                raise Revert("AuditDrawPending")  # the appeal's block seeds its draw
            if verifier.address != self._assignee(job_id, j, appealed=True):
                raise Revert("NotAssignedVerifier")

        ok, _ = self._send(
            "resolveAppeal",
            predict,
            lambda: verifier.resolve_appeal(job_id, worker_wins, evidence, j),
        )
        if not ok:
            return False
        if worker_wins and j.state == JobState.DISPUTED:  # the pass upheld
            self._pass_stands(job_id, j, verifier.address)
        elif worker_wins:  # a failure overturned: fee to the appeal verifier, bond to the worker
            self.accts[j.worker].audits_passed += 1
            self._pay(job_id, j, refund_audit_fee=False)
            self._credit(verifier.address, j.audit_fee)
            self._credit(j.worker, j.reward)
            self._slash_verifier(j)
        else:
            self._slash(job_id, j, verifier.address)
        return True

    def _do_finalize(self, job_id: int, caller: MeshActor, record: JobRecord | None = None) -> bool:
        """finalize ``job_id``, with its current record unless ``record`` (forged, stale or
        for an unknown id) is given."""
        j = record or self.jobs[job_id]

        def predict() -> str:
            if job_id not in self.jobs:
                raise Revert("UnknownJob")
            self._open(job_id)
            if j != self.jobs[job_id]:
                raise Revert("JobRecordMismatch")
            return self._settle_outcome(job_id, j, self.block, self.block + 1)

        ok, outcome = self._send("finalize", predict, lambda: caller.finalize(job_id, j))
        if ok:
            self._apply_settle(job_id, j, outcome)
        return ok

    def _do_finalize_batch(
        self, ids: Sequence[int], caller: MeshActor, records: Sequence[JobRecord] | None = None
    ) -> bool:
        records = list(records) if records is not None else [self.jobs[i] for i in ids]

        def predict() -> list[tuple[int, JobRecord, str]]:
            # Non-strict settlement in the mined block; a record made stale by an earlier
            # entry of the same batch is skipped, like an unsettleable job.
            current = dict(self.jobs)
            plan = []
            for job_id, j in zip(ids, records, strict=True):
                if current.get(job_id) != j or j.state.terminal:  # unknown id, forged or
                    continue  # stale record, or an ended job (its digest is cleared)
                try:
                    outcome = self._settle_outcome(job_id, j, self.block + 1, self.block + 1)
                except Revert:
                    continue
                plan.append((job_id, j, outcome))
                after = {"draw": JobState.AUDITED, "pay": JobState.FINALIZED,
                         "stand": JobState.FINALIZED, "void": JobState.REFUNDED,
                         "void_unjudged": JobState.REFUNDED}
                current[job_id] = replace(j, state=after.get(outcome, JobState.SLASHED))
            return plan

        # Explicit gas: estimation runs in the latest block, where a job whose audit draw
        # becomes available in the next block is still skipped (and costs less gas).
        call = caller.market.functions.finalizeBatch(list(ids), [r.as_tuple() for r in records])
        ok, plan = self._send(
            "finalizeBatch", predict, lambda: caller.sender.send(call, tx_params={"gas": BATCH_GAS})
        )
        if ok:
            STATS["finalizeBatch entries"] += len(ids)
            STATS["finalizeBatch settled or drawn"] += len(plan)
            for job_id, j, outcome in plan:
                self._apply_settle(job_id, j, outcome)
        return ok

    def _do_withdraw(self, actor: MeshActor) -> bool:
        acct = self.accts[actor.address]
        amount = acct.withdrawable

        def predict() -> None:
            if amount == 0:
                raise Revert("NothingToWithdraw")

        ok, _ = self._send("withdraw", predict, actor.withdraw)
        if ok:
            acct.withdrawable = 0
            acct.withdrawn += amount
            self._move_tokens(self.market_addr, actor.address, amount)
        return ok

    def _do_toggle_pause(self) -> bool:
        admin = self.world.admin
        ok, _ = self._send(
            "unpause" if self.paused else "pause",
            lambda: None,
            admin.unpause if self.paused else admin.pause,
        )
        if ok:
            self.paused = not self.paused
        return ok

    def _do_advance(self, seconds: int, blocks: int) -> None:
        if seconds:
            self._rpc("evm_setNextBlockTimestamp", [self.now + seconds])
        self._rpc("anvil_mine", [blocks])
        self.now += seconds
        self.block += blocks
        STATS["advance"] += 1

    # ================================================================== argument helpers

    def _choose(self, data: st.DataObject, states: Iterable[JobState]) -> int:
        """A job id, usually one in ``states`` (when there is one), sometimes any job."""
        states = tuple(states)
        ids = sorted(self.jobs)
        good = [i for i in ids if self.jobs[i].state in states]
        if good and data.draw(st.integers(0, 9), label="targeted") < 8:
            return data.draw(st.sampled_from(good), label="job")
        return data.draw(st.sampled_from(ids), label="job")

    def _choose_many(self, data: st.DataObject, states: Iterable[JobState], most: int) -> list[int]:
        states = tuple(states)
        ids = sorted(self.jobs)
        good = [i for i in ids if self.jobs[i].state in states]
        pool = good if good and data.draw(st.integers(0, 9), label="targeted") < 8 else ids
        return data.draw(
            st.lists(st.sampled_from(pool), min_size=1, max_size=min(most, len(pool)), unique=True),
            label="jobs",
        )

    def _holder_or_other(self, data: st.DataObject, address: str) -> MeshActor:
        """Usually the worker at ``address``, sometimes any worker."""
        holders = [w for w in self.workers if w.address == address]
        if holders and data.draw(st.integers(0, 9), label="holder") < 9:
            return holders[0]
        return data.draw(st.sampled_from(self.workers), label="worker")

    def _draw_params(self, data: st.DataObject) -> JobParams:
        self.spec_counter += 1
        params = JobParams(
            spec_hash=keccak(text=f"spec-{self.spec_counter}"),
            reward=data.draw(REWARDS, label="reward"),
            audit_fee=data.draw(AUDIT_FEES, label="auditFee"),
            collateral=data.draw(COLLATERALS, label="collateral"),
            deadline=self.now + data.draw(DEADLINE_IN, label="deadline in"),
            audit_bps=data.draw(JOB_AUDIT_BPS, label="auditBps"),
        )
        flaw = data.draw(JOB_FLAWS, label="flaw")
        if flaw == "zero reward":
            params = replace(params, reward=0)
        elif flaw == "deadline now":
            params = replace(params, deadline=self.now)
        elif flaw == "bps":
            params = replace(params, audit_bps=BPS + 1)
        elif flaw == "expensive":
            params = replace(params, reward=3 * FUNDS)
        return params

    def _flip(self, data: st.DataObject, job_id: int, label: str) -> bool:
        """A drawn boolean, flipped for odd job ids: hypothesis often repeats a draw across
        steps, and the driver should still see both verdicts within one example."""
        return data.draw(st.booleans(), label=label) != bool(job_id % 2)

    def _ticket_args(self, data: st.DataObject) -> dict[str, Any]:
        return {
            "variant": data.draw(TICKET_VARIANTS, label="ticket"),
            "lease": data.draw(LEASES, label="lease"),
            "bps": data.draw(TICKET_AUDIT_BPS, label="ticket bps"),
        }

    # ================================================================== rules

    @initialize(data=st.data())
    def post_first_jobs(self, data: st.DataObject) -> None:
        """Start every example with a few jobs on the market."""
        self.post_batch(data)

    @rule(data=st.data())
    def stake_credits(self, data: st.DataObject) -> None:
        actor = data.draw(st.sampled_from(self.stakers), label="staker")
        amount = data.draw(st.sampled_from([1_000 * TOKEN, 1, 5_000 * TOKEN, 0, 3 * FUNDS]))
        self._do_stake(actor, amount)

    @rule(data=st.data())
    def unstake(self, data: st.DataObject) -> None:
        actor = data.draw(st.sampled_from(self.stakers), label="staker")
        free = self.stake[actor.address].free
        amount = data.draw(st.sampled_from([free // 2, free, 1, 1_000 * TOKEN, 0, free + 1]))
        self._do_unstake(actor, amount)

    @rule(data=st.data())
    def withdraw_unbonded(self, data: st.DataObject) -> None:
        """withdrawUnbonded, usually by a staker with stake unbonding, often after moving the
        clock to its release (and, when nobody is unbonding, sometimes after unstaking)."""
        unbonding = [a for a in self.stakers if self.stake[a.address].unbonding]
        if unbonding and data.draw(st.integers(0, 3), label="unbonding staker") < 3:
            actor = data.draw(st.sampled_from(unbonding), label="staker")
        else:
            actor = data.draw(st.sampled_from(self.stakers), label="staker")
            s = self.stake[actor.address]
            if not s.unbonding and s.free and data.draw(st.booleans(), label="unstake first"):
                self._do_unstake(actor, data.draw(st.sampled_from([s.free // 2, s.free])))
                self.chain_matches_model_and_invariants()
        release = self.stake[actor.address].release_at
        if self.now < release and data.draw(st.integers(0, 3), label="wait") < 3:
            self._do_advance(release - self.now + data.draw(st.sampled_from([0, 1])), 1)
            self.chain_matches_model_and_invariants()
        self._do_withdraw_unbonded(actor)

    @rule(data=st.data())
    def post_job(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients), label="client")
        self._do_post(client, [self._draw_params(data)])

    @rule(data=st.data())
    def post_batch(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients), label="client")
        n = data.draw(st.integers(2, 5), label="batch size")
        self._do_post(client, [self._draw_params(data) for _ in range(n)])

    @rule(data=st.data())
    def assign_beyond_free_stake(self, data: st.DataObject) -> None:
        """A job whose collateral is one wei more than the worker's free stake: its ticket is
        refused (InsufficientFreeStake) and nothing is locked. A rule of its own, so every run
        takes this path whatever the chain's audit draws did to the workers' stakes."""
        worker = data.draw(st.sampled_from(self.workers), label="worker")
        client = data.draw(st.sampled_from(self.clients), label="client")
        params = JobParams(spec_hash=keccak(text=f"beyond-{self.next_job_id}"), reward=TOKEN,
                           audit_fee=0, collateral=self.stake[worker.address].free + 1,
                           deadline=self.now + 3600, audit_bps=0)
        if self._do_post(client, [params]):
            job_id = self.next_job_id - 1
            self._do_assign(worker, [job_id], commit=data.draw(st.booleans(), label="commit"),
                            hashes=[b"\x42" * 32])

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(self.workers), label="worker")
        ids = self._choose_many(data, (JobState.POSTED, JobState.ASSIGNED), 3)
        self._do_assign(worker, ids, commit=False, **self._ticket_args(data))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def assign_and_commit(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(self.workers), label="worker")
        ids = self._choose_many(data, (JobState.POSTED, JobState.ASSIGNED), 3)
        hashes = [data.draw(RESULTS, label="result") for _ in ids]
        self._do_assign(worker, ids, commit=True, hashes=hashes, **self._ticket_args(data))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        ids = self._choose_many(data, (JobState.ASSIGNED,), 3)
        if data.draw(st.integers(0, 9), label="duplicate") == 9:
            ids = [*ids, ids[0]]
        worker = self._holder_or_other(data, self.jobs[ids[0]].worker)
        hashes = [data.draw(RESULTS, label="result") for _ in ids]
        self._do_commit(worker, ids, hashes)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def appeal(self, data: st.DataObject) -> None:
        job_id = self._choose(data, (JobState.AUDIT_FAILED, JobState.AUDIT_PASSED))
        j = self.jobs[job_id]
        if j.state == JobState.AUDIT_PASSED and data.draw(st.integers(0, 9), label="client") < 8:
            actor = next(c for c in self.clients if c.address == j.client)
        else:
            actor = self._holder_or_other(data, j.worker)
        self._do_appeal(job_id, actor)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def resolve_audit(self, data: st.DataObject) -> None:
        job_id = self._choose(data, (JobState.COMMITTED, JobState.AUDITED, JobState.VOID_PROPOSED))
        verifier = self._verifier_or_other(data, job_id, appealed=False)
        self._do_resolve_audit(job_id, verifier, data.draw(st.booleans(), label="passed"))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def void_audit(self, data: st.DataObject) -> None:
        job_id = self._choose(data, (JobState.COMMITTED, JobState.AUDITED, JobState.VOID_PROPOSED))
        verifier = self._verifier_or_other(data, job_id, appealed=False)
        self._do_void_audit(job_id, verifier)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def resolve_appeal(self, data: st.DataObject) -> None:
        job_id = self._choose(data, (JobState.APPEALED, JobState.DISPUTED))
        verifier = self._verifier_or_other(data, job_id, appealed=True)
        self._do_resolve_appeal(job_id, verifier, data.draw(st.booleans(), label="worker wins"))

    def _verifier_or_other(self, data: st.DataObject, job_id: int, *, appealed: bool) -> MeshActor:
        """Mostly the verifier the draw assigns (when the job's state has one), else any."""
        j = self.jobs[job_id]
        assigned = self._assigned_actor(job_id, j, appealed)
        if assigned is not None and data.draw(st.integers(0, 3), label="assigned") < 3:
            return assigned
        return data.draw(st.sampled_from(self.verifier_pool), label="verifier")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def reclaim(self, data: st.DataObject) -> None:
        job_id = self._choose(data, (JobState.POSTED, JobState.ASSIGNED))
        owner = next(c for c in self.clients if c.address == self.jobs[job_id].client)
        other = self.clients[1] if owner is self.clients[0] else self.clients[0]
        client = owner if data.draw(st.integers(0, 9), label="owner") < 9 else other
        self._do_reclaim(job_id, client)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        job_id = self._choose(data, ACTIVE[2:])
        caller = data.draw(st.sampled_from(self.world.actors), label="caller")
        job_id, record = self._maybe_forged(data, job_id)
        self._do_finalize(job_id, caller, record)

    def _maybe_forged(self, data: st.DataObject, job_id: int) -> tuple[int, JobRecord]:
        """Usually ``job_id`` and its record; sometimes a record with one field changed, or
        the record under an id that does not exist (yet)."""
        j = self.jobs[job_id]
        kind = data.draw(st.integers(0, 19), label="forged")
        if kind == 18:
            return job_id, replace(j, reward=j.reward + 1)
        if kind == 19:
            return data.draw(st.sampled_from([0, self.next_job_id, 2**64])), j
        return job_id, j

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def finalize_batch(self, data: st.DataObject) -> None:
        # duplicates, settled and unsettleable jobs included on purpose
        ids = sorted(self.jobs)
        open_ = [i for i in ids if self.jobs[i].state in ACTIVE[2:]]
        pool = open_ if open_ and data.draw(st.integers(0, 9), label="targeted") < 7 else ids
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=0, max_size=6), label="batch")
        entries = [self._maybe_forged(data, i) for i in ids]
        caller = data.draw(st.sampled_from(self.world.actors), label="caller")
        self._do_finalize_batch([i for i, _ in entries], caller, [r for _, r in entries])

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        owed = [a for a in self.world.actors if self.accts[a.address].withdrawable]
        if owed and data.draw(st.integers(0, 3), label="owed") < 3:
            actor = data.draw(st.sampled_from(owed), label="account")
        else:
            actor = data.draw(st.sampled_from(self.world.actors), label="account")
        self._do_withdraw(actor)

    @rule(data=st.data())
    def faucet_or_pause(self, data: st.DataObject) -> None:
        """Rarer actions, one rule between them: a faucet drip (the only mint), or the admin
        pausing or unpausing the market."""
        if data.draw(st.integers(0, 2), label="pause") < 2:
            self._do_faucet(data.draw(st.sampled_from(self.world.actors), label="actor"))
        else:
            self._do_toggle_pause()

    @rule(seconds=ADVANCE_SECONDS, blocks=ADVANCE_BLOCKS)
    def advance(self, seconds: int, blocks: int) -> None:
        self._do_advance(seconds, blocks)

    @rule(data=st.data())
    def advance_to_boundary(self, data: st.DataObject) -> None:
        """Move the clock to one second before, at or after a time some check compares with
        (deadline, lease, challenge/audit/appeal window, unbonding release, faucet cooldown),
        so that off-by-one disagreements between checks would show."""
        times = {s.release_at for s in self.stake.values() if s.release_at}
        times |= {t + self.faucet_cooldown for t in self.faucet_last.values() if t}
        for j in self.jobs.values():
            if j.state.terminal:
                continue
            times |= {j.deadline, j.lease_expiry}
            if j.committed_at:
                times |= {j.committed_at + CHALLENGE, j.committed_at + CHALLENGE + AUDIT}
            if j.resolved_at:
                times |= {j.resolved_at + APPEAL, j.resolved_at + APPEAL + AUDIT}
        targets = sorted({t + d for t in times for d in (-1, 0, 1) if t + d > self.now})
        if not targets:
            self._do_advance(1, 1)
            return
        target = data.draw(st.sampled_from(targets), label="boundary")
        self._do_advance(target - self.now, data.draw(st.sampled_from([1, 2]), label="blocks"))
        STATS["advance to a boundary"] += 1

    @precondition(_has_open_job)
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        """Drive one open job through a few steps of its life with arguments that usually
        work, so that examples reach payment, slashing and refunds, not only the first
        states. The invariants are checked after each of these transactions too."""
        rounds = data.draw(st.sampled_from([10, 1, 4]), label="rounds")
        job_id = None
        for round_ in range(rounds):
            if job_id is None or self.jobs[job_id].state.terminal:
                # Usually the most advanced open job (the one a few steps settle), else any.
                open_jobs = sorted(
                    (i for i, j in self.jobs.items() if not j.state.terminal),
                    key=lambda i: (-self.jobs[i].state, i),
                )
                if not open_jobs:
                    return
                if data.draw(st.integers(0, 3), label="most advanced") < 3:
                    job_id = open_jobs[0]
                else:
                    job_id = data.draw(st.sampled_from(open_jobs), label="open job")
            if round_:
                self.chain_matches_model_and_invariants()
            self._progress_once(data, job_id)

    def _progress_once(self, data: st.DataObject, job_id: int) -> None:
        """One step along the life of ``job_id``."""
        j = self.jobs[job_id]
        s = j.state
        # (none when the worker is one verifier and the auditor the other)
        appeal_verifier = (self._assigned_actor(job_id, j, appealed=True)
                           if s in (JobState.APPEALED, JobState.DISPUTED) else None)
        auditor = (self._assigned_actor(job_id, j, appealed=False)
                   if s in (JobState.COMMITTED, JobState.AUDITED, JobState.VOID_PROPOSED)
                   else None)
        owed = [a for a in self.world.actors if self.accts[a.address].withdrawable]
        STATS[f"progress on {s.name}"] += 1
        if owed and data.draw(st.integers(0, 4), label="withdraw instead") == 4:
            self._do_withdraw(data.draw(st.sampled_from(owed), label="account"))
        elif self.paused:
            self._do_toggle_pause()
        elif s in (JobState.POSTED, JobState.ASSIGNED) and self.now > j.deadline:
            self._do_reclaim(job_id, next(c for c in self.clients if c.address == j.client))
        elif (
            s == JobState.ASSIGNED
            and self.now >= j.lease_expiry
            and data.draw(st.booleans(), label="take over")
            or s == JobState.POSTED
        ):
            able = [w for w in self.workers if self.stake[w.address].free >= j.collateral]
            worker = data.draw(st.sampled_from(able or self.workers), label="worker")
            bps = data.draw(TICKET_AUDIT_BPS, label="ticket bps")
            if not able:  # nobody can back this job yet: stake what it takes
                self._do_stake(worker, j.collateral - self.stake[worker.address].free)
            elif data.draw(st.booleans(), label="commit at once"):
                self._do_assign(worker, [job_id], commit=True, hashes=[b"\x42" * 32], bps=bps)
            else:
                self._do_assign(worker, [job_id], commit=False, bps=bps)
        elif s == JobState.ASSIGNED:
            holder = next(w for w in self.workers if w.address == j.worker)
            self._do_commit(holder, [job_id], [b"\x42" * 32])
        elif s == JobState.COMMITTED and self.block <= j.committed_block + 1:
            self._do_advance(0, 2)
        elif (
            s in (JobState.COMMITTED, JobState.AUDITED)
            and (s == JobState.AUDITED or self._drawn(job_id, j, self.block))
            and self.now <= j.committed_at + CHALLENGE + AUDIT
            and auditor is not None
            and data.draw(st.integers(0, 3), label="verdict") < 3
        ):
            if data.draw(st.integers(0, 5), label="propose void") == 0:
                self._do_void_audit(job_id, auditor)
            else:
                self._do_resolve_audit(job_id, auditor, self._flip(data, job_id, "passed"))
        elif (
            s == JobState.VOID_PROPOSED
            and self.now <= j.resolved_at + AUDIT
            and auditor is not None
            and data.draw(st.integers(0, 3), label="second seat") < 3
        ):
            # the second seat confirms the void or replaces it with its own verdict
            if self._flip(data, job_id, "confirm void"):
                self._do_void_audit(job_id, auditor)
            else:
                self._do_resolve_audit(job_id, auditor, self._flip(data, job_id, "passed"))
        elif (
            s == JobState.AUDIT_FAILED
            and self.now <= j.resolved_at + APPEAL
            and self._flip(data, job_id, "appeal")
        ):
            self._do_appeal(job_id, next(w for w in self.workers if w.address == j.worker))
        elif (
            s == JobState.AUDIT_PASSED
            and self.now <= j.resolved_at + APPEAL
            and data.draw(st.integers(0, 3), label="dispute") == 0
        ):
            self._do_appeal(job_id, next(c for c in self.clients if c.address == j.client))
        elif (
            s in (JobState.APPEALED, JobState.DISPUTED, JobState.VOID_PROPOSED)
            and self._draw_pending(job_id, j, later=True)
        ):
            self._do_advance(0, 2)  # mine the block that seeds the verdict's draw
        elif (
            s in (JobState.APPEALED, JobState.DISPUTED)
            and appeal_verifier
            and self.now <= (j.resolved_at + APPEAL + AUDIT)
            and data.draw(st.integers(0, 3), label="appeal verdict") < 3
        ):
            wins = self._flip(data, job_id, "wins")
            self._do_resolve_appeal(job_id, appeal_verifier, wins)
        else:
            try:
                self._settle_outcome(job_id, j, self.block, self.block + 1)
            except Revert as wait:
                if wait.name in ("NotYetSettleable", "AuditDrawPending"):
                    self._do_advance(data.draw(st.sampled_from([301, 61, 700])), 2)
                    return
            caller = data.draw(st.sampled_from(self.world.actors), label="caller")
            if not data.draw(st.booleans(), label="alone"):
                # with other jobs (open or not) and possibly itself twice
                others = data.draw(
                    st.lists(st.sampled_from(sorted(self.jobs)), max_size=4), label="others"
                )
                batch = data.draw(st.permutations([job_id, *others]), label="order")
                self._do_finalize_batch(batch, caller)
            else:
                self._do_finalize(job_id, caller)

    # More registrations weight the lifecycle driver among the other rules.
    progress_2 = _more("progress_2")
    progress_3 = _more("progress_3")
    progress_4 = _more("progress_4")
    progress_5 = _more("progress_5")

    # ================================================================== invariants

    @invariant()
    def invariants(self) -> None:
        STATS["rule steps"] += 1
        self.chain_matches_model_and_invariants()

    def chain_matches_model_and_invariants(self) -> None:
        """Compare chain and model, and check the invariants, after every transaction."""
        STATS["invariant checks"] += 1
        # The events of this step, then one batch read of the state after it.
        latest = self.w3.eth.block_number
        events: list[ChainEvent] = (
            self.reader.events(self.seen_block + 1, latest) if latest > self.seen_block else []
        )
        prev_records = dict(self.records)
        for e in events:
            if e.name in JOB_EVENTS:
                job_id = int(e.args["jobId"])
                self.records[job_id] = apply_event(self.records.get(job_id), e.name, e.args)
        view = self._read(self.records)
        assert view.block == latest
        scanned_from = self.seen_block
        self.seen_block = view.block
        prev = self.prev_view
        self.prev_view = view

        # --- the chain is where the model says it is
        assert (view.block, view.now) == (self.block, self.now), (
            f"chain at block {view.block} t={view.now}, model at {self.block} t={self.now}"
        )
        # the seats read in this step (or valid up to its start) hold in its last block too
        # unless a later block of the step carries an event of the registry
        if self.seat_cache is not None:
            read_in = self.seat_cache[0]
            assert scanned_from <= read_in <= view.block, (read_in, scanned_from, view.block)
            if any(e.address.lower() == self.registry_addr and e.block_number > read_in
                   for e in events):
                self.seat_cache = None
            else:
                self.seat_cache = (view.block, self.seat_cache[1])
        assert view.paused == self.paused
        assert view.next_job_id == self.next_job_id
        # every record rebuilt from events is the one the contract stores (an ended job's
        # digest is cleared)
        for job_id, record in self.records.items():
            assert self._digest(record) == view.digests[job_id], (
                f"job {job_id}: record from events does not match the stored digest"
            )
        for job_id in set(self.records) | set(self.jobs):
            assert self.records.get(job_id) == self.jobs.get(job_id), (
                f"job {job_id}: chain {self.records.get(job_id)}\n model {self.jobs.get(job_id)}"
            )
        assert view.tokens == self.tokens, _diff("token balances", view.tokens, self.tokens)
        assert view.accounts == self.accts, _diff("accounts", view.accounts, self.accts)
        assert view.stakes == self.stake, _diff("stakes", view.stakes, self.stake)
        assert view.supply == self.supply

        # --- solvency of both contracts, from chain values alone
        escrow = sum(r.escrow for r in self.records.values())
        owed = sum(a.withdrawable for a in view.accounts.values())
        assert view.tokens[self.market_addr] == escrow + owed, (
            f"JobMarket holds {view.tokens[self.market_addr]}, owes escrow {escrow} + "
            f"withdrawable {owed}"
        )
        staked = sum(s.total for s in view.stakes.values())
        assert view.tokens[self.stakes_addr] == staked, (
            f"StakeManager holds {view.tokens[self.stakes_addr]}, owes {staked}"
        )

        # --- locked stake is exactly the collateral of the jobs each worker holds
        held: Counter[str] = Counter()
        for r in self.records.values():
            for who, amount in r.locks().items():  # collateral, and failing verifiers' bonds
                held[who] += amount
        for account, s in view.stakes.items():
            assert s.locked == held[account], (
                f"{account}: {s.locked} locked, holds jobs with {held[account]} collateral"
            )
        assert set(held) <= set(view.stakes), f"jobs held by unknown workers: {set(held)}"

        # --- at most one terminal outcome per job
        slashed_in_tx = {
            (e.tx_hash, int(e.args["jobId"])) for e in events if e.name == "JobSlashed"
        }
        voided_in_tx = {
            (e.tx_hash, int(e.args["jobId"])) for e in events if e.name == "AuditVoided"
        }
        # a disputed pass that stands (JobPaid) or falls (JobSlashed) refunds the client's
        # dispute bond in the same transaction: not a terminal outcome of its own
        paid_in_tx = {(e.tx_hash, int(e.args["jobId"])) for e in events if e.name == "JobPaid"}
        fee_paid_in_tx = {
            (e.tx_hash, int(e.args["jobId"])) for e in events if e.name == "AuditFeePaid"
        }
        for e in events:
            key = (e.tx_hash, int(e.args.get("jobId", 0)))
            if e.name in ("JobPaid", "JobSlashed") or (
                e.name == "JobRefunded" and key not in slashed_in_tx and key not in paid_in_tx
            ):
                job_id = int(e.args["jobId"])
                self.terminal_events[job_id] += 1
                assert self.terminal_events[job_id] == 1, f"job {job_id} settled twice: {e}"
        for job_id, record in self.records.items():
            settled = self.terminal_events[job_id]
            assert settled == (1 if record.state.terminal else 0), (
                f"job {job_id} in {record.state.name} with {settled} terminal events"
            )

        # --- the ledger events carry the amounts of the payout rules
        refunds: Counter[tuple[str, int]] = Counter()
        for e in events:
            if e.name not in ("JobPaid", "JobSlashed", "JobRefunded", "AuditFeePaid"):
                continue
            j = self.records[int(e.args["jobId"])]
            if e.name == "JobPaid":
                assert (e.args["amount"], e.args["fee"]) == split_reward(j.reward, FEE_BPS), e
                assert e.args["worker"] == j.worker, e
            elif e.name == "JobSlashed":
                compensation, _ = slash_split(j.collateral, j.audit_fee)
                assert (e.args["slashed"], e.args["clientCompensation"]) == (
                    j.collateral,
                    compensation,
                ), e
            elif e.name == "JobRefunded":
                # a slash, a void verdict or an unjudged dispute refunds the reward (the audit
                # fee was earned)
                key = (e.tx_hash, int(e.args["jobId"]))
                refunds[key] += 1
                slashed = (key in slashed_in_tx or key in voided_in_tx
                           or key in fee_paid_in_tx)  # an unjudged dispute: its fee earned
                expected = j.reward if slashed else j.reward + j.audit_fee
                if key in paid_in_tx or (key in slashed_in_tx and refunds[key] > 1):
                    expected = j.audit_fee  # a dispute bond coming back
                    STATS["dispute bond refunded"] += 1
                assert (e.args["amount"], e.args["client"]) == (expected, j.client), e
            else:  # the audit fee, or an appeal verifier's share of a slash (at most the fee)
                assert 0 < e.args["amount"] <= j.audit_fee, e

        # --- now and then, the incremental rebuild against a full one from all events
        self.checks += 1
        if self.checks % 10 == 0:
            assert self.reader.job_records(verify=True) == self.records

        # --- states only move forward
        for job_id, record in self.records.items():
            old = prev_records[job_id].state if job_id in prev_records else JobState.NONE
            assert record.state in REACHABLE[old], (
                f"job {job_id} moved {old.name} -> {record.state.name}"
            )
            if record.state != old and record.state.terminal:
                STATS[f"terminal {record.state.name}"] += 1
                event(f"terminal {record.state.name}")

        # --- stake shrinks only by slash or unbonded withdrawal, and exactly by them
        for account, s in view.stakes.items():
            before = prev.stakes[account].total
            added = _total(events, "Staked", "staker", account, "amount")
            slashed = _total(events, "StakeSlashed", "staker", account, "amount")
            withdrawn = _total(events, "UnbondedWithdrawn", "staker", account, "amount")
            if s.total < before:
                assert any(
                    (e.name == "JobSlashed" and e.args["worker"] == account)
                    or (e.name == "VerifierSlashed" and e.args["verifier"] == account)
                    or (e.name == "UnbondedWithdrawn" and e.args["staker"] == account)
                    for e in events
                ), f"{account}: stake fell from {before} to {s.total} without slash or withdrawal"
            assert s.total == before + added - slashed - withdrawn, (
                f"{account}: stake {before} -> {s.total}, events +{added} -{slashed} -{withdrawn}"
            )

        # --- supply changes only by mints
        minted = _total(events, "Transfer", "from", ZERO_ADDRESS, "value")
        burned = _total(events, "Transfer", "to", ZERO_ADDRESS, "value")
        assert burned == 0
        assert view.supply == prev.supply + minted, (
            f"supply {prev.supply} -> {view.supply} with {minted} minted"
        )


def _total(events: Iterable[ChainEvent], name: str, key: str, who: str, field: str) -> int:
    """Sum of ``field`` over the ``name`` events whose ``key`` is ``who``."""
    return sum(e.args[field] for e in events if e.name == name and e.args[key] == who)


def _diff(what: str, chain: dict[str, Any], model: dict[str, Any]) -> str:
    lines = [f"{what} differ (chain vs model):"]
    for key in sorted(set(chain) | set(model)):
        if chain.get(key) != model.get(key):
            lines.append(f"  {key}: chain {chain.get(key)} model {model.get(key)}")
    return "\n".join(lines)


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    # The same examples on every run, so the non-vacuity checks below cannot fail by chance
    # (at 130 random examples CI once drew no assignment to an under-staked worker);
    # MESH_HYPOTHESIS_RANDOM=1 explores new ones in a longer local run.
    derandomize=os.environ.get("MESH_HYPOTHESIS_RANDOM") != "1",
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)


#: The genesis time of this module's own anvil: with it and one second per block until the
#: machine sets its own clock, every block hash, so every audit draw, is the same on every
#: run (on the session's anvil they followed the wall clock and the modules run before, so
#: the derandomized examples took other paths on each run and a non-vacuity check below
#: once found no appeal decided).
GENESIS_TIMESTAMP = 1_764_892_800


@pytest.fixture(scope="module")
def _deployed(anvil_binary: str) -> Iterator[World]:
    """This module's own anvil and deployment, with the on-chain deterrence rate on
    (PARAMS)."""
    with LocalChain(anvil_path=anvil_binary,
                    extra_args=("--timestamp", str(GENESIS_TIMESTAMP))) as chain:
        chain._rpc("anvil_setBlockTimestampInterval", [1])
        # One unit of weight each, and almost another unit of deposit above it: a burn for
        # silence (reward plus collateral, up to the unit) takes the buffer before the seat
        # must leave, so the verifiers stay seated through the silences the clock advances
        # cause and the machine keeps reaching verdicts and appeals.
        yield build_world(chain, PARAMS, seat_deposit=2 * PARAMS.verifier_deposit - 1)


@pytest.fixture(scope="module")
def market_world(_deployed: World) -> World:
    """The module's deployment with standing approvals (kept until the module reverts), so
    that no rule needs an extra approve transaction."""
    world = _deployed
    for client in world.clients:
        client.approve(client.market.address, MAX_UINT)
    for actor in world.actors:
        actor.approve(actor.stakes.address, MAX_UINT)
    return world


@pytest.mark.timeout(max(600, EXAMPLES * STEPS // 8))
def test_marketplace_invariants(market_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    STATS.clear()
    machine = type("Marketplace", (MarketMachine,), {"world": market_world})
    started = time.monotonic()
    run_state_machine_as_test(machine, settings=SETTINGS)
    elapsed = time.monotonic() - started

    terminal = {s.name: STATS[f"terminal {s.name}"] for s in TERMINAL_STATES}
    sent = sum(n for k, n in STATS.items() if k.startswith(("ok ", "revert ")))
    reverted = Counter[str]()
    for key, n in STATS.items():
        if key.startswith("revert "):
            reverted[key.rsplit(": ", 1)[1]] += n
    with capsys.disabled():
        print(
            f"\nmarketplace state machine: {STATS['examples']} examples (max {EXAMPLES}), "
            f"{STATS['rule steps']} rule steps (<= {STEPS} per example), {sent} transactions "
            f"({sum(reverted.values())} reverted as predicted), {STATS['advance']} clock "
            f"advances, {STATS['invariant checks']} invariant checks, {elapsed:.0f} s\n"
            f"  jobs reaching a terminal state: {terminal}\n"
            f"  predicted reverts: {dict(reverted.most_common())}"
        )
        if os.environ.get("MESH_INVARIANTS_STATS"):
            for key in sorted(STATS):
                print(f"  {key}: {STATS[key]}")
    # The run must not pass vacuously: jobs really were paid, slashed and refunded, and the
    # interesting paths were taken. (A quick local run with a handful of examples may miss
    # some; the check applies from VACUITY_MIN_EXAMPLES on, the CI default included.)
    if EXAMPLES < VACUITY_MIN_EXAMPLES:
        return
    for state, count in terminal.items():
        assert count > 0, f"no job reached {state}: {dict(STATS)}"
    free_stake_reverts = (
        STATS["revert assign: InsufficientFreeStake"]
        + STATS["revert assignAndCommit: InsufficientFreeStake"]
    )
    assert free_stake_reverts > 0, "no assignment to a worker without enough free stake"
    assert STATS["ok withdrawUnbonded"] > 0, "no unbonded stake was withdrawn"
    assert STATS["ok appeal"] > 0 and STATS["ok resolveAppeal"] > 0, "no appeal was decided"
    assert STATS["pass disputed"] > 0, "no client disputed a pass"
    assert STATS["finalizeBatch settled or drawn"] > 0, "no batch settled anything"
