"""The verifier service on a real anvil, a real market (uvicorn + Redis) and real sandboxed
recomputation: an honest audited job passes and pays, a wrong output is failed and slashed
with the client refunded and compensated, an honest worker wrongly failed by a faulty verifier
wins its appeal by majority, missing blobs are handled fairly, restarts are idempotent.

Every job here is posted with ``audit_bps = 10000`` so the draw always selects it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcompute.chain.contracts import MeshActor
from meshcompute.chain.deploy import save_deployment
from meshcompute.core.job import PASS_BOND_REWARDS, JobState
from meshcompute.core.payout import slash_split, split_reward
from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.core.tolerance import evidence_hash
from meshcompute.errors import BadInput, NotPermitted
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.mesh.lazy_verifier import LazyAuditor
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.settings import load_settings
from meshcompute.units import TOKEN
from meshcompute.verifier.audit import Auditor
from meshcompute.verifier.evidence import EvidenceRecord, claim_document
from meshcompute.verifier.journal import POSTED, SKIPPED, Journal
from meshcompute.verifier.outputs import compare_outputs
from meshcompute.verifier.recompute import Recomputer
from meshcompute.verifier.service import ServiceConfig, VerifierService, require_verifier_seat
from meshcompute.wire.market_client import MarketClient
from tests.contracts.helpers import reverts
from tests.contracts.world import STAKE, TEST_PARAMS, World, build_world

AUDIT_ALL = 10_000


# ---------------------------------------------------------------------- fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Market:
    url: str
    settings_env: dict[str, str]


@pytest.fixture(scope="module")
def world_module(anvil) -> Iterator[World]:
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    yield world
    anvil.revert(snapshot)
    world.resync()


@pytest.fixture
def world(world_module: World, anvil) -> Iterator[World]:
    snapshot = anvil.snapshot()
    yield world_module
    anvil.revert(snapshot)
    world_module.resync()


@pytest.fixture(scope="module")
def market(world_module: World, anvil, redis_url: str, tmp_path_factory) -> Iterator[Market]:
    """The real market API (create_app) served by uvicorn on a loopback port."""
    import httpx
    import uvicorn

    from meshcompute.market.api.app import create_app

    root = tmp_path_factory.mktemp("market")
    deployments = root / "deployments"
    save_deployment(world_module.deployment, deployments)
    env = {
        "MESH_RPC_URL": anvil.rpc_url,
        "MESH_CHAIN_ID": str(world_module.deployment.chain_id),
        "MESH_DEPLOYMENTS_DIR": str(deployments),
        "MESH_DATA_DIR": str(root),
        "MESH_REDIS_URL": redis_url,
    }
    settings = load_settings(
        rpc_url=anvil.rpc_url, chain_id=world_module.deployment.chain_id,
        deployments_dir=deployments, data_dir=root, redis_url=redis_url,
        blob_root=root / "blobs",
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    give_up = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/info", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError("market did not start")
        time.sleep(0.1)
    yield Market(url=url, settings_env=env | {"MESH_MARKET_URL": url})
    server.should_exit = True
    thread.join(10)


@dataclass
class JobKit:
    program: bytes
    inputs: bytes
    honest: bytes
    """The worker's honest output, computed by the sandbox with 2 threads."""


@pytest.fixture(scope="module")
def kit() -> JobKit:
    from meshcompute.execution.sandbox import run_job

    model = build_model("mlp")
    x = example_inputs("mlp", batch=8)
    program = export_program(model, x)
    inputs = save_tensors(list(x), "args")
    outcome = run_job(program, inputs, time_limit_s=120, memory_limit_mb=2048,
                      max_output_bytes=1 << 20, threads=2, allow_unsandboxed=_unsandboxed())
    assert outcome.ok, outcome.reason
    return JobKit(program, inputs, outcome.output)


def _unsandboxed() -> bool:
    from meshcompute.execution.sandbox import sandbox_available

    return not sandbox_available()


# ---------------------------------------------------------------------- helpers
def client_for(market: Market, actor: MeshActor) -> MarketClient:
    return MarketClient(market.url, actor.account, actor.deployment.chain_id)


def post_and_commit(world: World, market: Market, kit: JobKit, output: bytes, *,
                    upload_output: bool = True, spec: JobSpec | None = None,
                    worker: MeshActor | None = None) -> int:
    """A client posts a job (audit rate 100%); a worker takes it and commits ``output``."""
    client, worker = world.clients[0], worker or world.workers[0]
    with client_for(market, client) as c:
        if spec is None:
            spec = JobSpec(program=c.put_blob(kit.program), inputs=c.put_blob(kit.inputs))
            spec_sha = c.put_spec(spec)
        else:
            spec_sha = c.put_blob(spec.canonical_bytes())
    (job_id,) = world.post(client, spec_hash=bytes.fromhex(spec_sha), audit_bps=AUDIT_ALL)
    if upload_output:
        with client_for(market, worker) as w:
            w.put_blob(output)
    world.assign(worker, [job_id], audit_bps=AUDIT_ALL)
    worker.commit_results([job_id], [bytes.fromhex(sha256_hex(output))])
    world.chain.mine(2)  # the draw block exists
    return job_id


def uploaded_spec(market: Market, kit: JobKit, client: MeshActor, worker: MeshActor) -> str:
    """The kit's job spec uploaded by ``client`` (its sha256), with the honest output uploaded
    by ``worker``."""
    with client_for(market, client) as c:
        spec_sha = c.put_spec(JobSpec(program=c.put_blob(kit.program),
                                      inputs=c.put_blob(kit.inputs)))
    with client_for(market, worker) as w:
        w.put_blob(kit.honest)
    return spec_sha


def opened(world) -> None:
    """Mine the block that seeds the draw of a verdict a transaction just opened (an appeal, a
    dispute, an overturn, a void's proposal, an escalation), and one to read it from."""
    world.chain.mine(2)


def fail_wrongly(market: Market, kit: JobKit, faulty: MeshActor, job_id: int,
                 factor: float = -1.0) -> bytes:
    """A faulty verifier fails an honest job, with evidence naming a junk "recomputation" (the
    honest output times ``factor``, uploaded with its claim document); returns the junk."""
    junk = scaled(kit.honest, factor)
    policy = JobSpec(program="0" * 64, inputs="0" * 64).tolerance
    hashes = [sha256_hex(kit.honest), sha256_hex(junk)]
    with client_for(market, faulty) as c:
        c.put_blob(junk)
        c.put_blob(claim_document(hashes, policy))
    faulty.resolve_audit(job_id, False, evidence_hash(hashes, policy))
    return junk


class CountingRecomputer(Recomputer):
    calls = 0

    def __call__(self, spec, program, inputs, *, client=None):  # type: ignore[override]
        type(self).calls += 1
        return super().__call__(spec, program, inputs, client=client)


def make_service(world: World, market: Market, verifier: MeshActor, journal_dir: Path,
                 ) -> tuple[VerifierService, MarketClient]:
    client = client_for(market, verifier)
    journal = Journal(journal_dir / f"{verifier.address}.json")
    auditor = Auditor(
        client, CountingRecomputer(threads=1, allow_unsandboxed=_unsandboxed()),
        compare_outputs, evidence_hash, journal, verifier=verifier.address,
        chain_id=world.deployment.chain_id, job_market=world.deployment.address("JobMarket"),
    )
    service = VerifierService(verifier, auditor, journal,
                              ServiceConfig(poll_interval_s=0.1))
    return service, client


def poll_all(services: list[VerifierService]) -> tuple[list[tuple[int, str, bool]], set[int]]:
    """One poll of each service (the world's two verifiers: the draw assigns each verdict to
    one of them): every verdict posted, and the jobs some service is waiting on."""
    posted: list[tuple[int, str, bool]] = []
    waiting: set[int] = set()
    for service in services:
        report = service.poll_once()
        posted += report.posted
        waiting |= set(report.waiting)
    return posted, waiting


def scaled(output: bytes, factor: float) -> bytes:
    return save_tensors([t * factor for t in load_tensors(output, "out")], "out")


# ---------------------------------------------------------------------- tests
def test_seat_check_refuses_an_account_without_a_verifier_seat(world: World) -> None:
    from meshcompute.errors import AuthError

    require_verifier_seat(world.verifiers[0])
    with pytest.raises(AuthError, match="holds no seat in the verifier registry"):
        require_verifier_seat(world.outsider)


def test_a_verifier_that_cannot_back_its_pass_voids_the_audit_instead_of_staying_silent(
        world, market, kit, tmp_path) -> None:
    """A client can post a job whose pass bond (ten rewards) exceeds the assigned verifier's
    free stake: silence would burn the verifier's seat deposit, so it proposes a void instead
    (its deposit untouched). A lone void decides nothing: the second seat, which can back its
    pass, audits the job and its pass becomes the verdict."""
    job_id = post_and_commit(world, market, kit, kit.honest)
    verifier = world.verifier_for(job_id)
    record = world.job(job_id)
    free = world.admin.free_stake(verifier.address)
    # can back a failure (one reward) or a void proposal (a reward and the fee), not a pass
    verifier.unstake(free - record.reward - record.audit_fee)
    deposit = world.admin.verifier_seat(verifier.address).deposit
    service, _client = make_service(world, market, verifier, tmp_path)
    service.poll_once()
    names = [e.name for e in world.admin.job_events([job_id])]
    assert "VoidProposed" in names and "AuditResolved" not in names
    assert world.job(job_id).state == JobState.VOID_PROPOSED
    assert world.admin.verifier_seat(verifier.address).deposit == deposit
    assert service.journal.task(job_id, "audit")["status"] == POSTED
    second = world.other_verifier(verifier)
    assert world.verifier_for(job_id) == second
    other_service, _ = make_service(world, market, second, tmp_path / "second")
    report = other_service.poll_once()
    assert [(j, kind, verdict) for j, kind, verdict in report.posted] == [(job_id, "confirm", True)]
    judged = world.job(job_id)
    assert (judged.state, judged.auditor) == (JobState.AUDIT_PASSED, second.address)
    assert world.admin.worker_record(record.worker).slashed == 0


def test_honest_job_drawn_for_audit_passes_and_pays(world, market, kit, tmp_path) -> None:
    worker = world.workers[0]
    job_id = post_and_commit(world, market, kit, kit.honest)
    verifier = world.verifier_for(job_id)
    record = world.job(job_id)
    worker_before = world.admin.account_of(worker.address).withdrawable
    verifier_before = world.admin.account_of(verifier.address).withdrawable
    passed_before = world.admin.worker_record(worker.address).audits_passed

    service, client = make_service(world, market, verifier, tmp_path)
    report = service.poll_once()
    assert report.posted == [(job_id, "audit", True)], report

    # the pass holds the verifier's bond while the client may dispute it; then it stands
    assert world.job(job_id).state == JobState.AUDIT_PASSED
    world.advance(world.deployment.params.appeal_window_s + 1)
    world.admin.finalize(job_id)
    assert world.job(job_id).state == JobState.FINALIZED
    pay, _fee = split_reward(record.reward, world.deployment.params.fee_bps)
    assert world.admin.account_of(worker.address).withdrawable - worker_before == pay
    assert world.admin.account_of(verifier.address).withdrawable - verifier_before == \
        record.audit_fee
    assert world.admin.worker_record(worker.address).audits_passed == passed_before + 1
    assert world.admin.stake_of(worker.address).locked == 0
    assert world.admin.free_stake(worker.address) == STAKE

    # the evidence on chain names a blob: the compared outputs, worker's first
    task = service.journal.task(job_id, "audit")
    assert task["status"] == POSTED
    onchain = world.admin.job_events([job_id])
    resolved = next(e for e in onchain if e.name == "AuditResolved")
    claim = client.get_blob(bytes(resolved.args["evidenceHash"]).hex())
    assert claim == claim_document([sha256_hex(kit.honest), task["own_output_sha256"]],
                                   JobSpec(program="0" * 64, inputs="0" * 64).tolerance)

    # restart: a new service on the same journal does nothing more
    again, _ = make_service(world, market, verifier, tmp_path)
    calls = CountingRecomputer.calls
    assert again.poll_once().posted == []
    assert CountingRecomputer.calls == calls
    client.close()


def test_wrong_output_fails_then_slashes_and_compensates(world, market, kit, tmp_path) -> None:
    worker, client = world.workers[0], world.clients[0]
    job_id = post_and_commit(world, market, kit, scaled(kit.honest, 1.01))
    verifier = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = world.admin.account_of(client.address).withdrawable
    verifier_before = world.admin.account_of(verifier.address).withdrawable
    slashed_before = world.admin.worker_record(worker.address).slashed

    service, market_client = make_service(world, market, verifier, tmp_path)
    assert service.poll_once().posted == [(job_id, "audit", False)]
    assert world.job(job_id).state == JobState.AUDIT_FAILED
    # the fee is held and the reward locked as the verifier's bond until the failure stands
    assert world.admin.account_of(verifier.address).withdrawable == verifier_before
    assert world.admin.stake_of(verifier.address).locked == record.reward

    world.advance(TEST_PARAMS.appeal_window_s + 1)  # no appeal: the failed audit stands
    world.admin.finalize(job_id)
    assert world.job(job_id).state == JobState.SLASHED
    assert world.admin.account_of(verifier.address).withdrawable - verifier_before == \
        record.audit_fee
    assert world.admin.stake_of(verifier.address).locked == 0
    compensation, _rest = slash_split(record.collateral, record.audit_fee)
    assert world.admin.account_of(client.address).withdrawable - client_before == \
        record.reward + compensation
    assert world.admin.worker_record(worker.address).slashed == slashed_before + 1
    position = world.admin.stake_of(worker.address)
    assert position.locked == 0
    assert world.admin.free_stake(worker.address) == STAKE - record.collateral
    market_client.close()


def test_appeal_of_a_wrongly_failed_honest_worker_wins_by_majority(
    world, market, kit, tmp_path
) -> None:
    worker = world.workers[0]
    job_id = post_and_commit(world, market, kit, kit.honest)
    faulty = world.verifier_for(job_id)  # the draw gave it the audit
    honest_verifier = world.other_verifier(faulty)
    record = world.job(job_id)
    junk = fail_wrongly(market, kit, faulty, job_id)
    worker.appeal(job_id)
    assert world.job(job_id).state == JobState.APPEALED
    worker_before = world.admin.account_of(worker.address).withdrawable

    # the first auditor may not judge the appeal: its service skips it
    first, c1 = make_service(world, market, faulty, tmp_path / "faulty")
    assert first.poll_once().posted == []
    assert first.journal.status(job_id, "appeal") == SKIPPED

    # the draw assigns the appeal to the other verifier, which judges it; the audit was not
    # its to post
    assert world.verifier_for(job_id).address == honest_verifier.address
    service, c2 = make_service(world, market, honest_verifier, tmp_path / "honest")
    report = service.poll_once()
    assert report.posted == [(job_id, "appeal", True)], report
    audit_task = service.journal.task(job_id, "audit")
    assert audit_task is None or audit_task["status"] != POSTED
    task = service.journal.task(job_id, "appeal")
    assert task["output_hashes"] == [sha256_hex(kit.honest), sha256_hex(junk),
                                     task["own_output_sha256"]]

    assert world.job(job_id).state == JobState.FINALIZED
    pay, _ = split_reward(record.reward, world.deployment.params.fee_bps)
    # overturned: the faulty verifier's bond (the reward) goes to the worker it accused
    assert world.admin.account_of(worker.address).withdrawable - worker_before == \
        pay + record.reward
    assert world.admin.stake_of(faulty.address).slashed == record.reward
    assert world.admin.account_of(faulty.address).withdrawable == 0  # no fee for it
    assert world.admin.account_of(honest_verifier.address).withdrawable == record.audit_fee
    assert world.admin.stake_of(worker.address).locked == 0
    assert world.admin.free_stake(worker.address) == STAKE
    c1.close()
    c2.close()


def wrong_failure_appealed_with_three_seats(world, market, kit) -> tuple[dict, int, MeshActor]:
    """A third seat joins (the last worker's account, which works no job here), an honest job
    is failed wrongly by the seat the draw assigns and its worker appeals: (the seats by
    address, the job, the faulty seat)."""
    third_seat = world.workers[2]
    third_seat.join_verifiers(world.deployment.params.verifier_deposit)
    by_address = {v.address: v for v in (*world.verifiers, third_seat)}
    job_id = post_and_commit(world, market, kit, kit.honest)
    faulty = by_address[world.admin.assigned_verifier(job_id)]
    fail_wrongly(market, kit, faulty, job_id)
    world.workers[0].appeal(job_id)
    opened(world)
    return by_address, job_id, faulty


def test_with_a_third_seat_the_overturn_is_contested_and_the_third_verifier_decides(
    world, market, kit, tmp_path
) -> None:
    """Open admission: the appeal verdict that overturns a wrong failure is not final when a
    third seat exists. The appeal seat's service posts its overturn (contested), the third
    seat's service judges the contest (a task of its own) and the worker is paid."""
    by_address, job_id, faulty = wrong_failure_appealed_with_three_seats(world, market, kit)
    worker = world.workers[0]
    record = world.job(job_id)
    worker_before = world.admin.account_of(worker.address).withdrawable

    appeal_seat = by_address[world.admin.assigned_verifier(job_id)]
    service, c1 = make_service(world, market, appeal_seat, tmp_path / "appeal")
    assert service.poll_once().posted == [(job_id, "appeal", True)]
    assert world.job(job_id).state == JobState.APPEAL_CONTESTED
    opened(world)
    contest_seat = by_address[world.admin.assigned_verifier(job_id)]
    assert contest_seat.address not in (faulty.address, appeal_seat.address)
    assert service.poll_once().posted == []  # the appeal seat does not judge its own overturn
    judge, c2 = make_service(world, market, contest_seat, tmp_path / "contest")
    report = judge.poll_once()
    assert report.posted == [(job_id, "contest", True)], report
    assert judge.journal.status(job_id, "contest") == POSTED

    assert world.job(job_id).state == JobState.FINALIZED
    pay, _ = split_reward(record.reward, world.deployment.params.fee_bps)
    contest_fee = min(record.audit_fee, record.reward)
    assert world.admin.account_of(worker.address).withdrawable - worker_before == \
        pay + record.reward - contest_fee
    assert world.admin.account_of(contest_seat.address).withdrawable == contest_fee
    assert world.admin.account_of(appeal_seat.address).withdrawable == record.audit_fee
    assert world.admin.stake_of(faulty.address).slashed == record.reward
    c1.close()
    c2.close()


def test_a_wrong_failure_upheld_unread_is_escalated_and_the_third_verifier_voids_it(
    world, market, kit, tmp_path
) -> None:
    """Two seats against an honest worker: the first fails it with junk evidence, the appeal
    seat upholds without recomputing. The worker escalates; the third seat's service judges
    the escalation (a task of its own) by its own recomputation alone, finds for the worker,
    and the job is void: the worker is not slashed and the lazy upholder forfeits its cover."""
    by_address, job_id, faulty = wrong_failure_appealed_with_three_seats(world, market, kit)
    worker = world.workers[0]
    record = world.job(job_id)
    lazy = by_address[world.admin.assigned_verifier(job_id)]
    lazy.resolve_appeal(job_id, False, b"\x0e" * 32)  # upheld unread
    assert world.job(job_id).state == JobState.FAILURE_UPHELD
    worker.appeal(job_id)  # the escalation (the worker node's watch sends the same call)
    opened(world)
    assert world.job(job_id).state == JobState.FAILURE_ESCALATED
    third = by_address[world.admin.assigned_verifier(job_id)]
    assert third.address not in (faulty.address, lazy.address)
    deposit = world.admin.verifier_seat(lazy.address).deposit

    service, c1 = make_service(world, market, third, tmp_path / "third")
    report = service.poll_once()
    assert report.posted == [(job_id, "escalation", True)], report
    assert service.journal.status(job_id, "escalation") == POSTED
    assert world.job(job_id).state == JobState.REFUNDED
    assert world.admin.worker_record(worker.address).slashed == 0
    assert world.admin.stake_of(worker.address).locked == 0
    cover = record.reward + record.collateral + record.reward
    assert world.admin.verifier_seat(lazy.address).deposit == deposit - cover
    assert world.admin.account_of(third.address).withdrawable == \
        min(record.audit_fee, record.reward)
    c1.close()


def test_a_lazy_pass_disputed_by_the_client_is_overturned_and_costs_its_bond(
    world, market, kit, tmp_path
) -> None:
    """A canary: the client's own worker commits junk; a lazy verifier passes it without
    recomputing (its evidence names the worker's output as its own). The client disputes the
    pass; an honest verifier recomputes and overturns it: the worker is slashed, the lazy
    verifier loses its fee and its bond (to the client), the client gets everything back."""
    worker, client = world.workers[0], world.clients[0]
    junk = scaled(kit.honest, 1.01)
    job_id = post_and_commit(world, market, kit, junk)
    world.chain.mine(2)
    lazy = world.verifier_for(job_id)
    honest_verifier = world.other_verifier(lazy)
    record = world.job(job_id)
    policy = JobSpec(program="0" * 64, inputs="0" * 64).tolerance
    hashes = [sha256_hex(junk), sha256_hex(junk)]  # "recomputed": the worker's own output
    with client_for(market, lazy) as c:
        c.put_blob(claim_document(hashes, policy))
    lazy.resolve_audit(job_id, True, evidence_hash(hashes, policy))
    client_before = world.admin.account_of(client.address).withdrawable
    client.dispute(job_id)
    assert world.job(job_id).state == JobState.DISPUTED
    opened(world)

    service, c2 = make_service(world, market, honest_verifier, tmp_path / "honest")
    report = service.poll_once()
    assert report.posted == [(job_id, "appeal", False)], report
    assert world.job(job_id).state == JobState.SLASHED
    compensation, _ = slash_split(record.collateral, record.audit_fee)
    bond = record.reward * PASS_BOND_REWARDS  # a pass's bond
    assert world.admin.account_of(client.address).withdrawable - client_before == (
        record.reward + compensation + record.audit_fee + bond)
    assert world.admin.stake_of(lazy.address).slashed == bond
    assert world.admin.account_of(lazy.address).withdrawable == 0
    assert world.admin.account_of(honest_verifier.address).withdrawable == record.audit_fee
    assert world.admin.stake_of(worker.address).slashed == record.collateral
    c2.close()


def test_canary_runner_costs_a_lazy_verifier_its_bond_and_an_honest_one_nothing(
    world, market, kit, tmp_path
) -> None:
    """Two canaries, real programs and junk outputs. The honest verifier fails the first (it
    earns the fee; nobody honest is slashed); the lazy one passes the second, the runner
    disputes it, the honest appeals verifier overturns it: the lazy verifier loses its bond."""
    from meshcompute.verifier.canary import CanaryRunner

    honest_v, lazy_v = world.verifiers
    client, worker = world.clients[1], world.workers[2]
    runner = CanaryRunner(client, worker, world.assigner, client_for(market, client),
                          client_for(market, worker),
                          CountingRecomputer(threads=1, allow_unsandboxed=_unsandboxed()))
    reward, fee = 10 * TOKEN, TOKEN
    # the draw assigns each canary's audit to one of the two: plant until each has one
    planted: dict[str, int] = {}
    lazy_jobs: list[int] = []
    for _ in range(24):
        job_id = runner.plant(kit.program, kit.inputs, reward=reward, audit_fee=fee,
                              collateral=50 * TOKEN)
        world.chain.mine(2)
        assigned = world.verifier_for(job_id).address
        planted.setdefault(assigned, job_id)
        if assigned == lazy_v.address:
            lazy_jobs.append(job_id)
        if len(planted) == 2:
            break
    first, second = planted[honest_v.address], planted[lazy_v.address]
    honest, c1 = make_service(world, market, honest_v, tmp_path / "honest")
    assert (first, "audit", False) in honest.poll_once().posted
    assert world.job(second).state == JobState.COMMITTED  # not the honest one's to judge

    lazy, c2 = make_service(world, market, lazy_v, tmp_path / "lazy")
    lazy.auditor = LazyAuditor(c2, CountingRecomputer(threads=1), compare_outputs,
                               evidence_hash, lazy.journal, verifier=lazy_v.address,
                               chain_id=world.deployment.chain_id,
                               job_market=world.deployment.address("JobMarket"))
    assert (second, "audit", True) in lazy.poll_once().posted
    assert runner.watch_once() == {job_id: "disputed" for job_id in lazy_jobs}
    opened(world)
    assert (second, "appeal", False) in honest.poll_once().posted
    assert world.job(second).state == JobState.SLASHED
    assert world.admin.stake_of(lazy_v.address).slashed == \
        reward * PASS_BOND_REWARDS * len(lazy_jobs)
    assert world.admin.stake_of(honest_v.address).slashed == 0
    assert world.admin.account_of(honest_v.address).withdrawable >= fee  # the appeal's fee
    world.advance(world.deployment.params.appeal_window_s + 1)
    world.admin.finalize(first)  # the honest failure stands
    outcomes = runner.watch_once()
    assert (outcomes[first], outcomes[second]) == ("slashed", "slashed")
    for c in (c1, c2, runner.client_market, runner.worker_market):
        c.close()


def test_a_disputed_honest_pass_is_upheld(world, market, kit, tmp_path) -> None:
    """A client that disputes a correct pass loses its dispute bond to the appeal verifier;
    the worker and the passing verifier are paid."""
    worker, client = world.workers[0], world.clients[0]
    job_id = post_and_commit(world, market, kit, kit.honest)
    first = world.verifier_for(job_id)
    second = world.other_verifier(first)
    auditor, c1 = make_service(world, market, first, tmp_path / "first")
    assert auditor.poll_once().posted == [(job_id, "audit", True)]
    record = world.job(job_id)
    client.dispute(job_id)
    opened(world)
    service, c2 = make_service(world, market, second, tmp_path / "second")
    assert service.poll_once().posted == [(job_id, "appeal", True)]
    assert world.job(job_id).state == JobState.FINALIZED
    pay, _ = split_reward(record.reward, world.deployment.params.fee_bps)
    assert world.admin.account_of(worker.address).withdrawable >= pay
    assert world.admin.account_of(first.address).withdrawable == record.audit_fee
    assert world.admin.account_of(second.address).withdrawable == record.audit_fee  # the bond
    assert world.admin.stake_of(first.address).locked == 0
    c1.close()
    c2.close()


def test_only_the_verifier_the_draw_assigns_may_judge_and_silence_escalates(
    world, market, kit, tmp_path
) -> None:
    """The draw assigns the audit to one verifier: the other's service leaves it alone (a
    verdict it posted would be refused on chain: ``NotAssignedVerifier``) through the first
    half of the audit window. The assigned one stays silent; then the other takes the audit
    over (only after the whole window would the job be void)."""
    job_id = post_and_commit(world, market, kit, scaled(kit.honest, 1.01))
    world.chain.mine(2)
    silent = world.verifier_for(job_id)
    other = world.other_verifier(silent)
    with reverts("NotAssignedVerifier", NotPermitted, caller=other.address,
                 assigned=silent.address):
        other.resolve_audit(job_id, False, b"\x11" * 32)
    backup, c = make_service(world, market, other, tmp_path)
    assert backup.poll_once().posted == []
    assert backup.journal.status(job_id, "audit") != SKIPPED  # it may still escalate to us
    assert world.job(job_id).state == JobState.COMMITTED
    # until it may escalate, the backup does not read the job again on each poll
    read: list[int] = []
    assigned = backup.actor.assigned_verifier
    backup.actor.assigned_verifier = lambda j, *a, **k: read.append(j) or assigned(j, *a, **k)
    world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s // 4)
    report = backup.poll_once()
    assert report.posted == [] and job_id in report.waiting and read == [], (report, read)
    world.advance(TEST_PARAMS.audit_window_s // 2 - TEST_PARAMS.audit_window_s // 4 + 1)
    assert world.verifier_for(job_id).address == other.address
    with reverts("NotAssignedVerifier", NotPermitted, caller=silent.address):
        silent.resolve_audit(job_id, True, b"\x11" * 32)  # too late for the silent one
    report = backup.poll_once()
    assert report.posted == [(job_id, "audit", False)], report
    assert read == [job_id]  # read again once it could be ours
    record = world.job(job_id)
    assert (record.state, record.auditor) == (JobState.AUDIT_FAILED, other.address)
    c.close()


def test_missing_blobs_fair_handling_and_one_bad_job_does_not_stop_others(
    world, market, kit, tmp_path
) -> None:
    ghost_program = JobSpec(program=sha256_hex(b"program nobody uploaded"),
                            inputs=sha256_hex(b"inputs nobody uploaded"))
    # 1: program missing, worker output present -> never failed
    present = post_and_commit(world, market, kit, scaled(kit.honest, 3.0), spec=ghost_program)
    # 2: program missing and worker output never uploaded -> failed as the window closes
    absent = post_and_commit(world, market, kit, scaled(kit.honest, 5.0), spec=ghost_program,
                             upload_output=False, worker=world.workers[1])
    pairs = [make_service(world, market, v, tmp_path / v.address) for v in world.verifiers]
    services = [service for service, _ in pairs]
    posted, waiting = poll_all(services)
    assert posted == [] and waiting == {present, absent}

    # near the end of the audit window (inside the final margin)
    world.advance(TEST_PARAMS.challenge_window_s + TEST_PARAMS.audit_window_s - 30)
    posted, _ = poll_all(services)
    assert posted == [(absent, "audit", False)], posted
    assert world.job(present).state == JobState.COMMITTED  # the worker is not blamed
    assert world.job(absent).state == JobState.AUDIT_FAILED

    # after the window the unverifiable job is void (never paid: silence never pays; an
    # operator that withholds the program from the verifier gets nothing paid), and the
    # service lets it go
    world.advance(60)
    world.admin.finalize(present)  # records the draw (AuditDrawn) ...
    world.admin.finalize(present)  # ... and, no verdict having come, voids the job
    assert world.job(present).state == JobState.REFUNDED
    poll_all(services)
    for service, c in pairs:
        assert service.journal.status(present, "audit") == SKIPPED
        c.close()


def test_only_jobs_the_chain_draws_are_audited(world, market, kit, tmp_path) -> None:
    """The service takes the draw from the seed block's hash for jobs whose JobCommitted it
    saw: the jobs it audits are exactly those the contract says were drawn."""
    client, worker = world.clients[0], world.workers[0]
    rates = [0, 5_000, 5_000, 5_000, 10_000]
    spec_sha = uploaded_spec(market, kit, client, worker)
    jobs = []

    def commit(rate: int) -> None:
        (job_id,) = world.post(client, spec_hash=bytes.fromhex(spec_sha), audit_bps=rate)
        world.assign(worker, [job_id], audit_bps=rate)
        worker.commit_results([job_id], [bytes.fromhex(sha256_hex(kit.honest))])
        jobs.append(job_id)

    for rate in rates[:-1]:
        commit(rate)
    world.chain.mine(2)  # every seed block exists, and the draw reads it from the next one
    assert all(world.admin.audit_status(j, world.job(j))[0] for j in jobs)
    drawn = {j for j in jobs if world.admin.audit_status(j, world.job(j)) == (True, True)}
    pairs = [make_service(world, market, v, tmp_path / v.address) for v in world.verifiers]
    services = [service for service, _ in pairs]
    poll_all(services)  # the drawn jobs' audits are posted (each mines a block)
    # the last job's seed block is not mined, and nothing is left to post that would mine it
    commit(rates[-1])
    _, early = poll_all(services)
    assert jobs[-1] in early
    world.chain.mine(2)
    if world.admin.audit_status(jobs[-1], world.job(jobs[-1])) == (True, True):
        drawn.add(jobs[-1])
    poll_all(services)
    audited = {j for j in jobs for s in services
               if (s.journal.task(j, "audit") or {}).get("status") == POSTED}
    assert audited == drawn and jobs[-1] in drawn
    for service, market_client in pairs:
        assert all(service.journal.task(j, "audit") is None for j in set(jobs) - drawn)
        market_client.close()


def test_a_job_that_cannot_be_judged_is_void_on_chain(world, market, kit, tmp_path) -> None:
    """Our own two numeric setups disagree (a chaotic program, as seen by the verifiers): the
    assigned verifier proposes the job void and the second seat, finding the same, confirms it.
    The worker is neither slashed nor paid and keeps its collateral, the client gets its reward
    back, the proposer earns the audit fee, and the evidence record says why and names the
    disagreeing output."""
    worker, client = world.workers[0], world.clients[0]
    job_id = post_and_commit(world, market, kit, scaled(kit.honest, 1.01))
    verifier = world.verifier_for(job_id)
    record = world.job(job_id)
    client_before = world.admin.account_of(client.address).withdrawable
    verifier_before = world.admin.account_of(verifier.address).withdrawable
    worker_before = world.admin.account_of(worker.address).withdrawable
    slashed_before = world.admin.worker_record(worker.address).slashed
    service, market_client = make_service(world, market, verifier, tmp_path)
    other = scaled(kit.honest, 1.5)
    service.auditor.confirm = lambda spec, program, inputs: other

    report = service.poll_once()
    assert [(j, kind) for j, kind, _ in report.posted] == [(job_id, "audit")]
    assert world.job(job_id).state == JobState.VOID_PROPOSED
    opened(world)
    second = world.other_verifier(verifier)
    second_service, _ = make_service(world, market, second, tmp_path / "second")
    second_service.auditor.confirm = lambda spec, program, inputs: other
    report = second_service.poll_once()
    assert [(j, kind) for j, kind, _ in report.posted] == [(job_id, "confirm")]
    assert world.job(job_id).state == JobState.REFUNDED
    events = {e.name: e for e in world.admin.job_events([job_id])}
    assert "AuditVoided" in events and "JobSlashed" not in events and "JobPaid" not in events
    assert world.admin.account_of(client.address).withdrawable - client_before == record.reward
    assert world.admin.account_of(verifier.address).withdrawable - verifier_before == \
        record.audit_fee
    assert world.admin.account_of(worker.address).withdrawable == worker_before
    assert world.admin.worker_record(worker.address).slashed == slashed_before
    assert world.admin.stake_of(worker.address).locked == 0
    claim = EvidenceRecord.from_bytes(
        market_client.get_blob(service.journal.task(job_id, "audit")["evidence_sha256"])
    )
    assert claim.extra["void"] is True and claim.note.startswith("void:")
    market_client.close()


def test_a_canary_whose_assignment_fails_is_journaled_and_taken_back(
    world, market, kit
) -> None:
    """The job is posted, then its assignment reverts (here: a ticket signed by a key without
    the assigner role): the runner has it as ``posted`` and its next watch reclaims it, so
    no canary job is ever left open for the market to hand to a stranger."""
    from meshcompute.errors import ContractRevert
    from meshcompute.verifier.canary import CanaryRunner

    client, worker = world.clients[1], world.workers[2]
    runner = CanaryRunner(client, worker, world.outsider.account, client_for(market, client),
                          client_for(market, worker),
                          CountingRecomputer(threads=1, allow_unsandboxed=_unsandboxed()))
    with pytest.raises(ContractRevert):
        runner.plant(kit.program, kit.inputs, reward=10 * TOKEN, audit_fee=TOKEN,
                     collateral=50 * TOKEN)
    ((job_id, status),) = runner.planted.items()
    assert status == "posted" and world.job(job_id).state == JobState.POSTED
    assert runner.watch_once() == {job_id: "reclaimed"}
    assert world.job(job_id).state == JobState.REFUNDED
    # a canary worker without the free stake for one more: refused before anything is posted
    with pytest.raises(BadInput, match="less free stake"):
        runner.plant(kit.program, kit.inputs, reward=10 * TOKEN, audit_fee=TOKEN,
                     collateral=10 * STAKE)
    assert list(runner.planted) == [job_id]
    for c in (runner.client_market, runner.worker_market):
        c.close()


def test_a_verifier_far_behind_takes_the_deep_draws_in_one_batch(world, market, kit,
                                                                 tmp_path) -> None:
    """A verifier that fell behind the chain by more than the local draw's safe depth asks the
    contract for those draws: in one log query and one batch of view calls for all of them,
    not a record read per job, and still audits exactly the jobs drawn."""
    from meshcompute.core.audit_draw import SAFE_DEPTH

    client, worker = world.clients[0], world.workers[0]
    spec_sha = uploaded_spec(market, kit, client, worker)
    jobs = []
    for rate in [0, 0, 5_000, 5_000, 5_000, 10_000]:
        (job_id,) = world.post(client, spec_hash=bytes.fromhex(spec_sha), audit_bps=rate)
        world.assign(worker, [job_id], audit_bps=rate)
        worker.commit_results([job_id], [bytes.fromhex(sha256_hex(kit.honest))])
        jobs.append(job_id)
    world.chain.mine(SAFE_DEPTH + 5)  # every seed block is past the local draw's depth
    drawn = {j for j in jobs if world.admin.audit_status(j, world.job(j)) == (True, True)}
    assert jobs[-1] in drawn and jobs[0] not in drawn
    pairs = [make_service(world, market, v, tmp_path / v.address) for v in world.verifiers]
    services = [service for service, _ in pairs]
    single: list[int] = []
    for service in services:
        one = service.actor.job
        service.actor.job = lambda j, one=one: single.append(j) or one(j)
    poll_all(services)
    assert not set(single) - drawn, f"undrawn jobs read one by one: {set(single) - drawn}"
    poll_all(services)
    audited = {j for j in jobs for s in services
               if (s.journal.task(j, "audit") or {}).get("status") == POSTED}
    assert audited == drawn
    for service, market_client in pairs:
        assert all(service.journal.task(j, "audit") is None for j in set(jobs) - drawn)
        market_client.close()
