"""A real market for worker tests: the FastAPI app under uvicorn on loopback, its rounds
(index, match, expire) driven in-process, Redis from the ``redis_url`` fixture, contracts
freshly deployed on the session anvil, and a client that uploads and posts real jobs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import torch
import uvicorn

from meshcompute.chain.contracts import JobParams, MeshActor
from meshcompute.chain.deploy import save_deployment
from meshcompute.core.spec import JobSpec
from meshcompute.execution.programs import export_program, save_tensors
from meshcompute.market import rounds
from meshcompute.market.api.app import create_app
from meshcompute.market.runtime import MarketRuntime
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.settings import Settings, load_settings
from meshcompute.units import TOKEN
from meshcompute.wire.market_client import MarketClient
from tests.contracts.world import World, build_world

#: A Redis database of its own, flushed at start, so the market state of other tests in the
#: same session (same server) does not mix in.
REDIS_DB = 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_db(url: str, db: int) -> str:
    base = url.rstrip("/")
    head, _, tail = base.rpartition("/")
    if tail.isdigit() and head.count("/") >= 2:
        base = head
    return f"{base}/{db}"


@dataclass
class MarketStack:
    world: World
    settings: Settings
    runtime: MarketRuntime
    url: str

    @property
    def chain_id(self) -> int:
        return self.world.deployment.chain_id

    def client_for(self, actor: MeshActor) -> MarketClient:
        return MarketClient(self.url, actor.account, self.chain_id, timeout=30)

    def post_job(self, program: bytes, inputs: bytes, *, client: MeshActor | None = None,
                 audit_bps: int = 0, **spec_fields: Any) -> int:
        """Upload the blobs and spec as the client, then escrow the job on chain."""
        client = client or self.world.clients[0]
        with self.client_for(client) as market:
            spec = JobSpec(program=market.put_blob(program), inputs=market.put_blob(inputs),
                           **spec_fields)
            spec_sha = market.put_spec(spec)
        params = JobParams(spec_hash=bytes.fromhex(spec_sha), reward=100 * TOKEN,
                           audit_fee=10 * TOKEN, collateral=50 * TOKEN,
                           deadline=self.world.now() + 3600, audit_bps=audit_bps)
        return client.post_job(params)

    def lease_of(self, job_id: int) -> Any:
        return self.runtime.state.lease(job_id)


def mlp_job(batch: int = 8, seed: int = 0) -> tuple[bytes, bytes, torch.Tensor]:
    """A real exported MLP, its inputs, and the output torch computes for them locally."""
    model = build_model("mlp", seed)
    (x,) = example_inputs("mlp", batch, seed)
    program = export_program(model, [x])
    with torch.no_grad():
        expected = model(x)
    return program, save_tensors([x]), expected


@contextmanager
def market_stack(anvil: Any, redis_url: str, root: Path, *, lease_s: int = 60
                 ) -> Iterator[MarketStack]:
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    deployments = root / "deployments"
    save_deployment(world.deployment, deployments)
    url = _with_db(redis_url, REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    settings = load_settings(
        rpc_url=anvil.rpc_url, data_dir=root / "market", deployments_dir=deployments,
        redis_url=url, blob_root=root / "blobs", lease_s=lease_s, stake_cache_s=0.0,
        offer_ttl_s=5.0,
        # workers stopped by earlier tests stay registered; stop offering them work soon
        # (a live node touches the market on every poll for work)
        heartbeat_timeout_s=5.0,
    )
    runtime = MarketRuntime.from_settings(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime=runtime),
                                           host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True, name="market-api")
    serving.start()
    stop_rounds = threading.Event()
    driver = threading.Thread(target=_drive_rounds, args=(runtime, stop_rounds), daemon=True,
                              name="market-rounds")
    stack = MarketStack(world, settings, runtime, f"http://127.0.0.1:{port}")
    try:
        _wait_healthy(stack.url)
        driver.start()
        yield stack
    finally:
        stop_rounds.set()
        if driver.is_alive():
            driver.join(10)
        server.should_exit = True
        serving.join(10)
        runtime.close()
        anvil.revert(snapshot)
        world.resync()


def _drive_rounds(runtime: MarketRuntime, stop: threading.Event) -> None:
    """What the market's Celery beat does, in-process: index, match, expire."""
    while not stop.is_set():
        for round_ in (rounds.index_round, rounds.match_round, rounds.expire_round):
            try:
                round_(runtime)
            except Exception as exc:  # noqa: BLE001 - keep driving; the test sees the effect
                print(f"market round {round_.__name__} failed: {exc!r}")
        stop.wait(0.2)


def _wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    give_up = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < give_up:
        try:
            response = httpx.get(f"{url}/health", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"market at {url} not healthy: {last}")
