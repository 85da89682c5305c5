"""Connect to the chain this node is configured for, with its deployment loaded.

    conn = connect()                      # MESH_RPC_URL, else the chain `mesh chain up` runs
    me = actor_for(conn, unlock())        # writes as the wallet's account

Where the RPC URL comes from, first match wins: the ``rpc_url`` argument, the ``rpc_url``
setting (``MESH_RPC_URL``), the local chain record ``<data_dir>/chain.json`` that
``mesh chain up`` writes while it runs. Each failure is one line that says what to do next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from meshcompute.chain.contracts import MeshActor, MeshContracts, mesh_sender
from meshcompute.chain.deploy import Deployment, load_deployment
from meshcompute.chain.devchain import is_dev_account
from meshcompute.errors import ChainUnavailable, ConfigError, DeploymentNotFound
from meshcompute.files import write_json_atomic
from meshcompute.settings import Settings, get_settings
from meshcompute.units import DEV_CHAIN_ID

CHAIN_RECORD_NAME = "chain.json"
_NO_CHAIN_HINT = "start one with `mesh chain up` or set MESH_RPC_URL"


@dataclass
class ChainConnection:
    """A Web3 connected to a node, the deployment found for its chain id, and read bindings."""

    w3: Web3
    deployment: Deployment
    contracts: MeshContracts
    rpc_url: str

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id


@dataclass(frozen=True)
class LocalChainRecord:
    """What ``mesh chain up`` leaves in ``<data_dir>/chain.json`` while its chain runs."""

    rpc_url: str
    chain_id: int
    deployment_path: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rpc_url": self.rpc_url,
            "chain_id": self.chain_id,
            "deployment_path": self.deployment_path,
            "pid": self.pid,
        }


def chain_record_path(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / CHAIN_RECORD_NAME


def write_chain_record(data_dir: Path, record: LocalChainRecord) -> Path:
    """Write the local chain record atomically; returns its path."""
    return write_json_atomic(chain_record_path(data_dir), record.to_json(), indent=2)


def read_chain_record(data_dir: Path) -> LocalChainRecord | None:
    """The local chain record, or None when no `mesh chain up` left one."""
    path = chain_record_path(data_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LocalChainRecord(
            rpc_url=str(data["rpc_url"]),
            chain_id=int(data["chain_id"]),
            deployment_path=str(data.get("deployment_path", "")),
            pid=int(data.get("pid", 0)),
        )
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"local chain record {path} is malformed ({exc}); delete it") from exc


def remove_chain_record(data_dir: Path, *, pid: int | None = None) -> None:
    """Remove the record (only if it still belongs to process ``pid`` when given)."""
    path = chain_record_path(data_dir)
    if pid is not None:
        try:
            current = read_chain_record(data_dir)
        except ConfigError:
            current = None
        if current is not None and current.pid != pid:
            return
    path.unlink(missing_ok=True)


def connect(settings: Settings | None = None, *, rpc_url: str | None = None) -> ChainConnection:
    """Connect to the configured chain and load its deployment record.

    Raises :class:`ConfigError` when no chain is configured or the chain id differs from the
    ``chain_id`` setting, :class:`ChainUnavailable` when the node does not answer, and
    :class:`DeploymentNotFound` when this chain id has no deployment record (or the record
    points at addresses with no code).
    """
    settings = settings or get_settings()
    record: LocalChainRecord | None = None
    url = rpc_url or settings.rpc_url
    if not url:
        record = read_chain_record(settings.data_dir)
        if record is None:
            raise ConfigError(f"no chain configured: {_NO_CHAIN_HINT}")
        url = record.rpc_url
    chain_id = _probe_chain_id(url, from_record=record is not None)
    if settings.chain_id is not None and chain_id != settings.chain_id:
        raise ConfigError(
            f"the node at {url} is chain id {chain_id} but MESH_CHAIN_ID is "
            f"{settings.chain_id}: point MESH_RPC_URL at the right chain or unset MESH_CHAIN_ID"
        )
    w3 = node_web3(url)
    deployment = _load_deployment(settings, chain_id, url, record)
    if not w3.eth.get_code(deployment.address("JobMarket")):  # type: ignore[arg-type]
        raise DeploymentNotFound(
            f"the deployment record for chain id {chain_id} names a JobMarket at "
            f"{deployment.address('JobMarket')} but the node at {url} has no code there: "
            f"run `mesh chain deploy --rpc-url {url}`"
        )
    return ChainConnection(
        w3=w3, deployment=deployment, contracts=MeshContracts(w3, deployment), rpc_url=url
    )


def node_web3(url: str, *, timeout_s: float = 30) -> Web3:
    """A Web3 on the node at ``url`` that asks the node's chain id once, not before every
    call and transaction (web3's validation step reads it each time: one extra round trip per
    contract read, which doubled the market's cost of looking up a stranger's stake). A node
    does not change chains under a running process."""
    return Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s},
                             cache_allowed_requests=True,
                             cacheable_requests={RPCEndpoint("eth_chainId")}))


def actor_for(conn: ChainConnection, account: LocalAccount) -> MeshActor:
    """Write access to the deployment as ``account`` (its own nonce-managed sender).

    ConfigError for a key of the public development mnemonic on any chain but the dev chain:
    anyone can sign with it (take its stake, its earnings, its verdicts)."""
    chain_id = conn.deployment.chain_id
    if chain_id != DEV_CHAIN_ID and is_dev_account(account.address):
        raise ConfigError(
            f"{account.address} is a key of the public development mnemonic (anvil's test "
            f"accounts); anyone can sign with it, so it is refused on chain id {chain_id}: "
            "create your own wallet (`mesh wallet new`) or import your own key"
        )
    return MeshActor(conn.w3, conn.deployment, account, mesh_sender(conn.w3, account))


def _probe_chain_id(url: str, *, from_record: bool) -> int:
    """``eth_chainId`` once, without web3's retries, so a dead URL fails fast."""
    provider = HTTPProvider(url, request_kwargs={"timeout": 5}, exception_retry_configuration=None)
    try:
        response = provider.make_request(RPCEndpoint("eth_chainId"), [])
        return int(response["result"], 16)
    except Exception as exc:  # any failure means the node is not usable
        if from_record:
            hint = "the `mesh chain up` that wrote it has stopped? " + _NO_CHAIN_HINT
            where = f"{url} (from the local chain record)"
        else:
            hint = "check the URL (MESH_RPC_URL), or start a local chain with `mesh chain up`"
            where = url
        raise ChainUnavailable(f"no chain reachable at {where}: {hint}") from exc


def _load_deployment(
    settings: Settings, chain_id: int, url: str, record: LocalChainRecord | None
) -> Deployment:
    if record is not None and record.deployment_path and record.chain_id == chain_id:
        path = Path(record.deployment_path)
        if path.exists():
            return Deployment.from_json(json.loads(path.read_text(encoding="utf-8")))
    try:
        return load_deployment(settings.deployments_dir, chain_id)
    except DeploymentNotFound:
        raise DeploymentNotFound(
            f"no deployment for chain id {chain_id} in {settings.deployments_dir}: "
            f"run `mesh chain deploy --rpc-url {url}` (or set MESH_DEPLOYMENTS_DIR)"
        ) from None
