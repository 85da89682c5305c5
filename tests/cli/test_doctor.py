"""`mesh doctor`: one line per check with its fix; chain-dependent checks are skipped when the
chain is down; exit 1 on any failure; never a traceback. The check functions are tested on
their own (fakes, httpx mock transport), the command with nothing running and against anvil."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from meshcompute.chain.contracts import MeshActor, StakePosition
from meshcompute.errors import ConfigError
from meshcompute.mesh.cli import doctor as doc
from meshcompute.settings import load_settings
from meshcompute.units import TOKEN
from meshcompute.wallet import import_wallet
from tests.cli.conftest import _ENV, PASSWORD

ORDER = ["settings", "chain", "contracts", "wallet", "balance", "stake", "verifier", "market",
         "sandbox", "torch", "disk"]
CHAIN_DEPENDENT = ("contracts", "balance", "stake", "verifier")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["check"]: c for c in checks}


@pytest.fixture
def empty_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing running: RPC and market URLs at closed ports, an empty data dir."""
    for name in (*_ENV, "MESH_MARKET_URL", "MESH_WORKER_ALLOW_UNSANDBOXED"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "empty"
    monkeypatch.setenv("MESH_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MESH_RPC_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MESH_MARKET_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MESH_WALLET_SCRYPT_N", str(2**10))
    return data_dir


# ---------------------------------------------------------------------- the command, nothing up
def test_nothing_running_fails_the_chain_and_skips_what_needs_it(empty_env, run_mesh) -> None:
    result = run_mesh("doctor")
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.out + result.err
    lines = [line for line in result.out.splitlines() if line.strip()]
    assert [line.split()[1] for line in lines] == ORDER
    chain = next(line for line in lines if line.split()[1] == "chain")
    assert chain.startswith("fail ") and "no chain reachable at http://127.0.0.1:" in chain
    assert "-> fix: " in chain and "MESH_RPC_URL" in chain
    for name in CHAIN_DEPENDENT:
        line = next(line for line in lines if line.split()[1] == name)
        assert line.startswith("skip ") and "needs chain" in line, line
    settings = lines[0]
    assert settings.startswith("ok ") and str(empty_env) in settings

    as_json = run_mesh("doctor", "--json")
    assert as_json.code == 1
    assert "Traceback" not in as_json.out + as_json.err
    checks = json.loads(as_json.out)
    assert [c["check"] for c in checks] == ORDER
    assert all(set(c) == {"check", "status", "detail", "fix"} for c in checks)
    named = by_name(checks)
    assert named["chain"]["status"] == "fail" and named["chain"]["fix"]
    assert all(named[n]["status"] == "skip" for n in CHAIN_DEPENDENT)
    assert named["wallet"]["status"] == "fail" and "mesh wallet new" in named["wallet"]["fix"]
    assert named["market"]["status"] == "fail" and "mesh market serve" in named["market"]["fix"]
    assert named["disk"]["status"] == "ok" and "not created yet" in named["disk"]["detail"]
    assert all(c["fix"] is None for c in checks if c["status"] in ("ok", "skip"))


def test_invalid_settings_skip_everything_that_needs_them(empty_env, run_mesh, monkeypatch):
    monkeypatch.setenv("MESH_LEASE_S", "1")
    result = run_mesh("doctor", "--json")
    assert result.code == 1 and "Traceback" not in result.out + result.err
    named = by_name(json.loads(result.out))
    assert named["settings"]["status"] == "fail"
    assert "MESH_LEASE_S" in named["settings"]["detail"]
    assert "default factory" not in named["settings"]["detail"]
    for name in ("chain", "contracts", "wallet", "market", "disk"):
        assert named[name] == {"check": name, "status": "skip", "detail": "needs settings",
                               "fix": None}


def test_a_locked_wallet_is_a_warning_and_its_address_is_shown(empty_env, run_mesh) -> None:
    from eth_account import Account

    account = Account.create()
    import_wallet(empty_env / "wallet.json", account.key.hex(), PASSWORD, scrypt_n=2**10)
    named = by_name(json.loads(run_mesh("doctor", "--json").out))
    wallet = named["wallet"]
    assert wallet["status"] == "warn" and wallet["detail"].startswith("wallet locked")
    assert account.address in wallet["detail"] and "MESH_WALLET_PASSWORD" in wallet["fix"]
    assert named["balance"]["detail"] == "needs chain"  # the wallet gave its address


# ---------------------------------------------------------------------- the check functions
def test_wallet_check_unlocks_or_names_the_wrong_password(tmp_path, monkeypatch) -> None:
    from eth_account import Account

    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    account = Account.create()
    path = tmp_path / "w.json"
    import_wallet(path, account.key.hex(), PASSWORD, scrypt_n=2**10)
    good = load_settings(wallet_path=path, wallet_password=PASSWORD)
    check, address = doc.check_wallet(good)
    assert check.status == "ok" and address == account.address
    bad = load_settings(wallet_path=path, wallet_password="nope")
    check, address = doc.check_wallet(bad)
    assert check.status == "fail" and "wrong password" in check.detail
    assert address == account.address and "MESH_WALLET_PASSWORD" in check.fix
    assert PASSWORD not in check.detail + check.fix


def test_settings_failure_and_unexpected_errors_are_lines() -> None:
    def broken() -> None:
        raise ConfigError("invalid settings: MESH_X: nope")

    check, settings = doc.check_settings(broken)
    assert settings is None and check.status == "fail" and "MESH_X" in check.detail

    def boom() -> None:
        raise RuntimeError("multi\nline")

    checks = doc.run_checks(load=boom, sandbox=lambda: True, torch_importer=lambda: boom())
    named = {c.check: c for c in checks}
    assert [c.check for c in checks] == ORDER
    assert named["settings"].status == "fail" and "multi line" in named["settings"].detail
    assert named["chain"].status == "skip" and named["torch"].status == "fail"
    assert doc.failed(checks)


def test_market_check_compares_the_chain_id() -> None:
    def answer(chain_id: int) -> httpx.MockTransport:
        body = {"chain_id": chain_id, "addresses": {"JobMarket": "0x" + "11" * 20},
                "assigner": "0x" + "22" * 20, "max_blob_bytes": 1, "lease_s": 300}
        return httpx.MockTransport(lambda request: httpx.Response(200, json=body))

    ok = doc.check_market("http://m", chain_id=31337, transport=answer(31337))
    assert ok.status == "ok" and "chain id 31337" in ok.detail
    unknown = doc.check_market("http://m", transport=answer(5))
    assert unknown.status == "ok" and "not compared" in unknown.detail
    wrong = doc.check_market("http://m", chain_id=31337, transport=answer(5))
    assert wrong.status == "fail" and "MESH_MARKET_URL" in wrong.fix
    garbage = httpx.MockTransport(lambda request: httpx.Response(200, json={"hello": 1}))
    assert doc.check_market("http://m", transport=garbage).status == "fail"
    down = httpx.MockTransport(lambda request: httpx.Response(503, json={"detail": "down"}))
    assert doc.check_market("http://m", transport=down).status == "fail"


def test_stake_and_balance_checks() -> None:
    def contracts(free: int, locked: int, credit: int) -> SimpleNamespace:
        return SimpleNamespace(stake_of=lambda a: StakePosition(free, locked, 5, 0, 0),
                               balance_of=lambda a: credit)

    zero = doc.check_stake(contracts(0, 0, 0), "0xabc")
    assert zero.status == "warn" and "mesh provider stake" in zero.fix
    staked = doc.check_stake(contracts(TOKEN, 0, 0), "0xabc")
    assert staked.status == "ok" and "free 1 MESH" in staked.detail
    w3 = SimpleNamespace(eth=SimpleNamespace(get_balance=lambda a: 0))
    broke = doc.check_balance(w3, 31337, "0xabc", contracts(0, 0, 0))
    assert broke.status == "warn" and "mesh wallet faucet" in broke.fix
    w3.eth.get_balance = lambda a: TOKEN
    rich = doc.check_balance(w3, 1, "0xabc", contracts(0, 0, 3 * TOKEN))
    assert rich.status == "ok" and rich.detail == "0xabc: gas 1 ETH, 3 MESH"


def test_sandbox_torch_disk_and_redaction() -> None:
    missing = doc.check_sandbox(lambda: False, which=lambda name: None)
    assert missing.status == "warn" and "bubblewrap" in missing.fix
    assert doc.check_sandbox(lambda: True, which=lambda n: "/usr/bin/bwrap").status == "ok"

    def no_torch() -> None:
        raise ImportError("No module named 'torch'")

    assert doc.check_torch(no_torch).status == "fail"
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                           get_device_name=lambda i: "NVIDIA H200")
    fake = SimpleNamespace(__version__="2.5.1", cuda=cuda)
    assert doc.check_torch(lambda: fake).detail == "torch 2.5.1, cuda: NVIDIA H200"
    old = SimpleNamespace(__version__="2.1.0", cuda=SimpleNamespace(is_available=lambda: False))
    assert doc.check_torch(lambda: old).status == "warn"

    low = doc.check_disk(Path("/"), usage=lambda p: SimpleNamespace(free=10 << 20))
    assert low.status == "warn" and "MESH_DATA_DIR" in low.fix

    assert doc.redact_url("https://u:p@rpc.example/v2/abcdefghijklmnopqrstuvwx?k=1") == (
        "https://***@rpc.example/v2/***?***")
    assert doc.redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"


# ---------------------------------------------------------------------- against anvil
@pytest.mark.anvil
def test_against_anvil_chain_contracts_wallet_and_stake(
    world, cli_wallet, run_mesh, monkeypatch
) -> None:
    monkeypatch.setenv("MESH_MARKET_URL", f"http://127.0.0.1:{closed_port()}")
    result = run_mesh("doctor", "--json")
    assert result.code == 1  # nothing serves MESH_MARKET_URL
    assert "Traceback" not in result.out + result.err
    named = by_name(json.loads(result.out))
    assert named["chain"]["status"] == "ok" and "chain id 31337" in named["chain"]["detail"]
    assert named["contracts"]["status"] == "ok"
    assert world.deployment.address("JobMarket") in named["contracts"]["detail"]
    assert named["wallet"]["status"] == "ok" and cli_wallet.address in named["wallet"]["detail"]
    assert named["balance"]["status"] == "ok" and "50000 MESH" in named["balance"]["detail"]
    assert named["stake"]["status"] == "warn" and "mesh provider stake" in named["stake"]["fix"]
    assert named["verifier"]["status"] == "info"
    assert "holds no verifier seat" in named["verifier"]["detail"]
    assert named["market"]["status"] == "fail"

    me = MeshActor(world.w3, world.deployment, cli_wallet)
    me.stake(1000 * TOKEN)
    me.join_verifiers(world.deployment.params.verifier_deposit)  # anyone may take a seat
    text = run_mesh("doctor")
    lines = {line.split()[1]: line for line in text.out.splitlines() if line.strip()}
    assert lines["stake"].startswith("ok ") and "free 1000 MESH" in lines["stake"]
    assert lines["verifier"].startswith("info ") and "holds a verifier seat" in lines["verifier"]
    assert "Traceback" not in text.out + text.err
