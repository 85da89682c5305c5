"""Deploy the three contracts to any chain and keep a record of where they are.

``deploy_contracts`` works on anvil, the in-process eth-tester chain and any RPC URL with a
funded key: it only needs a :class:`~meshcompute.chain.sender.TxSender`. The resulting
:class:`Deployment` (addresses, block, chain id, parameters) is written to
``<deployments_dir>/<chain_id>.json`` by :func:`save_deployment`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak
from web3 import Web3

from meshcompute.chain.artifacts import load_artifact
from meshcompute.chain.devchain import is_dev_account
from meshcompute.chain.sender import TxSender
from meshcompute.errors import ConfigError, DeploymentNotFound
from meshcompute.files import write_json_atomic
from meshcompute.units import BPS, DEV_CHAIN_ID, TOKEN

CONTRACT_NAMES = ("MeshCredit", "StakeManager", "VerifierRegistry", "JobMarket")

ASSIGNER_ROLE = keccak(text="ASSIGNER_ROLE")
PAUSER_ROLE = keccak(text="PAUSER_ROLE")
MINTER_ROLE = keccak(text="MINTER_ROLE")


@dataclass(frozen=True)
class DeployParams:
    """Protocol parameters fixed at deployment."""

    fee_bps: int = 100
    """Protocol fee on each paid reward, basis points (rounded up)."""
    min_audit_bps: int = 500
    """Floor of every job's audit probability, basis points."""
    challenge_window_s: int = 30
    """Seconds after a commit before an unaudited job can be paid."""
    audit_window_s: int = 600
    """Seconds after the challenge window for the verifier's verdict (and for an appeal's)."""
    appeal_window_s: int = 600
    """Seconds after a verdict during which the party it goes against may appeal it (the
    worker a failure, the client a pass: a dispute). A passed audit is paid when it closes."""
    audit_deterrence: bool = True
    """Raise each job's audit rate on chain, at assignment, to the deterrence rate of
    :func:`meshcompute.core.audit_rate.audit_bps` for the worker's on-chain record and free
    stake (a market's ticket can only raise it further). Off only for a development chain that
    runs no verifier, where a drawn job could only end void."""
    unbonding_delay_s: int = 3 * 24 * 3600
    """Seconds between an unstake request and its withdrawal; must exceed all windows."""
    verifier_deposit: int = 1_000 * TOKEN
    """The verifier registry's deposit per unit of weight: anyone who deposits at least this
    much is a candidate for verdicts, weighted by its deposit over this, of the jobs whose
    reward plus collateral its weight covers (its silence burns that much). Deployment pays one
    unit for each verifier it names (``--verifier``), so that appeals work from the start."""
    min_block_time_s: float = 1.0
    """The shortest time between two blocks on the target chain. A draw's seed (the hash of
    the block after a commit, or after the transaction that opened a later verdict) must stay
    readable until its verdict's window closes: ``blockhash`` sees 256 blocks, EIP-2935's
    history 8191. Deployment refuses windows longer than that at this block time
    (:func:`check_draw_coverage`)."""
    enable_faucet: bool = False
    """Turn the faucet on outside chain id 31337 (public testnets)."""
    faucet_amount: int = 10_000 * TOKEN
    faucet_cooldown_s: int = 3600

    def __post_init__(self) -> None:
        # the longest path from a commit to its last verdict (JobMarketBase's constructor):
        # audit, void confirmation, appeal, the escalation of an uphold and its verdict
        windows = self.challenge_window_s + 4 * self.audit_window_s + 2 * self.appeal_window_s
        if self.unbonding_delay_s <= windows + 1:  # a timeout settles a second after them
            raise ConfigError(
                f"unbonding_delay_s ({self.unbonding_delay_s}) must exceed the challenge "
                f"window, four audit windows and two appeal windows together, plus one second "
                f"({windows + 1})"
            )
        for name in ("fee_bps", "min_audit_bps"):
            if not 0 <= getattr(self, name) <= BPS:
                raise ConfigError(f"{name} must be within 0..10000, got {getattr(self, name)}")
        if self.verifier_deposit <= 0:
            raise ConfigError(f"verifier_deposit must be > 0, got {self.verifier_deposit}")
        if not self.min_block_time_s > 0:
            raise ConfigError(f"min_block_time_s must be > 0, got {self.min_block_time_s}")


#: EIP-2935's system contract: the hashes of the last 8191 blocks (Prague and later).
HISTORY_CONTRACT = "0x0000F90827F1C53a10cb7A02335B175320002935"
HISTORY_WINDOW = 8191
BLOCKHASH_WINDOW = 256
#: Blocks of the seed's visibility left unused, for settlement after the audit window closes.
DRAW_MARGIN_BLOCKS = 64


def draw_coverage_blocks(w3: Web3) -> int:
    """How far back the contract can read the draw's seed on this chain: 8191 blocks where the
    EIP-2935 history contract exists, 256 (``blockhash``) otherwise."""
    return HISTORY_WINDOW if len(w3.eth.get_code(HISTORY_CONTRACT)) > 0 else BLOCKHASH_WINDOW


def check_draw_coverage(params: DeployParams, coverage_blocks: int) -> None:
    """ConfigError unless every draw's seed stays readable through its verdict's window at
    the chain's fastest block rate: the audit's (seeded after the commit) through the challenge
    and audit windows, a later verdict's (seeded after the transaction that opened it: an
    appeal, at the latest as its window opens) through the appeal and audit windows, so that
    a job cannot be drawn (or assigned) differently depending on when someone acts on it."""
    span = max(params.challenge_window_s, params.appeal_window_s) + params.audit_window_s
    blocks = math.ceil(span / params.min_block_time_s)
    usable = coverage_blocks - DRAW_MARGIN_BLOCKS
    if blocks > usable:
        raise ConfigError(
            f"a draw's seed must stay readable through the longer of the challenge and appeal "
            f"windows and the audit window ({span} s): up to {blocks} blocks at one block every "
            f"{params.min_block_time_s} s, but it stays readable for {coverage_blocks} blocks "
            f"on this chain ({usable} after a margin): shorten the windows, or deploy on a "
            "chain with EIP-2935 block hash history"
        )


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain."""

    chain_id: int
    block: int
    addresses: dict[str, str]
    deployer: str
    params: DeployParams = field(default_factory=DeployParams)

    def address(self, name: str) -> str:
        return self.addresses[name]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                block=int(data["block"]),
                addresses={k: Web3.to_checksum_address(v) for k, v in data["addresses"].items()},
                deployer=Web3.to_checksum_address(data["deployer"]),
                params=DeployParams(**data.get("params", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed deployment record: {exc}") from exc


def check_roles(chain_id: int, deployer: str, assigners: Sequence[str],
                verifiers: Sequence[str]) -> None:
    """ConfigError unless a deployment to ``chain_id`` gets keys its operator chose: on any
    chain but the dev chain the deployer (the admin) and every role holder must be other than
    the public development accounts (anyone holds their keys: a dev assigner could sign any
    ticket, a dev verifier pass any junk), at least one assigner and two verifiers must be
    named (an appeal needs a verifier other than the auditor), and none twice."""
    if chain_id == DEV_CHAIN_ID:
        return
    named = [("deployer", deployer)] + [("--assigner", a) for a in assigners] + [
        ("--verifier", v) for v in verifiers]
    for role, address in named:
        if not Web3.is_address(address):
            raise ConfigError(f"{role} {address!r} is not an address")
        if is_dev_account(address):
            raise ConfigError(
                f"{role} {address} is an account of the public development mnemonic (anyone "
                f"holds its key); refused on chain id {chain_id}: use addresses you control")
    if not assigners:
        raise ConfigError(f"name the market's ticket signer with --assigner (chain id "
                          f"{chain_id}: no development default)")
    if len({v.lower() for v in verifiers}) < 2:
        raise ConfigError(f"name two verifiers with --verifier (chain id {chain_id}: an appeal "
                          "needs a verifier other than the one whose verdict it questions)")
    if len({v.lower() for v in verifiers}) != len(verifiers):
        raise ConfigError("a --verifier is named twice")


def deploy_contracts(
    sender: TxSender,
    params: DeployParams | None = None,
    *,
    assigners: tuple[str, ...] = (),
    verifiers: tuple[str, ...] = (),
    fee_recipient: str | None = None,
    seat_deposit: int | None = None,
) -> Deployment:
    """Deploy MeshCredit, StakeManager, VerifierRegistry and JobMarket with ``sender`` as
    admin, link them, grant ASSIGNER_ROLE to ``assigners``, and seat each of ``verifiers`` in
    the registry with one unit of deposit that the admin mints and pays for them (the seat and
    the deposit are theirs; anyone else takes a seat with a deposit of its own, `join`).
    ``seat_deposit`` (at least ``verifier_deposit``) pays more than one unit: the part above
    whole units is a buffer that a burn for silence takes before the seat has to leave."""
    params = params or DeployParams()
    w3 = sender.w3
    check_draw_coverage(params, draw_coverage_blocks(w3))
    admin = sender.address
    first_block = w3.eth.block_number + 1
    credit = _deploy(
        sender,
        "MeshCredit",
        admin,
        params.enable_faucet,
        params.faucet_amount,
        params.faucet_cooldown_s,
    )
    stakes = _deploy(sender, "StakeManager", credit, admin, params.unbonding_delay_s)
    config = (
        params.fee_bps,
        params.min_audit_bps,
        params.challenge_window_s,
        params.audit_window_s,
        params.appeal_window_s,
        params.audit_deterrence,
    )
    # A verifier's deposit stays bound for the unbonding delay after it leaves (> all windows).
    registry = _deploy(sender, "VerifierRegistry", credit, admin, params.verifier_deposit,
                       params.unbonding_delay_s)
    market = _deploy(sender, "JobMarket", credit, stakes, registry, admin, fee_recipient or admin,
                     config)
    stake_contract = w3.eth.contract(address=stakes, abi=load_artifact("StakeManager")["abi"])
    sender.send(stake_contract.functions.setJobMarket(market))
    registry_contract = w3.eth.contract(address=registry,
                                        abi=load_artifact("VerifierRegistry")["abi"])
    sender.send(registry_contract.functions.setJobMarket(market))
    market_contract = w3.eth.contract(address=market, abi=load_artifact("JobMarket")["abi"])
    for account in assigners:
        sender.send(market_contract.functions.grantRole(ASSIGNER_ROLE, account))
    if verifiers:
        seat = params.verifier_deposit if seat_deposit is None else int(seat_deposit)
        if seat < params.verifier_deposit:
            raise ConfigError(f"seat_deposit {seat} is below verifier_deposit "
                              f"{params.verifier_deposit}")
        credit_contract = w3.eth.contract(address=credit, abi=load_artifact("MeshCredit")["abi"])
        total = seat * len(verifiers)
        sender.send(credit_contract.functions.mint(admin, total))
        sender.send(credit_contract.functions.approve(registry, total))
        for account in verifiers:
            sender.send(registry_contract.functions.joinFor(account, seat))
    named = {credit: "MeshCredit", stakes: "StakeManager", registry: "VerifierRegistry",
             market: "JobMarket"}
    for address, name in named.items():
        sender.name_contract(address, name)
    return Deployment(
        chain_id=sender.chain_id,
        block=first_block,
        addresses={"MeshCredit": credit, "StakeManager": stakes, "VerifierRegistry": registry,
                   "JobMarket": market},
        deployer=admin,
        params=params,
    )


def _deploy(sender: TxSender, name: str, *args: Any) -> str:
    artifact = load_artifact(name)
    factory = sender.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = sender.send(factory.constructor(*args))
    return Web3.to_checksum_address(receipt["contractAddress"])


def deployment_path(deployments_dir: Path, chain_id: int) -> Path:
    return Path(deployments_dir).expanduser() / f"{chain_id}.json"


def save_deployment(deployment: Deployment, deployments_dir: Path) -> Path:
    """Write the record atomically to ``<deployments_dir>/<chain_id>.json``."""
    return write_json_atomic(deployment_path(deployments_dir, deployment.chain_id),
                             deployment.to_json(), indent=2, sort_keys=True)


def load_deployment(deployments_dir: Path, chain_id: int) -> Deployment:
    """The record for ``chain_id``; DeploymentNotFound says how to create one."""
    path = deployment_path(deployments_dir, chain_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentNotFound(
            f"no deployment for chain id {chain_id} in {path.parent} "
            "(run `mesh chain deploy` or `mesh chain up`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deployment record {path} is not valid JSON: {exc}") from exc
    return Deployment.from_json(data)
