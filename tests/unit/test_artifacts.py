"""Compiled contract artifacts: committed files match a fresh compile; load_artifact works."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from meshcompute.chain.artifacts import ArtifactNotFoundError, available_artifacts, load_artifact

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tools" / "solc-shim"
SOLCJS = ROOT / "node_modules" / ".bin" / "solcjs"


def _need_compiler() -> None:
    if shutil.which("node") is None or not SOLCJS.exists():
        pytest.fail(f"compiling needs node and {SOLCJS.relative_to(ROOT)}: run `npm ci`")


def test_solc_shim_version_matches_native_solc_format():
    _need_compiler()
    out = subprocess.run([str(SHIM), "--version"], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "solc, the solidity compiler commandline interface"
    assert re.fullmatch(r"Version: \d+\.\d+\.\d+\+commit\.[0-9a-f]{8}\.\S+", lines[1])
    npm_version = json.loads((ROOT / "node_modules/solc/package.json").read_text())["version"]
    assert lines[1].startswith(f"Version: {npm_version}+commit.")


def test_committed_artifacts_match_fresh_compile():
    _need_compiler()
    from meshcompute.chain.compile import check_artifacts

    diffs = check_artifacts(ROOT)
    assert not diffs, (
        "artifacts are out of date with contracts/; run `python -m meshcompute.chain.compile`"
        " and commit the result:\n" + "\n".join(diffs)
    )


def test_load_artifact_gives_abi_and_bytecode():
    names = available_artifacts()
    assert names, "no artifacts in meshcompute/artifacts/"
    deployable = 0
    for name in names:
        art = load_artifact(name)
        assert art["contractName"] == name
        assert art["sourceName"].startswith("contracts/")
        assert isinstance(art["abi"], list)
        assert re.fullmatch(r"0x([0-9a-f]{2})*", art["bytecode"])
        assert re.fullmatch(r"0x([0-9a-f]{2})*", art["deployedBytecode"])
        assert art["compiler"]["settings"]["evmVersion"] == "cancun"
        if art["contractKind"] == "interface":
            assert art["bytecode"] == "0x"
        else:
            assert len(art["bytecode"]) > 2 and len(art["deployedBytecode"]) > 2
            assert art["abi"]
            deployable += 1
    assert deployable, "no deployable contract among the artifacts"


def test_load_artifact_returns_independent_copies():
    name = next(n for n in available_artifacts() if load_artifact(n)["abi"])
    a = load_artifact(name)
    a["abi"].clear()
    assert load_artifact(name)["abi"], "mutating a loaded artifact changed the cached one"
    assert load_artifact(name) == load_artifact(name)


def test_load_artifact_missing_names_the_contract():
    with pytest.raises(ArtifactNotFoundError, match="NoSuchContract"):
        load_artifact("NoSuchContract")
    with pytest.raises(LookupError):
        load_artifact("../pyproject")


def test_artifact_files_are_canonical_json():
    from meshcompute.chain.compile import render

    for path in sorted((ROOT / "meshcompute" / "artifacts").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        assert text == render(json.loads(text)), f"{path.name} is not in canonical form"


def test_every_deployable_contract_fits_the_eip170_code_size_limit() -> None:
    """A chain refuses deployed code over 24,576 bytes (EIP-170): the compiler settings and
    the contracts must keep every deployable artifact under it."""
    from meshcompute.chain.artifacts import load_artifact

    for name in ("MeshCredit", "StakeManager", "JobMarket", "JobMarketSettlement", "VerifierRegistry"):
        code = load_artifact(name)["deployedBytecode"]
        size = (len(code) - 2) // 2
        assert 0 < size <= 24_576, f"{name} deployed code is {size} bytes"
        # EIP-3860: creation code over 49,152 bytes is refused too (JobMarket's holds its
        # settlement half's, which its constructor deploys)
        init = (len(load_artifact(name)["bytecode"]) - 2) // 2
        assert 0 < init <= 49_152, f"{name} creation code is {init} bytes"


def test_the_job_market_abi_lists_what_its_settlement_half_serves() -> None:
    """JobMarket delegates its verifier and settlement calls; callers find them in its ABI."""
    from meshcompute.chain.artifacts import load_artifact

    host = {(e["type"], e.get("name")) for e in load_artifact("JobMarket")["abi"]}
    for entry in load_artifact("JobMarketSettlement")["abi"]:
        if entry["type"] in ("function", "error"):
            assert (entry["type"], entry["name"]) in host, entry["name"]
    for name in ("finalizeBatch", "resolveAudit", "resolveAppeal", "appeal", "postJobs", "assign"):
        assert ("function", name) in host
