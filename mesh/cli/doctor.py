"""``mesh doctor``: check what a provider or client needs, one line per check, with the fix.

    mesh doctor            # ok / warn / fail / skip / info, what was found, how to fix it
    mesh doctor --json     # [{"check", "status", "detail", "fix"}, ...]

Each check is a small function of its inputs returning a :class:`Check` (and, for the ones
later checks build on, what it found); :func:`run_checks` chains them. A check whose input is
missing because an earlier one failed is reported as ``skip`` ("needs chain"), never run. No
check raises: an unexpected error becomes that check's ``fail`` line. Network calls use a short
timeout and no retries, so the whole run takes seconds even with nothing running. Exit status 1
when any check failed, else 0. Nothing secret is printed: no key, no password, and RPC or market
URLs are shown with credentials and API-key-like path segments masked.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from meshcompute.units import DEV_CHAIN_ID, format_mesh

if TYPE_CHECKING:
    from web3 import Web3

    from meshcompute.chain.contracts import MeshContracts
    from meshcompute.chain.deploy import Deployment
    from meshcompute.settings import Settings

OK, WARN, FAIL, SKIP, INFO = "ok", "warn", "fail", "skip", "info"
STATUSES = (OK, WARN, FAIL, SKIP, INFO)
NETWORK_TIMEOUT_S = 3.0
"""Timeout of each network call (RPC request, market request)."""
MIN_FREE_BYTES = 1 << 30
"""Below this much free space in the data dir, the disk check warns."""
GIB = 1 << 30

_CHAIN_UP_OR_URL = "run `mesh chain up` (local dev chain), or set MESH_RPC_URL to your chain's URL"
_PASSWORD_FIX = (
    "set MESH_WALLET_PASSWORD, or MESH_WALLET_PASSWORD_FILE (a file holding it), "
    "for unattended use"
)


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    check: str
    status: str
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChainProbe:
    """What the chain check found: a Web3 with short timeouts, the chain id and head block."""

    w3: Web3
    url: str
    chain_id: int
    head: int
    from_record: bool = False


# ---------------------------------------------------------------------- helpers
def one_line(text: object, limit: int = 300) -> str:
    """Any message as one line, cut at ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_TOKEN_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{20,}$")


def redact_url(url: str) -> str:
    """``url`` without credentials: user:password, API-key-like path segments and the query
    are masked (``https://eth-mainnet.example/v2/***``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    path = "/".join("***" if _TOKEN_SEGMENT.match(seg) else seg for seg in parts.path.split("/"))
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, query, ""))


_REASONS = (
    "connection refused",
    "timed out",
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname provided",
    "no route to host",
    "network is unreachable",
    "connection reset",
)


def short_reason(exc: BaseException) -> str:
    """A few words on why a network call failed (not the library's nested repr)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        for reason in _REASONS:
            if reason in text:
                return reason
        current = current.__cause__ or current.__context__
    return one_line(f"{type(exc).__name__}: {exc}", 160)


def _mesh(wei: int) -> str:
    return f"{format_mesh(wei)} MESH"


def _eth(wei: int) -> str:
    return f"{format_mesh(wei)} ETH"


def skipped(name: str, *needs: str) -> Check:
    return Check(name, SKIP, "needs " + " and ".join(needs))


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()``; an unexpected exception becomes a ``fail`` Check for ``name`` (or, for the
    checks that return ``(Check, found)``, ``(fail, None)``)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a doctor never dies of what it examines
        return Check(name, FAIL, f"unexpected error: {one_line(f'{type(exc).__name__}: {exc}')}",
                     "not a known problem: please report this line")


def _pair(result: Any) -> tuple[Check, Any]:
    """Normalize a guarded ``(Check, found)`` result that may have become a bare Check."""
    if isinstance(result, Check):
        return result, None
    return result


# ---------------------------------------------------------------------- the checks
def check_settings(load: Callable[[], Settings] | None = None) -> tuple[Check, Settings | None]:
    """The typed settings from the environment; shows data_dir, RPC and market URL (no key)."""
    from meshcompute.errors import ConfigError
    from meshcompute.settings import load_settings

    try:
        settings = (load or load_settings)()
    except ConfigError as exc:
        # a field whose default derives from a bad one fails too: name only the bad one
        problems = [p for p in one_line(exc).split("; ")
                    if "default factory uses validated data" not in p]
        return Check("settings", FAIL, one_line("; ".join(problems)),
                     "correct or unset the MESH_* variable named above"), None
    rpc = redact_url(settings.rpc_url) if settings.rpc_url else "unset (uses `mesh chain up`)"
    detail = (f"data_dir {settings.data_dir}, rpc {rpc}, "
              f"market {redact_url(settings.market_url)}")
    return Check("settings", OK, detail), settings


def resolve_rpc_url(settings: Settings) -> tuple[str | None, bool]:
    """``(url, from_record)``: MESH_RPC_URL, else the record `mesh chain up` leaves in
    ``<data_dir>/chain.json``, else ``(None, False)``. A malformed record raises ConfigError."""
    if settings.rpc_url:
        return settings.rpc_url, False
    from meshcompute.chain.connect import read_chain_record

    record = read_chain_record(settings.data_dir)
    if record is None:
        return None, False
    return record.rpc_url, True


def check_chain(
    url: str | None,
    *,
    expected_chain_id: int | None = None,
    from_record: bool = False,
    data_dir: Path | None = None,
    timeout: float = NETWORK_TIMEOUT_S,
) -> tuple[Check, ChainProbe | None]:
    """The node at ``url`` answers ``eth_chainId`` and ``eth_blockNumber`` within ``timeout``
    (no retries), and is the chain MESH_CHAIN_ID names when that is set."""
    from web3 import HTTPProvider, Web3
    from web3.types import RPCEndpoint

    if not url:
        where = f" (no `mesh chain up` record in {data_dir})" if data_dir else ""
        return Check("chain", FAIL, f"no chain configured: MESH_RPC_URL is unset{where}",
                     _CHAIN_UP_OR_URL), None
    shown = redact_url(url)
    provider = HTTPProvider(url, request_kwargs={"timeout": timeout},
                            exception_retry_configuration=None)
    try:
        chain_id = int(provider.make_request(RPCEndpoint("eth_chainId"), [])["result"], 16)
        head = int(provider.make_request(RPCEndpoint("eth_blockNumber"), [])["result"], 16)
    except Exception as exc:  # noqa: BLE001 - any failure means the node is not usable
        if from_record:
            fix = ("the `mesh chain up` that wrote "
                   f"{Path(data_dir or '.') / 'chain.json'} has stopped: run `mesh chain up` "
                   "again, or set MESH_RPC_URL")
            where = f"{shown} (from the `mesh chain up` record)"
        else:
            fix = ("check MESH_RPC_URL, or unset it and run `mesh chain up` for a local dev "
                   "chain")
            where = shown
        return Check("chain", FAIL, f"no chain reachable at {where}: {short_reason(exc)}",
                     fix), None
    if expected_chain_id is not None and chain_id != expected_chain_id:
        return Check("chain", FAIL,
                     f"{shown} is chain id {chain_id} but MESH_CHAIN_ID is {expected_chain_id}",
                     "point MESH_RPC_URL at the right chain, or unset MESH_CHAIN_ID"), None
    w3 = Web3(provider)
    probe = ChainProbe(w3=w3, url=url, chain_id=chain_id, head=head, from_record=from_record)
    return Check("chain", OK, f"{shown}: chain id {chain_id}, head block {head}"), probe


def _deploy_fix(probe: ChainProbe, deployments_dir: Path) -> str:
    if probe.from_record:
        return ("restart `mesh chain up` (it deploys the contracts and writes the record), or "
                "set MESH_DEPLOYMENTS_DIR to the folder holding the record")
    return (f"`mesh chain deploy --rpc-url \"$MESH_RPC_URL\"` (deployer key in MESH_DEPLOYER_KEY) "
            f"writes {deployments_dir}/{probe.chain_id}.json; or set MESH_DEPLOYMENTS_DIR to the "
            "folder holding the record")


def load_chain_deployment(
    deployments_dir: Path, chain_id: int, data_dir: Path | None = None
) -> tuple[Deployment, Path]:
    """The deployment record for ``chain_id`` and where it was read, as ``mesh`` commands
    find it: the `mesh chain up` record's deployment first, else ``<deployments_dir>``."""
    from meshcompute.chain.deploy import Deployment, deployment_path, load_deployment

    if data_dir is not None:
        from meshcompute.chain.connect import read_chain_record

        record = read_chain_record(data_dir)
        if record is not None and record.chain_id == chain_id and record.deployment_path:
            path = Path(record.deployment_path)
            if path.exists():
                return Deployment.from_json(json.loads(path.read_text(encoding="utf-8"))), path
    return load_deployment(deployments_dir, chain_id), deployment_path(deployments_dir, chain_id)


def check_contracts(
    probe: ChainProbe, deployments_dir: Path, data_dir: Path | None = None
) -> tuple[Check, MeshContracts | None]:
    """A deployment record for the chain's id, and code at each of its addresses."""
    from meshcompute.chain.contracts import MeshContracts
    from meshcompute.chain.deploy import CONTRACT_NAMES
    from meshcompute.errors import ConfigError, DeploymentNotFound

    fix = _deploy_fix(probe, deployments_dir)
    try:
        deployment, path = load_chain_deployment(deployments_dir, probe.chain_id, data_dir)
    except DeploymentNotFound:
        return Check("contracts", FAIL,
                     f"no deployment record for chain id {probe.chain_id} in {deployments_dir}",
                     fix), None
    except ConfigError as exc:
        return Check("contracts", FAIL, one_line(exc),
                     f"fix or delete that record; {fix}"), None
    missing = [name for name in CONTRACT_NAMES if name not in deployment.addresses]
    if missing:
        return Check("contracts", FAIL,
                     f"deployment record {path} names no {', '.join(missing)}", fix), None
    empty = [f"{name} {deployment.address(name)}" for name in CONTRACT_NAMES
             if not probe.w3.eth.get_code(deployment.address(name))]  # type: ignore[arg-type]
    if empty:
        return Check("contracts", FAIL,
                     f"record {path} but no code at {', '.join(empty)} on chain id "
                     f"{probe.chain_id} (a restarted dev chain?)", fix), None
    names = ", ".join(f"{name} {deployment.address(name)}" for name in CONTRACT_NAMES)
    return (Check("contracts", OK, f"{names} (record {path})"),
            MeshContracts(probe.w3, deployment))


def check_wallet(
    settings: Settings, *, prompt: bool = False
) -> tuple[Check, str | None]:
    """The keystore at ``settings.wallet_path`` exists and unlocks with the password from
    MESH_WALLET_PASSWORD / MESH_WALLET_PASSWORD_FILE (or a prompt, only when ``prompt``).
    Returns the address (read from the keystore) even when it cannot be unlocked."""
    from meshcompute.errors import WalletError
    from meshcompute.wallet import keystore_address, load_account, resolve_password

    path = settings.wallet_path
    try:
        address = keystore_address(path)
    except WalletError as exc:
        if not Path(path).exists():
            return Check("wallet", FAIL, f"no wallet at {path}",
                         "`mesh wallet new` (or `mesh wallet import --key-env VAR`), or set "
                         "MESH_WALLET_PATH to your keystore"), None
        return Check("wallet", FAIL, one_line(exc),
                     "point MESH_WALLET_PATH at a V3 keystore, or move this file away and run "
                     "`mesh wallet new`"), None
    try:
        password = resolve_password(prompt=prompt, settings=settings)
    except WalletError as exc:
        if "no wallet password" in str(exc) or "no password typed" in str(exc):
            return Check("wallet", WARN, f"wallet locked: {address} at {path} (no password to "
                         "test it with)", _PASSWORD_FIX), address
        return Check("wallet", FAIL, f"{address} at {path}: {one_line(exc)}",
                     _PASSWORD_FIX), address
    try:
        account = load_account(path, password)
    except WalletError as exc:
        return Check("wallet", FAIL, f"{address}: {one_line(exc)}",
                     "set MESH_WALLET_PASSWORD (or MESH_WALLET_PASSWORD_FILE) to this "
                     "keystore's password"), address
    return Check("wallet", OK, f"{account.address} unlocks ({path})"), str(account.address)


def check_balance(
    w3: Web3, chain_id: int, address: str, contracts: MeshContracts | None
) -> Check:
    """Native balance (gas) and, with the contracts, the MESH credit balance."""
    gas = int(w3.eth.get_balance(address))  # type: ignore[arg-type]
    parts = [f"{address}: gas {_eth(gas)}"]
    fixes: list[str] = []
    if gas == 0:
        if chain_id == DEV_CHAIN_ID:
            fixes.append("restart `mesh chain up` with the wallet in place (it funds "
                          "MESH_WALLET_PATH), or send it ETH from a dev account")
        else:
            fixes.append("send it some of the chain's native currency for gas (a testnet "
                         "faucet)")
    if contracts is None:
        parts.append("MESH balance unknown (needs contracts)")
    else:
        credit = contracts.balance_of(address)
        parts.append(_mesh(credit))
        if credit == 0:
            fixes.append("`mesh wallet faucet` (dev chains and faucet-enabled testnets), or "
                         "get MESH from another account")
    return Check("balance", WARN if fixes else OK, ", ".join(parts),
                 "; ".join(fixes) if fixes else None)


def check_stake(contracts: MeshContracts, address: str) -> Check:
    """Free, locked and unbonding stake; warns when nothing is staked."""
    position = contracts.stake_of(address)
    detail = (f"free {_mesh(position.free)}, locked {_mesh(position.locked)}, "
              f"unbonding {_mesh(position.unbonding)}")
    if position.free + position.locked == 0:
        return Check("stake", WARN, f"nothing staked ({detail}); providers need stake",
                     "`mesh provider stake AMOUNT` (e.g. `mesh provider stake 1000`)")
    return Check("stake", OK, detail)


def check_verifier_seat(contracts: MeshContracts, address: str) -> Check:
    """Whether ``address`` holds a seat in the verifier registry (information only)."""
    seat = contracts.verifier_seat(address)
    if seat is not None:
        return Check("verifier", INFO, f"{address} holds a verifier seat (deposit "
                     f"{_mesh(seat.deposit)}, weight {seat.units}; can run `mesh verifier start`)")
    return Check("verifier", INFO, f"{address} holds no verifier seat (only verifiers need one: "
                 "`mesh verifier join AMOUNT`)")


def check_market(
    market_url: str,
    *,
    chain_id: int | None = None,
    deployment: Deployment | None = None,
    timeout: float = NETWORK_TIMEOUT_S,
    transport: Any = None,
) -> Check:
    """``GET /info`` answers within ``timeout``; its chain id (and JobMarket address) match
    the chain's when those are known."""
    from meshcompute.errors import MeshError, ServiceUnavailable
    from meshcompute.wire.market_client import MarketClient

    shown = redact_url(market_url)
    start_fix = ("start it with `mesh market serve` and `mesh market tasks`, or set "
                 "MESH_MARKET_URL to the market's URL")
    try:
        with MarketClient(market_url, timeout=timeout, transport=transport) as client:
            info = client.info()
    except ServiceUnavailable as exc:
        return Check("market", FAIL, f"no market reachable at {shown}: {short_reason(exc)}",
                     start_fix)
    except MeshError as exc:
        return Check("market", FAIL, f"{shown} answered GET /info with an error: "
                     f"{one_line(exc)}", "check MESH_MARKET_URL")
    except (KeyError, TypeError, ValueError) as exc:
        return Check("market", FAIL, f"{shown} does not answer GET /info like a mesh market "
                     f"({type(exc).__name__}: {one_line(exc, 120)})", "check MESH_MARKET_URL")
    if chain_id is not None and info.chain_id != chain_id:
        return Check("market", FAIL,
                     f"{shown} serves chain id {info.chain_id} but the RPC is chain id {chain_id}",
                     f"set MESH_MARKET_URL to a market of chain id {chain_id}, or MESH_RPC_URL "
                     f"to chain id {info.chain_id}")
    if deployment is not None:
        theirs = str(info.addresses.get("JobMarket", "")).lower()
        ours = deployment.addresses.get("JobMarket", "").lower()
        if theirs and ours and theirs != ours:
            return Check("market", FAIL,
                         f"{shown} uses JobMarket {info.addresses['JobMarket']} but your "
                         f"deployment record says {deployment.address('JobMarket')}",
                         "update the deployment record (MESH_DEPLOYMENTS_DIR) to the market's "
                         "addresses, or set MESH_MARKET_URL to the market of your deployment")
    compared = "" if chain_id is not None else " (not compared: chain unknown)"
    return Check("market", OK, f"{shown}: chain id {info.chain_id}{compared}")


def check_sandbox(
    available: Callable[[], bool] | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    allow_unsandboxed: bool = False,
) -> Check:
    """bubblewrap installed and able to create the job sandbox here."""
    if available is None:
        from meshcompute.execution.sandbox import sandbox_available

        available = sandbox_available
    bwrap = which("bwrap")
    if bwrap and available():
        return Check("sandbox", OK, f"bubblewrap works ({bwrap})")
    consequence = ("jobs would run WITHOUT isolation (MESH_WORKER_ALLOW_UNSANDBOXED is set)"
                   if allow_unsandboxed else
                   "`mesh worker start` refuses to run jobs without it")
    if not bwrap:
        return Check("sandbox", WARN, f"bubblewrap (bwrap) not installed: {consequence}",
                     "install the `bubblewrap` package (e.g. `sudo apt-get install "
                     "bubblewrap`); `--allow-unsandboxed` only for trusted jobs")
    return Check("sandbox", WARN, f"{bwrap} cannot create a sandbox here (user namespaces "
                 f"disabled?): {consequence}",
                 "allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`;"
                 " on Ubuntu 24.04 `kernel.apparmor_restrict_unprivileged_userns=0`)")


def check_torch(importer: Callable[[], Any] | None = None) -> Check:
    """torch importable (imported here, lazily), its version and device."""
    try:
        torch = importer() if importer is not None else __import__("torch")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything
        return Check("torch", FAIL, f"torch not importable: {one_line(exc, 160)}",
                     "pip install 'meshcompute[worker]' (torch>=2.4; CUDA builds from "
                     "https://pytorch.org)")
    version = str(getattr(torch, "__version__", "?"))
    try:
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            device = f"cuda: {torch.cuda.get_device_name(0)}" + (
                f" (+{count - 1} more)" if count > 1 else "")
        else:
            device = "cpu only (no CUDA device)"
    except Exception as exc:  # noqa: BLE001 - a CUDA driver problem is a line, not a crash
        return Check("torch", WARN, f"torch {version}, CUDA check failed: {one_line(exc, 160)}",
                     "check the NVIDIA driver matches this torch build (`nvidia-smi`)")
    major_minor = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if len(major_minor) == 2 and major_minor < (2, 4):
        return Check("torch", WARN, f"torch {version} is older than 2.4; {device}",
                     "pip install -U 'torch>=2.4'")
    return Check("torch", OK, f"torch {version}, {device}")


def check_disk(
    data_dir: Path,
    *,
    min_free: int = MIN_FREE_BYTES,
    usage: Callable[[Path], Any] = shutil.disk_usage,
) -> Check:
    """Free space on the filesystem of ``data_dir`` (its nearest existing folder)."""
    path = Path(data_dir).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = int(usage(probe).free)
    note = "" if path.exists() else " (not created yet)"
    detail = f"{free / GIB:.1f} GiB free for {path}{note}"
    if free < min_free:
        return Check("disk", WARN, f"only {detail}",
                     "free space on that filesystem, or set MESH_DATA_DIR to a bigger one")
    return Check("disk", OK, detail)


# ---------------------------------------------------------------------- the run
def run_checks(
    *,
    load: Callable[[], Settings] | None = None,
    prompt: bool = False,
    timeout: float = NETWORK_TIMEOUT_S,
    sandbox: Callable[[], bool] | None = None,
    torch_importer: Callable[[], Any] | None = None,
) -> list[Check]:
    """Every check in order; a check whose input an earlier one could not give is skipped."""
    checks: list[Check] = []
    settings_check, settings = _pair(guarded("settings", lambda: check_settings(load)))
    checks.append(settings_check)

    probe: ChainProbe | None = None
    contracts: MeshContracts | None = None
    address: str | None = None
    if settings is None:
        checks += [skipped(name, "settings") for name in ("chain", "contracts", "wallet",
                                                           "balance", "stake", "verifier")]
    else:
        def chain() -> tuple[Check, ChainProbe | None]:
            url, from_record = resolve_rpc_url(settings)
            return check_chain(url, expected_chain_id=settings.chain_id, from_record=from_record,
                               data_dir=settings.data_dir, timeout=timeout)

        chain_check, probe = _pair(guarded("chain", chain))
        checks.append(chain_check)
        if probe is None:
            checks.append(skipped("contracts", "chain"))
        else:
            contracts_check, contracts = _pair(guarded("contracts", lambda: check_contracts(
                probe, settings.deployments_dir, settings.data_dir)))
            checks.append(contracts_check)
        wallet_check, address = _pair(guarded(
            "wallet", lambda: check_wallet(settings, prompt=prompt)))
        checks.append(wallet_check)

        needs_chain = [] if probe is not None else ["chain"]
        needs_wallet = [] if address is not None else ["wallet"]
        if probe is not None and address is not None:
            checks.append(guarded("balance", lambda: check_balance(
                probe.w3, probe.chain_id, address, contracts)))
        else:
            checks.append(skipped("balance", *needs_chain, *needs_wallet))
        needs_contracts = needs_chain or ([] if contracts is not None else ["contracts"])
        for name, fn in (("stake", check_stake), ("verifier", check_verifier_seat)):
            if contracts is not None and address is not None:
                checks.append(guarded(name, lambda fn=fn: fn(contracts, address)))
            else:
                checks.append(skipped(name, *needs_contracts, *needs_wallet))

    if settings is None:
        checks.append(skipped("market", "settings"))
    else:
        deployment = contracts.deployment if contracts is not None else None
        checks.append(guarded("market", lambda: check_market(
            settings.market_url, chain_id=probe.chain_id if probe else None,
            deployment=deployment, timeout=timeout)))
    checks.append(guarded("sandbox", lambda: check_sandbox(
        sandbox, allow_unsandboxed=bool(settings and settings.worker_allow_unsandboxed))))
    checks.append(guarded("torch", lambda: check_torch(torch_importer)))
    if settings is None:
        checks.append(skipped("disk", "settings"))
    else:
        checks.append(guarded("disk", lambda: check_disk(settings.data_dir)))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


_STYLE = {OK: "green", WARN: "yellow", FAIL: "red", SKIP: "dim", INFO: "cyan"}


def render_line(check: Check) -> str:
    """``fail  chain      no chain reachable at ... -> fix: ...`` (plain text)."""
    line = f"{check.status:<5} {check.check:<10} {check.detail}"
    if check.fix:
        line += f" -> fix: {check.fix}"
    return line


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of checks.")] = False,
    timeout: Annotated[float, typer.Option(
        min=0.1, max=60, help="Seconds each network call may take.")] = NETWORK_TIMEOUT_S,
) -> None:
    """Check what a provider or client needs (settings, chain, contracts, wallet, balance,
    stake, market, sandbox, torch, disk): one line each with how to fix it. Exit 1 if any
    check failed."""
    checks = run_checks(prompt=sys.stdin.isatty(), timeout=timeout)
    if as_json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        out = Console(soft_wrap=True, highlight=False)
        for check in checks:
            style = _STYLE.get(check.status, "")
            text = escape(render_line(check))
            status_end = len(escape(check.status))
            out.print(f"[{style}]{text[:status_end]}[/]{text[status_end:]}")
    if failed(checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount ``doctor`` as a top-level command of ``app``."""
    app.command("doctor")(doctor)
