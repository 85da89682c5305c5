"""Gas per job for full lifecycles on anvil: post + assign + commit + finalize.

``single``: one job through ``postJob``, ``assignAndCommit`` (ticket with one id) and
``finalize``; also the separate ``assign`` + ``commitResults`` path. ``batched_100``: 100
shards through ``postJobs``, one ``assignAndCommit`` ticket and ``finalizeBatch``, divided by
100. Figures are steady state (the accounts involved already hold balances, as in a running
market); the first job of a fresh deployment, which pays for new storage slots, is reported
separately. Gas is the receipts' ``gasUsed``, so it is net of the storage refund a settlement
earns by clearing the ended job's digest slot (capped by the EVM at a fifth of the
transaction's gas, which binds for ``finalizeBatch``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from meshcompute.chain.contracts import JobParams, MeshActor, mesh_sender
from meshcompute.chain.deploy import DeployParams, deploy_contracts
from meshcompute.chain.local import LocalChain
from meshcompute.chain.tickets import AssignTicket, sign_ticket
from meshcompute.units import TOKEN

CHALLENGE_S = 60


def run_gas_bench(batch: int = 100) -> dict[str, Any]:
    with LocalChain() as chain:
        w3 = chain.w3()
        admin_acct, assigner, client_acct, worker_acct = chain.accounts[:4]
        sender = mesh_sender(w3, admin_acct)
        # The lifecycle is measured on the path where the draw pays the job (no deterrence
        # rate, floor 0); what the on-chain deterrence rate adds to an assignment is measured
        # on a second deployment that has it on.
        params = DeployParams(challenge_window_s=CHALLENGE_S, min_audit_bps=0,
                              audit_deterrence=False)
        bench = _Lifecycle.deployed(chain, sender, params, admin_acct, client_acct, worker_acct,
                                    assigner)
        cold = bench.single()
        single = [bench.single() for _ in range(5)]
        split_path = [bench.single(separate_assign=True) for _ in range(3)]
        bench.batch(batch)  # warm-up: first batch touches the same slots as later ones
        batched = bench.batch(batch)
        deterrent = _Lifecycle.deployed(
            chain, sender, replace(params, audit_deterrence=True), admin_acct, client_acct,
            worker_acct, assigner,
        )
        deterrent.single()  # warm-up, as above
        with_rate = [deterrent.single()["assign_and_commit"] for _ in range(3)]
        deterrent.batch(batch)
        with_rate_batch = deterrent.batch(batch)["assign_and_commit_batch"]
        return {
            "onchain_audit_rate_gas_single": round(
                _mean(with_rate) - _mean(s["assign_and_commit"] for s in single)
            ),
            f"onchain_audit_rate_gas_per_job_batched_{batch}": round(
                (with_rate_batch - batched["assign_and_commit_batch"]) / batch
            ),
            "per_job_gas_single": round(_mean(s["total"] for s in single)),
            "per_job_gas_single_separate_assign": round(_mean(s["total"] for s in split_path)),
            "per_job_gas_single_first_job": cold["total"],
            f"per_job_gas_batched_{batch}": round(batched["total"] / batch),
            "single_breakdown": {k: round(_mean(s[k] for s in single)) for k in single[0]},
            f"batched_{batch}_breakdown": batched,
            "chain": "anvil",
            "evm_version": "cancun (compiled); anvil default hardfork at run time",
        }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


class _Lifecycle:
    @classmethod
    def deployed(cls, chain, sender, params: DeployParams, admin_acct, client_acct, worker_acct,
                 assigner) -> _Lifecycle:
        """A fresh deployment with a funded client and a staked worker."""
        w3 = chain.w3()
        deployment = deploy_contracts(sender, params, assigners=(assigner.address,))
        admin = MeshActor(w3, deployment, admin_acct, sender)
        client = MeshActor(w3, deployment, client_acct)
        worker = MeshActor(w3, deployment, worker_acct)
        admin.mint(client.address, 10**9 * TOKEN)
        admin.mint(worker.address, 10**9 * TOKEN)
        worker.stake(10**6 * TOKEN)
        client.approve(deployment.address("JobMarket"), 2**256 - 1)
        return cls(chain, admin, client, worker, assigner)

    def __init__(self, chain, admin: MeshActor, client: MeshActor, worker: MeshActor, assigner):
        self.chain = chain
        self.admin = admin
        self.client = client
        self.worker = worker
        self.assigner = assigner
        self.market = admin.deployment.address("JobMarket")
        self.chain_id = admin.deployment.chain_id

    def _params(self) -> JobParams:
        now = self.chain.w3().eth.get_block("latest")["timestamp"]
        return JobParams(
            spec_hash=os.urandom(32),
            reward=100 * TOKEN,
            audit_fee=5 * TOKEN,
            collateral=50 * TOKEN,
            deadline=now + 3600,
            audit_bps=0,
        )

    def _ticket(self, ids: list[int]) -> tuple[AssignTicket, bytes]:
        now = self.chain.w3().eth.get_block("latest")["timestamp"]
        ticket = AssignTicket(self.worker.address, tuple(ids), 0, now + 600)
        return ticket, sign_ticket(
            ticket, self.assigner, chain_id=self.chain_id, job_market=self.market
        )

    def _settle_time(self) -> None:
        self.chain.increase_time(CHALLENGE_S + 1)
        self.chain.mine(2)

    def single(self, separate_assign: bool = False) -> dict[str, int]:
        post = self.client.sender.send(self.client.market.functions.postJob(self._params().as_tuple()))
        (job_id,) = self.client._posted_ids(post)
        ticket, sig = self._ticket([job_id])
        gas = {"post": post["gasUsed"]}
        if separate_assign:
            gas["assign"] = self.worker.assign(ticket, sig)["gasUsed"]
            gas["commit"] = self.worker.commit_results([job_id], [os.urandom(32)])["gasUsed"]
        else:
            gas["assign_and_commit"] = self.worker.assign_and_commit(ticket, sig, [os.urandom(32)])[
                "gasUsed"
            ]
        self._settle_time()
        gas["finalize"] = self.admin.finalize(job_id)["gasUsed"]
        gas["total"] = sum(gas.values())
        return gas

    def batch(self, n: int) -> dict[str, int]:
        params = [self._params().as_tuple() for _ in range(n)]
        post = self.client.sender.send(self.client.market.functions.postJobs(params))
        ids = self.client._posted_ids(post)
        ticket, sig = self._ticket(ids)
        records = list(self.admin.job_records(ids, verify=False).values())
        commit = self.worker.assign_and_commit(
            ticket, sig, [os.urandom(32) for _ in ids], records=records
        )
        self._settle_time()
        final = self.admin.finalize_batch(ids)
        gas = {
            "post_batch": post["gasUsed"],
            "assign_and_commit_batch": commit["gasUsed"],
            "finalize_batch": final["gasUsed"],
        }
        gas["total"] = sum(gas.values())
        return gas
