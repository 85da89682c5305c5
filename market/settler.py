"""The settler: finalizes payable jobs in settlement batches, once.

    settler = Settler(market_actor, redis_client)
    report = settler.settle(indexer.job_records(), now=latest_block_timestamp)

Selection is :func:`meshcompute.core.settlement.settle_actions` (the contract's ``_settle``
rules; the audit draw is computed from the seed block's hash by
:class:`meshcompute.chain.draws.AuditDraws`, the same answer as ``JobMarket.auditStatus``
without one call per job). Jobs go out through the actor's
one nonce-managed sender as settlement batches: ``finalizeBatch`` transactions of at most
``max_batch`` jobs.

Idempotency: before a job is sent, the settler claims ``<prefix>job:<id>:<state>`` in Redis
with SET NX (one key per job and record state, so a job drawn for audit can later be paid
under the key of its AUDITED record). The key then says ``sent:<tx hash>`` while the
transaction is pending, so another run or another process skips the job. After the receipt:

* a job its events show paid or slashed keeps ``done:<tx hash>`` for ``done_ttl_s`` (long
  enough for the indexer to catch up, after which the job is no longer selected);
* a job whose record the chain no longer holds (it became final, or moved on, between
  selection and send; ``finalizeBatch`` skips such stale entries) keeps ``stale:<tx hash>``
  the same way;
* any other job (audit draw recorded, or not settleable yet at the block's time) is released.

A failed transaction releases the keys of its jobs. A key left by a crashed settler expires
(``claim_ttl_s`` before sending, ``pending_ttl_s`` after); a later run looks up the receipt
of a ``sent:`` key and releases or finalizes it at once. The contract skipping a stale record
is the last line of defence against paying twice, not the first.

Gas: ``eth_estimateGas`` runs in the latest block while the transaction lands in the next, so
a job whose audit draw becomes available in that block is skipped by the estimate but paid by
the transaction, which then runs out of gas. The settler therefore asks for a gas limit with
headroom for every job in the batch (``min_gas``; the actor caps it at the block gas limit).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from redis import Redis
from web3.types import TxReceipt

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.draws import AuditDraws
from meshcompute.core.job import JobRecord
from meshcompute.core.settlement import SettleAction, settle_actions
from meshcompute.errors import BadInput, ContractRevert, TransactionRejected

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "mesh:settle:"
GAS_BASE = 60_000
"""Gas for a finalizeBatch call itself (intrinsic gas, calldata, flush of the last run)."""
GAS_PER_JOB = 150_000
"""Headroom per job. Measured on anvil: a finalizeBatch that slashes one job (fresh
storage for the worker's record, credits to client and fee recipient, the stake manager's
slash, three events) used 136,772 gas including the 21,000 intrinsic; a payment in a batch
of 100 costs about 17,000."""

_FINAL_EVENTS = ("JobPaid", "JobSlashed", "JobRefunded")
"""Events that end a job in a settlement batch: paid, slashed (with its refund), or void (a
drawn job whose verdict never came: refunded)."""

# Compare-and-set and compare-and-delete, so a settler never overwrites another's key.
_SET_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
_DEL_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclass
class SettlementReport:
    """What one :meth:`Settler.settle` did."""

    job_ids: list[int]
    """Jobs paid or slashed by this call's transactions."""
    tx_hash: str | None
    """The last transaction sent (None: nothing was sent)."""
    skipped: list[int]
    """Jobs the rules accept but this call did not settle: held by another settler (or its
    pending transaction), stale records, or not yet settleable at the block's time."""
    drawn: list[int] = field(default_factory=list)
    """Committed jobs whose audit draw this call recorded (they now wait for a verdict)."""
    tx_hashes: list[str] = field(default_factory=list)
    """Every transaction sent, in order."""


@dataclass(frozen=True)
class _Claim:
    job_id: int
    key: str


class Settler:
    """Sends ``finalizeBatch`` for payable jobs through ``actor``'s sender, at most once per
    job and record state across processes sharing ``redis``."""

    def __init__(
        self,
        actor: MeshActor,
        redis: Redis,
        *,
        max_batch: int = 100,
        max_batches: int | None = None,
        prefix: str = DEFAULT_PREFIX,
        claim_ttl_s: int = 120,
        pending_ttl_s: int = 900,
        done_ttl_s: int = 3600,
    ) -> None:
        if max_batch < 1:
            raise BadInput(f"max_batch must be >= 1, got {max_batch}")
        for name, value in (
            ("claim_ttl_s", claim_ttl_s),
            ("pending_ttl_s", pending_ttl_s),
            ("done_ttl_s", done_ttl_s),
        ):
            if value < 1:
                raise BadInput(f"{name} must be >= 1 second, got {value}")
        self.actor = actor
        self.redis = redis
        self.max_batch = max_batch
        self.max_batches = max_batches
        """Most batches one :meth:`settle` sends (None: all); the rest wait for the next."""
        self.prefix = prefix
        self.claim_ttl_s = claim_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.done_ttl_s = done_ttl_s
        self._set_if = redis.register_script(_SET_IF)
        self._del_if = redis.register_script(_DEL_IF)

    def __repr__(self) -> str:
        return f"<Settler {self.actor.address} batch={self.max_batch}>"

    def key(self, job_id: int, record: JobRecord) -> str:
        """The idempotency key of settling ``job_id`` from ``record``."""
        return f"{self.prefix}job:{job_id}:{int(record.state)}"

    # ------------------------------------------------------------------ settle
    def settle(self, records: Mapping[int, JobRecord], now: int) -> SettlementReport:
        """Finalize every job of ``records`` the contract accepts at block time ``now``.

        Raises ContractRevert when a batch fails (estimation or on chain; its keys are
        released) and TransactionTimeout when a batch has no receipt in time (its keys stay
        ``sent:`` so no other run resends it; a later run finishes them from the receipt).
        """
        draws = AuditDraws(self.actor)

        def audited(job_id: int, record: JobRecord) -> bool | None:
            can_draw, drawn = draws.status(job_id, record)
            return drawn if can_draw else None

        # oldest jobs first, a slice at a time, until this round has its fill of actions: a
        # backlog is worked off over several rounds, each a bounded amount of work
        limit = None if self.max_batches is None else self.max_batch * self.max_batches
        ordered = sorted(records)
        step = len(ordered) if limit is None else max(limit, 1)
        actions: dict[int, SettleAction] = {}
        for start in range(0, len(ordered), max(step, 1)):
            part = {job_id: records[job_id] for job_id in ordered[start:start + step]}
            draws.prefetch(part)
            actions.update(settle_actions(part, now=now, **self._config(), audited=audited))
            if limit is not None and len(actions) >= limit:
                actions = dict(list(actions.items())[:limit])
                break
        report = SettlementReport(job_ids=[], tx_hash=None, skipped=[])
        token = f"claim:{uuid.uuid4().hex}"
        claims = self._claim_all(list(actions), records, token)
        claimed = {claim.job_id for claim in claims}
        report.skipped.extend(job_id for job_id in actions if job_id not in claimed)
        for start in range(0, len(claims), self.max_batch):
            self._send_batch(claims[start : start + self.max_batch], records, token, report)
        report.skipped.sort()
        return report

    def _config(self) -> dict[str, int]:
        config = self.actor.config()  # read from the chain once per actor: it is immutable
        return {
            "challenge_window": config["challenge_window_s"],
            "audit_window": config["audit_window_s"],
            "appeal_window": config["appeal_window_s"],
        }

    # ------------------------------------------------------------------ keys
    def _claim_all(self, job_ids: list[int], records: Mapping[int, JobRecord],
                   token: str) -> list[_Claim]:
        """Claim each job's key (SET NX, all in one round trip); a key held by a ``sent:``
        whose transaction failed is released and claimed (:meth:`_claim`, one at a time).
        Returns the claims in ``job_ids`` order."""
        keys = [self.key(job_id, records[job_id]) for job_id in job_ids]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, token, nx=True, ex=self.claim_ttl_s)
        first = pipe.execute() if keys else []
        held = [(job_id, key) for job_id, key, ok in zip(job_ids, keys, first, strict=True)
                if not ok]
        values = self.redis.mget([key for _, key in held]) if held else []
        retried = {
            job_id: self._claim(job_id, records[job_id], token)
            for (job_id, _key), value in zip(held, values, strict=True)
            if (_text(value) or "").startswith("sent:")
        }
        out: list[_Claim] = []
        for job_id, key, ok in zip(job_ids, keys, first, strict=True):
            claim = _Claim(job_id, key) if ok else retried.get(job_id)
            if claim is not None:
                out.append(claim)
        return out

    def _claim(self, job_id: int, record: JobRecord, token: str) -> _Claim | None:
        key = self.key(job_id, record)
        if self.redis.set(key, token, nx=True, ex=self.claim_ttl_s):
            return _Claim(job_id, key)
        held = _text(self.redis.get(key))
        released = bool(held and held.startswith("sent:") and self._release_if_failed(key, held))
        if released and self.redis.set(key, token, nx=True, ex=self.claim_ttl_s):
            return _Claim(job_id, key)
        return None

    def _release_if_failed(self, key: str, held: str) -> bool:
        """A ``sent:`` key whose transaction failed, or was mined without settling the job,
        is released; one whose transaction paid it becomes ``done:``. True if released."""
        tx_hash = held.removeprefix("sent:")
        receipt = self.actor.mined_receipt(tx_hash)
        if receipt is None:
            return False  # still pending (or dropped: the key expires after pending_ttl_s)
        if receipt["status"] == 1 and int(self._job_id_of(key)) in self._settled_in(receipt)[0]:
            self._set_if(keys=[key], args=[held, f"done:{tx_hash}", self.done_ttl_s])
            return False
        return bool(self._del_if(keys=[key], args=[held]))

    def _job_id_of(self, key: str) -> str:
        return key.removeprefix(f"{self.prefix}job:").split(":")[0]

    # ------------------------------------------------------------------ send
    def _send_batch(
        self,
        claims: Sequence[_Claim],
        records: Mapping[int, JobRecord],
        token: str,
        report: SettlementReport,
    ) -> None:
        job_ids = [c.job_id for c in claims]
        try:
            tx_hash = self.actor.finalize_batch(
                job_ids, [records[i] for i in job_ids], wait=False,
                min_gas=GAS_BASE + GAS_PER_JOB * len(job_ids),
            )
        except (ContractRevert, TransactionRejected):
            self._release(claims, token)
            raise
        sent = f"sent:{tx_hash.to_0x_hex()}"
        pipe = self.redis.pipeline(transaction=False)
        for claim in claims:
            self._set_if(keys=[claim.key], args=[token, sent, self.pending_ttl_s], client=pipe)
        pipe.execute()
        report.tx_hash = tx_hash.to_0x_hex()
        report.tx_hashes.append(report.tx_hash)
        log.info("finalizeBatch of %d jobs sent in %s", len(job_ids), report.tx_hash)
        try:
            receipt = self.actor.wait_for_receipt(tx_hash)
        except ContractRevert:
            self._release(claims, sent)
            raise
        settled, drawn = self._settled_in(receipt)
        pipe = self.redis.pipeline(transaction=False)
        for claim in claims:
            if claim.job_id in settled:
                report.job_ids.append(claim.job_id)
                self._set_if(keys=[claim.key],
                             args=[sent, f"done:{report.tx_hash}", self.done_ttl_s],
                             client=pipe)
                continue
            if claim.job_id in drawn:
                report.drawn.append(claim.job_id)
            else:
                report.skipped.append(claim.job_id)
            if claim.job_id not in drawn and self._is_stale(claim.job_id, records[claim.job_id]):
                self._set_if(keys=[claim.key],
                             args=[sent, f"stale:{report.tx_hash}", self.done_ttl_s],
                             client=pipe)
            else:
                self._del_if(keys=[claim.key], args=[sent], client=pipe)
        pipe.execute()

    def _settled_in(self, receipt: TxReceipt) -> tuple[set[int], set[int]]:
        """Job ids the receipt's JobMarket events show final, and those drawn for audit."""
        settled: set[int] = set()
        drawn: set[int] = set()
        for event in self.actor.receipt_events(receipt, "JobMarket"):
            if event.name in _FINAL_EVENTS:
                settled.add(int(event.args["jobId"]))
            elif event.name == "AuditDrawn" and event.args["audited"]:
                drawn.add(int(event.args["jobId"]))
        return settled, drawn

    def _is_stale(self, job_id: int, record: JobRecord) -> bool:
        return not self.actor.record_matches(job_id, record)

    def _release(self, claims: Sequence[_Claim], value: str) -> None:
        for claim in claims:
            self._del_if(keys=[claim.key], args=[value])


def _text(value: str | bytes | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
