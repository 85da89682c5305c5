"""A deployed marketplace with named actors, for contract tests (anvil or eth-tester)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from meshcompute.chain.contracts import JobParams, MeshActor, mesh_sender
from meshcompute.chain.deploy import Deployment, DeployParams, deploy_contracts
from meshcompute.chain.devchain import DevChain
from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.core.job import JobRecord
from meshcompute.units import TOKEN

#: Small windows so tests move time a little; unbonding still exceeds all windows.
TEST_PARAMS = DeployParams(
    fee_bps=250,
    min_audit_bps=0,
    challenge_window_s=60,
    audit_window_s=300,
    appeal_window_s=300,
    unbonding_delay_s=2 * 24 * 3600,
    # A verifier seat covers the jobs whose reward plus collateral is within its deposit: the
    # default test job (100 + 50) is, the invariants' largest collateral (20,000) is not.
    verifier_deposit=10_000 * TOKEN,
    # The tests that follow one job through its life choose its audit rate themselves; the
    # on-chain deterrence rate is tested on its own deployment (test_audit_rate_onchain.py,
    # and the invariants' state machine).
    audit_deterrence=False,
)

FUNDS = 1_000_000 * TOKEN
STAKE = 10_000 * TOKEN


@dataclass
class World:
    """Accounts: 0 admin, 1 assigner (the market's key), 2-3 clients, 4-6 workers,
    7-8 verifiers, 9 outsider."""

    chain: DevChain
    deployment: Deployment
    admin: MeshActor
    assigner: LocalAccount
    clients: list[MeshActor]
    workers: list[MeshActor]
    verifiers: list[MeshActor]
    outsider: MeshActor
    actors: list[MeshActor] = field(default_factory=list)

    @property
    def w3(self):
        return self.chain.w3()

    @property
    def market(self):
        return self.admin.market

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int, blocks: int = 2) -> None:
        """Move the clock forward and mine blocks (so audit draws become available)."""
        self.chain.increase_time(seconds)
        self.chain.mine(blocks)

    def params(self, **overrides) -> JobParams:
        values = {
            "spec_hash": os.urandom(32),
            "reward": 100 * TOKEN,
            "audit_fee": 10 * TOKEN,
            "collateral": 50 * TOKEN,
            "deadline": self.now() + 3600,
            "audit_bps": 0,
        }
        values.update(overrides)
        return JobParams(**values)

    def post(self, client: MeshActor | None = None, n: int = 1, **overrides) -> list[int]:
        client = client or self.clients[0]
        if n == 1:
            return [client.post_job(self.params(**overrides))]
        return client.post_jobs([self.params(**overrides) for _ in range(n)])

    def ticket(
        self,
        worker: MeshActor,
        job_ids,
        *,
        audit_bps: int = 0,
        lease_s: int = 600,
        signer: LocalAccount | None = None,
        chain_id: int | None = None,
        job_market: str | None = None,
    ) -> tuple[AssignTicket, bytes]:
        ticket = AssignTicket(worker.address, tuple(job_ids), audit_bps, self.now() + lease_s)
        signature = sign_ticket(
            ticket,
            signer or self.assigner,
            chain_id=chain_id or self.deployment.chain_id,
            job_market=job_market or self.deployment.address("JobMarket"),
        )
        return ticket, signature

    def assign(self, worker: MeshActor, job_ids, **kw) -> None:
        ticket, sig = self.ticket(worker, job_ids, **kw)
        worker.assign(ticket, sig)

    def commit(self, worker: MeshActor, job_ids, result: bytes | None = None) -> None:
        worker.commit_results(list(job_ids), [result or b"\x42" * 32 for _ in job_ids])

    def committed_job(self, *, audit_bps: int = 0, worker: MeshActor | None = None, **kw) -> int:
        """A job posted, assigned and committed; returns its id."""
        worker = worker or self.workers[0]
        (job_id,) = self.post(**kw)
        self.assign(worker, [job_id], audit_bps=audit_bps)
        self.commit(worker, [job_id])
        return job_id

    def audited_job(self, **kw) -> int:
        """A committed job drawn for audit (audit rate 100%) with the draw recorded."""
        job_id = self.committed_job(audit_bps=10_000, **kw)
        self.advance(TEST_PARAMS.challenge_window_s + 1)
        self.admin.finalize(job_id)  # records the draw: AuditDrawn(true)
        return job_id

    def verifier_for(self, job_id: int) -> MeshActor:
        """The verifier the draw assigns to the job's pending verdict now (audit, appeal or
        dispute): the only one whose verdict the contract takes. A later verdict's draw is
        seeded by the block after the transaction that opened it: mined here when it is not."""
        address = self.admin.assigned_verifier(job_id)
        if address is None:
            self.chain.mine(2)
            address = self.admin.assigned_verifier(job_id)
        for verifier in self.verifiers:
            if verifier.address == address:
                return verifier
        raise AssertionError(f"job {job_id}: assigned verifier {address} is not in the world")

    def auditor_of(self, job_id: int) -> MeshActor:
        """The verifier whose verdict the job's record names."""
        address = self.job(job_id).auditor
        (auditor,) = [v for v in self.verifiers if v.address == address]
        return auditor

    def other_verifier(self, verifier: MeshActor) -> MeshActor:
        """The world's other verifier (there are two)."""
        (other,) = [v for v in self.verifiers if v.address != verifier.address]
        return other

    def job(self, job_id: int) -> JobRecord:
        return self.admin.job(job_id)

    def resync(self) -> None:
        for actor in self.actors:
            actor.sender.resync()


def build_world(chain: DevChain, params: DeployParams = TEST_PARAMS,
                seat_deposit: int | None = None) -> World:
    w3 = chain.w3()
    accounts = chain.accounts
    admin_sender = mesh_sender(w3, accounts[0])
    deployment = deploy_contracts(
        admin_sender,
        params,
        assigners=(accounts[1].address,),
        verifiers=(accounts[7].address, accounts[8].address),
        seat_deposit=seat_deposit,
    )

    def actor(i: int) -> MeshActor:
        return MeshActor(w3, deployment, accounts[i])

    world = World(
        chain=chain,
        deployment=deployment,
        admin=MeshActor(w3, deployment, accounts[0], admin_sender),
        assigner=accounts[1],
        clients=[actor(2), actor(3)],
        workers=[actor(4), actor(5), actor(6)],
        verifiers=[actor(7), actor(8)],
        outsider=actor(9),
    )
    world.actors = [world.admin, *world.clients, *world.workers, *world.verifiers, world.outsider]
    for a in [*world.clients, *world.workers, *world.verifiers, world.outsider]:
        world.admin.mint(a.address, FUNDS)
    for w in world.workers:
        w.stake(STAKE)
    for v in world.verifiers:  # a failing verdict locks the job's reward as the verifier's bond
        v.stake(STAKE)
    return world
