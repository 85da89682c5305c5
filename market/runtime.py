"""Everything one market process needs, built once from settings: Redis, chain, blobs, keys.

The HTTP app and the Celery tasks share this; tests build it from settings that point at their
anvil and Redis. Nothing here is kept only in memory that the market could not rebuild: the
stake cache is in Redis with a short expiry and the parsed-spec cache is keyed by content hash.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

from meshcompute.chain.connect import ChainConnection, actor_for, connect
from meshcompute.chain.contracts import MeshActor, MeshContracts
from meshcompute.chain.devchain import dev_accounts, is_dev_account
from meshcompute.core.spec import JobSpec
from meshcompute.errors import BadInput, ConfigError, NotFound
from meshcompute.market.blobs import BlobStore
from meshcompute.market.state import MarketState
from meshcompute.settings import DEV_MNEMONIC, Settings
from meshcompute.units import DEV_CHAIN_ID

if TYPE_CHECKING:
    from meshcompute.market.indexer import ChainIndexer

_SPEC_CACHE_MAX = 50_000


@dataclass(frozen=True)
class ChainStanding:
    """A worker's stake and record as read from chain (cached for ``stake_cache_s``)."""

    free_stake: int
    total_stake: int
    completed: int
    missed: int
    slashed: int
    audits_passed: int


@dataclass
class MarketRuntime:
    settings: Settings
    redis: redis.Redis
    chain: ChainConnection
    state: MarketState
    blobs: BlobStore
    assigner: LocalAccount
    _specs: dict[str, JobSpec] = field(default_factory=dict, repr=False)
    escrows: tuple[int, dict[str, int]] | None = field(default=None, repr=False)
    """(indexed block, open escrow per client) as of that block (``market.quotas``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketRuntime:
        if not settings.redis_url:
            raise ConfigError(
                "MESH_REDIS_URL: the market needs Redis; `mesh market serve|tasks` start an "
                "embedded Valkey when it is unset"
            )
        client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        chain = connect(settings)
        assigner = assigner_account(settings, chain.chain_id)
        settler_account(settings, chain.chain_id, assigner)  # refused at start, not at settle
        return cls(
            settings=settings,
            redis=client,
            chain=chain,
            state=MarketState(client),
            blobs=BlobStore(settings.blob_root, settings.max_blob_bytes),
            assigner=assigner,
        )

    # ------------------------------------------------------------------ chain
    @property
    def contracts(self) -> MeshContracts:
        return self.chain.contracts

    @property
    def chain_id(self) -> int:
        return self.chain.chain_id

    @property
    def identity(self) -> tuple[int, str]:
        """What a signed request to this market names besides its host: the chain id and the
        JobMarket's address (a request signed for another deployment is refused)."""
        return self.chain_id, self.chain.deployment.address("JobMarket")

    @cached_property
    def indexer(self) -> ChainIndexer:
        from meshcompute.market.indexer import ChainIndexer

        return ChainIndexer(self.redis, self.contracts, start_block=self.chain.deployment.block,
                            min_reward=self.settings.min_job_reward_wei)

    @cached_property
    def settler(self) -> MeshActor:
        return actor_for(self.chain, settler_account(self.settings, self.chain_id, self.assigner))

    @cached_property
    def chain_config(self) -> dict[str, int]:
        return self.contracts.config()

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.settings.heartbeat_timeout_s or 3.0 * self.settings.lease_s

    def chain_now(self) -> int:
        """The market's clock for leases: chain time, never behind the wall clock.

        A dev chain mines only on transactions (its head can be old) and tests move its time
        forward; tickets are checked against block time, so leases follow the later of both.
        """
        head = int(self.chain.w3.eth.get_block("latest")["timestamp"])
        return max(int(time.time()), head)

    def standing(self, address: str, *, fresh: bool = False) -> ChainStanding:
        """Stake and record of ``address``, cached in Redis for ``stake_cache_s`` (``fresh``
        reads the chain and refreshes the cache)."""
        key = f"{self.state.prefix}standing:{address}"
        ttl = self.settings.stake_cache_s
        if ttl > 0 and not fresh:
            cached = self.redis.get(key)
            if cached is not None:
                return ChainStanding(**json.loads(cached))
        position = self.contracts.stake_of(address)
        record = self.contracts.worker_record(address)
        standing = ChainStanding(
            free_stake=position.free,
            total_stake=position.free + position.locked,
            completed=record.completed,
            missed=record.missed,
            slashed=record.slashed,
            audits_passed=record.audits_passed,
        )
        if ttl > 0:
            self.redis.set(key, json.dumps(standing.__dict__), px=max(1, int(ttl * 1000)))
        return standing

    # ------------------------------------------------------------------ specs
    def spec(self, spec_sha256: str) -> JobSpec:
        """The parsed spec blob; NotFound when missing, BadInput when it does not parse."""
        spec = self._specs.get(spec_sha256)
        if spec is not None:
            return spec
        raw = self.blobs.read(spec_sha256)
        try:
            spec = JobSpec.from_bytes(raw)
        except BadInput as exc:
            raise BadInput(f"spec blob {spec_sha256} is not a valid job spec: {exc}") from None
        if len(self._specs) >= _SPEC_CACHE_MAX:
            self._specs.clear()
        self._specs[spec_sha256] = spec
        return spec

    def spec_or_none(self, spec_sha256: str) -> JobSpec | None:
        try:
            return self.spec(spec_sha256)
        except (NotFound, BadInput):
            return None

    def close(self) -> None:
        self.redis.close()

    def describe(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "rpc_url": self.chain.rpc_url,
            "blob_root": str(self.blobs.root),
            "assigner": self.assigner.address,
        }


def assigner_account(settings: Settings, chain_id: int) -> LocalAccount:
    """The ticket-signing key: MESH_ASSIGNER_KEY, or on the dev chain the dev account 1.

    A key of the public development mnemonic is refused on any other chain: anyone can sign
    tickets with it."""
    if settings.assigner_key is not None:
        return _account_from_setting(settings.assigner_key, "MESH_ASSIGNER_KEY", chain_id)
    if chain_id == DEV_CHAIN_ID:
        return dev_accounts(DEV_MNEMONIC)[1]
    raise ConfigError(
        f"MESH_ASSIGNER_KEY: required on chain id {chain_id} (the dev key is only used on the "
        f"dev chain {DEV_CHAIN_ID}); it must hold ASSIGNER_ROLE on the JobMarket"
    )


def settler_account(settings: Settings, chain_id: int, assigner: LocalAccount) -> LocalAccount:
    """The key that sends finalize batches: MESH_SETTLER_KEY, else the assigner's."""
    if settings.settler_key is None:
        return assigner
    return _account_from_setting(settings.settler_key, "MESH_SETTLER_KEY", chain_id)


def _account_from_setting(key: SecretStr, variable: str, chain_id: int) -> LocalAccount:
    """The account of a private-key setting; ConfigError (never showing the key) when it is
    malformed, or a development key on a chain other than the dev chain."""
    try:
        account: LocalAccount = Account.from_key(key.get_secret_value())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{variable} is not a private key ({type(exc).__name__})") from None
    if chain_id != DEV_CHAIN_ID and is_dev_key(account):
        raise ConfigError(
            f"{variable} is a key of the public development mnemonic ({account.address}); "
            f"anyone can sign with it, so it is refused on chain id {chain_id}"
        )
    return account


def is_dev_key(account: LocalAccount) -> bool:
    """Whether ``account`` is one of the well-known accounts of the dev mnemonic."""
    return is_dev_account(account.address)
