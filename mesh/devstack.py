"""A whole marketplace on one machine, as real OS processes on loopback.

:class:`DevStack` starts anvil (contracts deployed, accounts funded and staked), an embedded
Valkey (or uses ``REDIS_URL``), the market API (uvicorn), the market's Celery worker with beat,
a verifier and N workers (some of them test-only cheaters), each a separate ``mesh`` process
with its own data directory and keystore. The demo, the end-to-end benchmark and the
chaos tests drive it; :meth:`DevStack.kill` and :meth:`DevStack.restart` are what a chaos test
uses. Every process it started is stopped on exit, on an exception and on Ctrl-C.

Dev keys come from the well-known dev mnemonic and only ever exist on the local chain; they
travel to child processes through their environment or a keystore, never through logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Self

import httpx
from eth_account.signers.local import LocalAccount

from meshcompute.chain.contracts import MeshActor, mesh_sender
from meshcompute.chain.deploy import (
    Deployment,
    DeployParams,
    deploy_contracts,
    save_deployment,
)
from meshcompute.chain.local import LocalChain
from meshcompute.errors import ServiceUnavailable
from meshcompute.market.embedded_redis import start_valkey
from meshcompute.tether import tether
from meshcompute.units import TOKEN

#: Dev-mnemonic account roles (index into LocalChain.accounts).
ADMIN, ASSIGNER, VERIFIER, SECOND_VERIFIER, CLIENT = 0, 1, 2, 3, 4
FIRST_WORKER = 5
#: The canary service's client and worker (``StackConfig.canary``): the last two accounts.
CANARY_CLIENT, CANARY_WORKER = 8, 9
WALLET_PASSWORD = "dev-stack-only"

#: Short windows so a demo settles in seconds (the production defaults are minutes).
FAST_PARAMS = DeployParams(
    challenge_window_s=3, audit_window_s=60, appeal_window_s=4, unbonding_delay_s=3600,
)


@dataclass
class StackConfig:
    workers: int = 3
    cheaters: int = 1
    """The last ``cheaters`` workers run the test-only adversary."""
    cheat_fraction: float = 1.0
    verifier: bool = True
    """Run the two verifiers (the draw assigns each verdict to one of them). Without them the
    chain is deployed with ``audit_deterrence=False`` and the market signs no deterrence audit
    rates (MESH_AUDIT_DETERRENCE=false)."""
    lazy_second_verifier: bool = False
    """TEST-ONLY: the second verifier passes its audits without recomputing
    (``MESH_TEST_LAZY_VERIFIER``)."""
    canary: dict[str, str] | None = None
    """Run ``mesh canary start`` with these options (``{"every": "5", "total": "4"}``): the
    operator's canary service, as client the dev account 8 and as worker the dev account 9
    (funded and staked here; at most 3 workers then)."""
    worker_slots: int = 1
    worker_threads: int = 1
    stake: int = 5_000 * TOKEN
    client_funds: int = 100_000 * TOKEN
    params: DeployParams = field(default_factory=lambda: replace(FAST_PARAMS))
    lease_s: int = 30
    allow_unsandboxed: bool | None = None
    """None: use the sandbox when bubblewrap works here, else run unsandboxed with a warning
    (the demo runs only its own model); True/False force it."""
    root: Path | None = None
    """Where the processes keep their data and logs; a temp dir (removed on stop) if None."""
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_options: dict[int, list[str]] = field(default_factory=dict)
    """More ``mesh worker start`` options by worker index (``{0: ["--when", "idle"]}``)."""
    paused_workers: frozenset[int] = frozenset()
    """Workers that start paused (``mesh worker pause``: their pause file exists)."""


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    killed: bool = False
    """Stopped on purpose (a chaos test's kill); check_alive does not complain about it."""
    finite: bool = False
    """Ends by itself when its work is done: check_alive takes exit status 0 as fine."""
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self.killed = False
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        tether(self.process.pid, group=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 8.0) -> None:
        self.request_stop()
        self.finish_stop(time.monotonic() + timeout_s)

    def request_stop(self) -> None:
        """SIGTERM, without waiting (:meth:`finish_stop` waits): services stopped together
        take their shutdowns side by side."""
        self.signal(signal.SIGTERM)

    def finish_stop(self, deadline: float) -> None:
        """Wait for the process to exit after :meth:`request_stop`, SIGKILL it once
        ``deadline`` (monotonic) has passed."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class DevStack:
    """Start with ``with DevStack(StackConfig()) as stack:``; see the module docstring."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._own_root = self.config.root is None
        self.root = Path(self.config.root or tempfile.mkdtemp(prefix="mesh-stack-"))
        # Mixed mining: a block per transaction (fast) and one every second even when idle,
        # as a live chain does; the audit draw needs the block after a commit to exist.
        self.chain = LocalChain(block_time_s=1, extra_args=("--mixed-mining",))
        self.valkey: Any = None
        self.redis_url = ""
        self.market_url = ""
        self.deployment: Deployment | None = None
        self.services: dict[str, Service] = {}
        self.sandboxed = True

    # ------------------------------------------------------------------ accounts
    @property
    def accounts(self) -> list[LocalAccount]:
        return self.chain.accounts

    @property
    def client_account(self) -> LocalAccount:
        return self.accounts[CLIENT]

    def worker_accounts(self) -> list[LocalAccount]:
        return self.accounts[FIRST_WORKER:FIRST_WORKER + self.config.workers]

    def cheater_addresses(self) -> set[str]:
        workers = self.worker_accounts()
        return {a.address for a in workers[len(workers) - self.config.cheaters:]} \
            if self.config.cheaters else set()

    def client(self, account: LocalAccount | None = None) -> Any:
        """A :class:`meshcompute.client.Client` of ``account`` (the stack's client by
        default) on this stack's chain and market."""
        from meshcompute.chain.connect import ChainConnection
        from meshcompute.chain.contracts import MeshContracts
        from meshcompute.client import Client
        from meshcompute.settings import load_settings
        from meshcompute.wire.market_client import MarketClient

        assert self.deployment is not None
        w3 = self.chain.w3()
        account = account or self.client_account
        return Client(
            account,
            connection=ChainConnection(w3, self.deployment, MeshContracts(w3, self.deployment),
                                       self.chain.rpc_url),
            market=MarketClient(self.market_url, account, self.deployment.chain_id,
                                contract=self.deployment.address("JobMarket")),
            settings=load_settings(market_url=self.market_url),
        )

    def actor(self, account: LocalAccount) -> MeshActor:
        assert self.deployment is not None
        w3 = self.chain.w3()
        return MeshActor(w3, self.deployment, account, mesh_sender(w3, account))

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DevStack:
        cfg = self.config
        if cfg.workers + FIRST_WORKER > 10:
            raise ValueError("the dev chain has 10 accounts: at most 5 workers")
        if cfg.canary is not None and cfg.workers + FIRST_WORKER > CANARY_CLIENT:
            raise ValueError("the canary service takes dev accounts 8 and 9: at most 3 workers")
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.chain.start()
        self._deploy()
        self._start_redis()
        self.sandboxed = self._sandbox_choice()
        port = _free_port()
        self.market_url = f"http://127.0.0.1:{port}"
        base = self._base_env()
        market_env = base | {
            "MESH_DATA_DIR": str(self.root / "market"),
            "MESH_MARKET_PORT": str(port),
            "MESH_ASSIGNER_KEY": self.accounts[ASSIGNER].key.to_0x_hex(),
            "MESH_SETTLER_KEY": self.accounts[ASSIGNER].key.to_0x_hex(),
            "MESH_LEASE_S": str(cfg.lease_s),
            # without a verifier a drawn job could only be void (silence never pays): the
            # market then signs each job's own rate, not the deterrence rate for new workers
            "MESH_AUDIT_DETERRENCE": "true" if cfg.verifier else "false",
        }
        self._add("market-api", ["market", "serve"], market_env)
        self._add("market-tasks", ["market", "tasks"], market_env)
        self.services["market-api"].start()
        self.services["market-tasks"].start()
        self.wait_healthy()
        if cfg.verifier:
            self._add_provider("verifier", self.accounts[VERIFIER],
                               ["verifier", "start", "--json-logs"], {})
            # a second verifier: a failed worker always has someone else to appeal to, and a
            # verdict one of them leaves unposted escalates to the other
            lazy = {"MESH_TEST_LAZY_VERIFIER": "1"} if cfg.lazy_second_verifier else {}
            self._add_provider("verifier-2", self.accounts[SECOND_VERIFIER],
                               ["verifier", "start", "--json-logs"], lazy)
        for index, account in enumerate(self.worker_accounts()):
            extra: dict[str, str] = {}
            if account.address in self.cheater_addresses():
                extra["MESH_TEST_CHEAT_FRACTION"] = str(cfg.cheat_fraction)
                extra["MESH_TEST_CHEAT_SEED"] = str(index)
            argv = ["worker", "start", "--json-logs", "--slots", str(cfg.worker_slots),
                    "--threads", str(cfg.worker_threads)]
            if not self.sandboxed:
                argv.append("--allow-unsandboxed")
            argv += cfg.worker_options.get(index, [])
            self._add_provider(f"worker-{index}", account, argv, extra)
            if index in cfg.paused_workers:
                self.pause_file(f"worker-{index}").touch()
        if cfg.canary is not None:
            options = [part for key, value in cfg.canary.items()
                       for part in (f"--{key.replace('_', '-')}", value)]
            if not self.sandboxed:
                options.append("--allow-unsandboxed")
            canary = self._add_provider(
                "canary", self.accounts[CANARY_CLIENT],
                ["canary", "start", "--json-logs", *options],
                {"MESH_CANARY_WORKER_KEY": self.accounts[CANARY_WORKER].key.to_0x_hex(),
                 "MESH_ASSIGNER_KEY": self.accounts[ASSIGNER].key.to_0x_hex()})
            canary.finite = "total" in cfg.canary  # it stops once its canaries have ended
        for name, service in self.services.items():
            if not service.running and name not in ("market-api", "market-tasks"):
                service.start()
        # every worker is registered before anyone posts: otherwise the first workers up
        # can lease a whole submission and a late one (a test's cheater) sees no job
        self.wait_workers(cfg.workers)
        return self

    def stop(self, timeout_s: float = 8.0) -> None:
        # The providers (workers, verifiers, canary) stop together while the market is still
        # up (a worker hands its leases back on its way out), then the market's processes:
        # each group's shutdowns run side by side (one after another they took ~12 s).
        market = ("market-api", "market-tasks")
        services = list(self.services.values())
        for group in ([s for s in services if s.name not in market],
                      [s for s in services if s.name in market]):
            for service in group:
                service.request_stop()
            deadline = time.monotonic() + timeout_s
            for service in group:
                service.finish_stop(deadline)
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None
        self.chain.stop()
        if self._own_root and os.environ.get("MESH_KEEP_STACK") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ chaos
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a service's whole process group (SIGKILL: no cleanup)."""
        service = self.services[name]
        service.killed = True
        service.signal(sig)
        if service.process is not None:
            service.process.wait(10)

    def restart(self, name: str) -> None:
        service = self.services[name]
        service.stop(timeout_s=3)
        service.start()

    def restart_redis(self, down_s: float = 2.0) -> None:
        """Stop the embedded Valkey, wait, start a new one on the same port."""
        if self.valkey is None:
            raise RuntimeError("REDIS_URL points at an external server; restart it yourself")
        port = self.valkey.port
        self.valkey.stop()
        time.sleep(down_s)
        self.valkey = start_valkey(port)

    # ------------------------------------------------------------------ helpers
    def wait_healthy(self, timeout_s: float = 60.0) -> dict[str, Any]:
        give_up = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < give_up:
            api = self.services.get("market-api")
            if api is not None and not api.running:
                raise ServiceUnavailable(f"market API exited:\n{api.tail()}")
            try:
                response = httpx.get(f"{self.market_url}/health", timeout=2)
                if response.status_code == 200:
                    return response.json()
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServiceUnavailable(f"market at {self.market_url} not healthy: {last}")

    def registered_workers(self) -> int:
        """How many workers the market has registered (its ``/metrics`` gauge)."""
        response = httpx.get(f"{self.market_url}/metrics", timeout=5)
        response.raise_for_status()
        for line in response.text.splitlines():
            if line.startswith("mesh_workers_registered "):
                return int(float(line.split()[1]))
        return 0

    def wait_workers(self, count: int, timeout_s: float = 120.0) -> None:
        """Block until ``count`` workers have registered; raise with the logs otherwise."""
        give_up = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < give_up:
            self.check_alive()
            try:
                seen = self.registered_workers()
            except httpx.HTTPError:
                seen = 0
            if seen >= count:
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- {name}\n{service.tail(15)}"
                          for name, service in self.services.items() if name.startswith("worker"))
        raise ServiceUnavailable(f"{seen} of {count} workers registered in {timeout_s:g} s\n{tails}")

    def check_alive(self) -> None:
        """Raise with the log tail of any service that exited on its own (status 0 is fine for
        a ``finite`` one)."""
        for name, service in self.services.items():
            if service.killed:
                continue
            if service.finite and service.process is not None and service.process.poll() == 0:
                continue
            if service.process is not None and service.process.poll() is not None:
                raise ServiceUnavailable(
                    f"{name} exited with {service.process.returncode}:\n{service.tail()}"
                )

    def _deploy(self) -> None:
        admin = self.accounts[ADMIN]
        w3 = self.chain.w3()
        sender = mesh_sender(w3, admin)
        params = self.config.params
        if not self.config.verifier:
            # no verifier: a drawn job could only end void, so the chain keeps each job's own
            # rate (the deployment records it; a production deployment keeps deterrence on)
            params = replace(params, audit_deterrence=False)
        self.deployment = deploy_contracts(
            sender, params,
            assigners=(self.accounts[ASSIGNER].address,),
            verifiers=(self.accounts[VERIFIER].address, self.accounts[SECOND_VERIFIER].address),
            # a buffer of almost another unit above the seat's weight: a verdict both verifiers
            # miss on a loaded machine burns it, instead of unseating both for later jobs
            seat_deposit=2 * params.verifier_deposit - 1,
        )
        save_deployment(self.deployment, self.root / "deployments")
        actor = MeshActor(w3, self.deployment, admin, sender)
        actor.mint(self.client_account.address, self.config.client_funds)
        for account in self.worker_accounts():
            actor.mint(account.address, self.config.stake * 2)
            self.actor(account).stake(self.config.stake)
        for account in (self.accounts[VERIFIER], self.accounts[SECOND_VERIFIER]):
            actor.mint(account.address, self.config.stake)
            self.actor(account).stake(self.config.stake)
        if self.config.canary is not None:
            actor.mint(self.accounts[CANARY_CLIENT].address, self.config.client_funds)
            actor.mint(self.accounts[CANARY_WORKER].address, self.config.stake * 2)
            self.actor(self.accounts[CANARY_WORKER]).stake(self.config.stake)

    def _start_redis(self) -> None:
        configured = os.environ.get("REDIS_URL") or os.environ.get("MESH_REDIS_URL")
        if configured:
            self.redis_url = configured
            return
        self.valkey = start_valkey(_free_port())
        self.redis_url = self.valkey.connection_url

    def _sandbox_choice(self) -> bool:
        if self.config.allow_unsandboxed is not None:
            return not self.config.allow_unsandboxed
        try:
            from meshcompute.execution.sandbox import sandbox_available
        except ImportError:
            return False
        return bool(sandbox_available())

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        env.pop("REDIS_URL", None)
        return env | {
            "MESH_RPC_URL": self.chain.rpc_url,
            "MESH_CHAIN_ID": str(self.chain.chain_id),
            "MESH_DEPLOYMENTS_DIR": str(self.root / "deployments"),
            "REDIS_URL": self.redis_url,
            "MESH_MARKET_URL": self.market_url,
            "MESH_WALLET_PASSWORD": WALLET_PASSWORD,
            "MESH_WALLET_SCRYPT_N": "1024",
            "PYTHONUNBUFFERED": "1",
        } | self.config.extra_env

    def _add(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        Path(env.get("MESH_DATA_DIR", self.root / name)).mkdir(parents=True, exist_ok=True)
        service = Service(
            name=name,
            argv=[sys.executable, "-m", "meshcompute.mesh.cli", *argv],
            env=env, log_path=self.root / "logs" / f"{name}.log",
        )
        self.services[name] = service
        return service

    def pause_file(self, worker: str) -> Path:
        """The file that pauses ``worker`` (``worker-0``, ...) while it exists."""
        from meshcompute.worker.config import PAUSE_FILE

        return self.root / worker / PAUSE_FILE

    def _add_provider(self, name: str, account: LocalAccount, argv: list[str],
                      extra: dict[str, str]) -> Service:
        from meshcompute.wallet import import_wallet

        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        import_wallet(data_dir / "wallet.json", account.key, WALLET_PASSWORD, scrypt_n=1024)
        env = self._base_env() | {"MESH_DATA_DIR": str(data_dir)} | extra
        return self._add(name, argv, env)


@contextmanager
def running_stack(config: StackConfig | None = None) -> Iterator[DevStack]:
    """``with running_stack(...) as stack:``, also stopping everything on SIGTERM."""
    stack = DevStack(config)
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        with stack:
            yield stack
    finally:
        signal.signal(signal.SIGTERM, previous)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
