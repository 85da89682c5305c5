"""Canary jobs: known junk planted among ordinary jobs, so that a lazy pass costs its bond.

A verifier that posts "pass" without recomputing saves about one job's compute. The contract
makes every pass appealable by the job's client (a dispute) and locks ten rewards of the
verifier's stake behind it (``JobMarket._verifierBond``). The canary runner is the client that
uses that: it posts a real program with real inputs, has a worker of its own take the job
with a ticket signed by the assigner key, and commits a wrong output (the honest output moved
far beyond any tolerance). An honest verifier fails it (the canary pays the audit fee; its own
worker's collateral goes back to it as compensation, the rest to the protocol). A verifier
that passes it is disputed at once: another verifier recomputes, the pass is overturned and
the lazy verifier's bond goes to the canary client. Where that verifier upholds the pass
(lazy too), the canary escalates it: a third seat recomputes, the job is void and the lazy
upholder forfeits its reserved cover.

Who runs it: whoever holds the assigner key (the market operator, or the protocol through
it), since the canary worker must get the job without the market offering it to anyone else.
``mesh canary start`` runs :func:`run_canaries`: canaries at random times (exponential gaps,
so nobody can tell the next one from the clock), a few open at a time, each a fresh export of
a real model on fresh random inputs, every pass disputed within the appeal window; the planted
jobs are kept in a journal file, so a restart keeps watching (and disputing) them.
What it relies on: a verifier cannot tell a canary from any other job (real programs, a worker
address with an ordinary record, the same ``assignAndCommit`` path). Neither is enforced here;
the README's trust model says so.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from meshcompute.chain.contracts import JobParams, MeshActor
from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.core.job import JobState
from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.errors import BadInput, MeshError
from meshcompute.execution.programs import load_tensors, save_tensors
from meshcompute.files import write_json_atomic
from meshcompute.wire.market_client import MarketClient

log = logging.getLogger("meshcompute.canary")

Recompute = Callable[[JobSpec, bytes, bytes], bytes]
"""``(spec, program, inputs) -> honest output bytes`` (the verifier's Recomputer)."""


def junk_output(honest: bytes) -> bytes:
    """A wrong output of the same names, shapes and dtypes as ``honest``: every float value
    negated, scaled and shifted (beyond any tolerance floor, and a different argmax), every
    integer or bool value changed."""
    out = []
    for tensor in load_tensors(honest, "out"):
        if tensor.is_floating_point() or tensor.is_complex():
            out.append(-1.5 * tensor - 1.0)
        elif tensor.dtype == torch.bool:
            out.append(~tensor)
        else:
            out.append(tensor + 1)
    return save_tensors(out, "out")


@dataclass
class CanaryRunner:
    """Plants canary jobs and disputes every pass of them.

    ``client`` posts and disputes; ``worker`` (staked) takes and commits; ``assigner`` signs
    the ticket (an ``ASSIGNER_ROLE`` key); ``client_market``/``worker_market`` upload blobs as
    each of them; ``recompute`` gives the honest output the junk is made from."""

    client: MeshActor
    worker: MeshActor
    assigner: object
    client_market: MarketClient
    worker_market: MarketClient
    recompute: Recompute
    planted: dict[int, str] = field(default_factory=dict)
    """Canary job id -> what became of it (``planted``, ``disputed``, or a final state)."""

    def __post_init__(self) -> None:
        if self.client.address.lower() == self.worker.address.lower():
            raise BadInput("a canary's client and worker must be different addresses")

    def plant(self, program: bytes, inputs: bytes, *, reward: int, audit_fee: int,
              collateral: int, audit_bps: int = 10_000, deadline_s: int = 3600,
              lease_s: int = 600) -> int:
        """Post one canary job and commit junk for it; returns its job id."""
        if audit_fee <= 0:
            raise BadInput("a canary needs an audit fee: it pays the honest verifier that "
                           "fails it, and bonds the dispute of a pass")
        spec = JobSpec(program=self.client_market.put_blob(program),
                       inputs=self.client_market.put_blob(inputs))
        spec_sha = self.client_market.put_spec(spec)
        junk = junk_output(self.recompute(spec, program, inputs))
        self.worker_market.put_blob(junk)
        if self.client.stake_of(self.worker.address).free < collateral:
            raise BadInput(f"the canary worker {self.worker.address} has less free stake than "
                           f"one canary's collateral ({collateral} wei): stake more, or lower "
                           "--max-open or --collateral")
        now = int(self.client.w3.eth.get_block("latest")["timestamp"])
        (job_id,) = self.client.post_jobs([JobParams(
            spec_hash=bytes.fromhex(spec_sha), reward=reward, audit_fee=audit_fee,
            collateral=collateral, deadline=now + deadline_s, audit_bps=audit_bps)])
        # recorded before the assignment: a job posted but never assigned is taken back
        # (watch_once), never left open for the market to hand to someone else forever
        self.planted[job_id] = "posted"
        ticket = AssignTicket(self.worker.address, (job_id,), audit_bps, now + lease_s)
        signature = sign_ticket(ticket, self.assigner,  # type: ignore[arg-type]
                                chain_id=self.client.deployment.chain_id,
                                job_market=self.client.deployment.address("JobMarket"))
        self.worker.assign_and_commit(ticket, signature, [bytes.fromhex(sha256_hex(junk))])
        self.planted[job_id] = "planted"
        log.info("canary planted: job %d", job_id)
        return job_id

    def watch_once(self) -> dict[int, str]:
        """Dispute every planted job whose audit passed; take back a posted job the canary
        worker never got; record the ones that ended. One job's failure (a node error, a
        window that closed meanwhile) is logged and tried again next time; it does not stop
        the others. Returns what changed, by job id."""
        changed: dict[int, str] = {}
        for job_id, status in list(self.planted.items()):
            if status not in OPEN:
                continue
            try:
                new = self._watch(job_id, status)
            except (MeshError, OSError) as exc:
                log.warning("canary job %d: %s", job_id, exc)
                continue
            if new is not None and new != status:
                changed[job_id] = self.planted[job_id] = new
        return changed

    def _watch(self, job_id: int, status: str) -> str | None:
        record = self.client.job(job_id)
        if record.state.terminal:
            return record.state.name.lower()
        if status == "posted":
            if record.worker.lower() == self.worker.address.lower():
                return "planted"  # the assignment went through after all
            if record.state == JobState.POSTED:
                self.client.reclaim(job_id, record)  # never assigned: the escrow comes back
                return "reclaimed"
            return "lost"  # someone else's worker took it: an ordinary job now
        if record.state == JobState.AUDIT_PASSED and status == "planted":
            self.client.dispute(job_id, record)
            log.warning("canary job %d passed by %s: disputed", job_id, record.auditor)
            return "disputed"
        if record.state == JobState.PASS_UPHELD and status == "disputed":
            # the dispute's appeal seat upheld known junk: it did not recompute either, so
            # escalate (a third seat judges; the reward is escrowed as the bond)
            self.client.dispute(job_id, record)
            log.warning("canary job %d: the pass was upheld on dispute: escalated", job_id)
            return "escalated"
        return None

Program = Callable[[], tuple[bytes, bytes]]
"""Makes one canary's ``(program, inputs)`` (safetensors bytes), fresh each call."""

OPEN = ("posted", "planted", "disputed", "escalated")
"""Statuses of a canary not yet ended (``posted``: on chain, its assignment not yet seen)."""


@dataclass(frozen=True)
class CanaryPlan:
    """How ``mesh canary start`` plants: on average one canary every ``every_s`` seconds (the
    gaps are exponential), at most ``max_open`` not ended at once, at most ``total`` in all
    (None: no end), each paying ``reward`` and ``audit_fee`` and bonding ``collateral`` of
    the canary worker's stake (wei)."""

    every_s: float
    reward: int
    audit_fee: int
    collateral: int
    max_open: int = 4
    total: int | None = None
    deadline_s: int = 3600
    lease_s: int = 600

    def __post_init__(self) -> None:
        if self.every_s <= 0 or self.max_open < 1 or (self.total is not None
                                                      and self.total < 0):
            raise BadInput("a canary plan needs every_s > 0, max_open >= 1, total >= 0")
        if min(self.reward, self.audit_fee, self.collateral) <= 0:
            raise BadInput("a canary needs a reward, an audit fee and collateral above 0")


def canary_journal_path(data_dir: Path, chain_id: int, job_market: str, client: str) -> Path:
    """One journal per deployment (a redeployed JobMarket starts its ids again) and client."""
    return (Path(data_dir).expanduser() / "canary"
            / f"{chain_id}-{job_market.lower()}-{client.lower()}.json")


def load_planted(path: Path) -> dict[int, str]:
    """The journal's canaries (job id -> status); empty when there is no journal yet."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {int(job_id): str(status) for job_id, status in data.get("planted", {}).items()}


def save_planted(path: Path, planted: dict[int, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"version": 1,
                             "planted": {str(k): v for k, v in sorted(planted.items())}},
                      durable=True)


def run_canaries(runner: CanaryRunner, programs: Sequence[Program], plan: CanaryPlan, *,
                 journal: Path, stop: threading.Event, poll_s: float = 2.0,
                 rng: random.Random | None = None,
                 emit: Callable[..., None] = lambda event, **fields: None) -> dict[int, str]:
    """Plant canaries by ``plan`` and dispute every pass of them until ``stop`` is set (and,
    with a ``total``, until every canary has ended). A failure to plant or to watch (funds,
    the market, the node) is reported through ``emit`` and tried again later; it never ends
    the loop. Returns the canaries and what became of them."""
    if not programs:
        raise BadInput("run_canaries needs at least one program")
    rng = rng or random.SystemRandom()
    runner.planted.update(load_planted(journal))
    started = len(runner.planted)
    next_at = time.monotonic() + rng.expovariate(1 / plan.every_s)
    backoff = poll_s
    while not stop.is_set():
        try:
            changed = runner.watch_once()
        except (MeshError, OSError) as exc:
            emit("warning", message=f"watching canaries failed: {exc}")
            changed = {}
        if changed:
            save_planted(journal, runner.planted)
            for job_id, status in changed.items():
                emit("canary", job_id=job_id, status=status)
        open_now = sum(1 for status in runner.planted.values() if status in OPEN)
        planted_here = len(runner.planted) - started
        done = plan.total is not None and planted_here >= plan.total
        if done and open_now == 0:
            break
        if not done and open_now < plan.max_open and time.monotonic() >= next_at:
            try:
                program, inputs = rng.choice(list(programs))()
                job_id = runner.plant(program, inputs, reward=plan.reward,
                                      audit_fee=plan.audit_fee, collateral=plan.collateral,
                                      deadline_s=plan.deadline_s, lease_s=plan.lease_s)
            except (MeshError, OSError) as exc:
                emit("warning", message=f"planting a canary failed: {exc}")
                next_at = time.monotonic() + backoff
                backoff = min(60.0, backoff * 2)
            else:
                backoff = poll_s
                emit("canary", job_id=job_id, status="planted")
                next_at = time.monotonic() + rng.expovariate(1 / plan.every_s)
            finally:  # a job posted before a failure is in the journal too
                save_planted(journal, runner.planted)
        stop.wait(poll_s)
    return dict(runner.planted)
