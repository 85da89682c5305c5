"""Compile contracts/**/*.sol into committed JSON artifacts.

    python -m meshcompute.chain.compile           # (re)write the artifacts
    python -m meshcompute.chain.compile --check   # exit 1 if committed artifacts are stale

Every ``contracts/**/*.sol`` file is compiled in one Standard-JSON run with pinned
settings (:data:`SETTINGS`) by ``tools/solc-shim`` (the npm solcjs behind a native-solc
interface; set ``MESHCOMPUTE_SOLC`` to use another solc binary of the same version).

Artifacts: ``meshcompute/artifacts/<Name>.json`` for contracts outside ``contracts/test/``
(shipped as package data, read with :func:`meshcompute.chain.artifacts.load_artifact`), and
``tests/fixtures/artifacts/<Name>.json`` for test-only contracts under ``contracts/test/``.
Written: deployable contracts, interfaces (ABI only, bytecode ``"0x"``: their events and
errors decode logs and reverts) and libraries with an external ABI. Skipped: abstract
contracts and libraries with only internal functions (nothing to deploy or call).

Each file holds ``{abi, bytecode, compiler: {settings, version}, contractKind, contractName,
deployedBytecode, sourceName}`` as JSON with sorted keys, indent 1 and a trailing newline, so
the same sources always give the same bytes.

This module needs node + solcjs (or a solc) and py-solc-x; nothing else in meshcompute
imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

CONTRACTS_DIR = "contracts"
TEST_CONTRACTS_DIR = "contracts/test"
ARTIFACTS_DIR = "meshcompute/artifacts"
TEST_ARTIFACTS_DIR = "tests/fixtures/artifacts"

#: Pinned compiler settings (recorded in each artifact's ``compiler.settings``). ``runs`` is
#: 500: with appealable passes (disputes) JobMarket's deployed code at 2000 runs was 24,994
#: bytes, past EIP-170's 24,576-byte limit. Lower runs barely help (a few hundred bytes), so
#: the job market is split in two (JobMarket, 12,887 bytes with reserved posts, and the
#: JobMarketSettlement it delegates to, 22,285 bytes with contests, two-step voids and
#: escalations; see :data:`DELEGATED_ABI`).
SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 500},
    "viaIR": True,
    "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
}

#: Contracts that serve part of their calls by DELEGATECALL to a second contract they deploy
#: (host -> delegate): the host's artifact ABI also lists the delegate's functions and errors,
#: since callers reach them at the host's address. JobMarket is split in two because one
#: contract's code may not exceed 24,576 bytes (EIP-170); see contracts/JobMarketBase.sol.
DELEGATED_ABI: dict[str, str] = {"JobMarket": "JobMarketSettlement"}

OUTPUT_SELECTION = {
    "*": {
        "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"],
        "": ["ast"],  # contractKind / abstract, to tell what to write
    }
}


class CompileError(RuntimeError):
    """The contracts did not compile, or their artifacts cannot be laid out."""


def solc_binary(root: Path | None = None) -> Path:
    """The solc to run: $MESHCOMPUTE_SOLC, else <root>/tools/solc-shim, else this repo's shim."""
    env = os.environ.get("MESHCOMPUTE_SOLC")
    if env:
        return Path(env)
    for base in ([Path(root)] if root else []) + [REPO_ROOT]:
        shim = base / "tools" / "solc-shim"
        if shim.is_file():
            return shim
    raise CompileError(f"no solc: tools/solc-shim not found under {root} or {REPO_ROOT}")


def source_files(root: Path) -> list[str]:
    """Source unit names (POSIX paths relative to root) of every contracts/**/*.sol, sorted."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in (root / CONTRACTS_DIR).rglob("*.sol"))


def standard_json_input(
    root: Path, sources: list[str] | None = None, output_selection: dict | None = None
) -> dict:
    """The Standard-JSON input for ``sources`` (default: all contracts) with pinned settings."""
    root = Path(root)
    names = source_files(root) if sources is None else sources
    return {
        "language": "Solidity",
        "sources": {n: {"content": (root / n).read_text(encoding="utf-8")} for n in names},
        "settings": {
            **json.loads(json.dumps(SETTINGS)),
            "outputSelection": output_selection or OUTPUT_SELECTION,
        },
    }


def _contract_kinds(output: dict) -> dict[tuple[str, str], tuple[str, bool]]:
    """(sourceName, contractName) -> (contractKind, abstract) from the ASTs."""
    kinds = {}
    for src, info in output.get("sources", {}).items():
        for node in (info.get("ast") or {}).get("nodes", []):
            if node.get("nodeType") == "ContractDefinition":
                kinds[(src, node["name"])] = (node["contractKind"], bool(node.get("abstract")))
    return kinds


def _hex(code: str | None) -> str:
    return "0x" + (code or "")


def _artifact_dir(source_name: str) -> str:
    test_prefix = TEST_CONTRACTS_DIR + "/"
    return TEST_ARTIFACTS_DIR if source_name.startswith(test_prefix) else ARTIFACTS_DIR


def compile_contracts(root: Path = REPO_ROOT) -> dict[str, dict]:
    """Compile every contracts/**/*.sol under ``root``; return the artifacts to write.

    Returns ``{relative artifact path: artifact dict}``, e.g.
    ``{"meshcompute/artifacts/MeshCredit.json": {...}}``. Raises :class:`CompileError`
    (carrying solc's messages) if compilation fails or two contracts share a name.
    """
    import solcx  # imported here: only this dev-time path needs py-solc-x
    from solcx.exceptions import SolcError
    from solcx.wrapper import get_version_str_from_solc_binary

    root = Path(root).resolve()
    sources = source_files(root)
    if not sources:
        raise CompileError(f"no .sol files under {root / CONTRACTS_DIR}")
    solc = solc_binary(root)
    version = get_version_str_from_solc_binary(solc)
    try:
        output = solcx.compile_standard(
            standard_json_input(root, sources), base_path=str(root), solc_binary=solc
        )
    except SolcError as e:
        detail = e.message
        if e.return_code:
            detail += f"\n(exit status {e.return_code})\n{e.stderr_data or ''}"
        raise CompileError(f"solc failed ({solc}):\n{detail}") from e
    for err in output.get("errors", []):
        # Warnings inside dependencies (OpenZeppelin's tstore note) are not ours to act on.
        if not (err.get("sourceLocation") or {}).get("file", "").startswith("node_modules/"):
            log.warning("%s", err.get("formattedMessage") or err.get("message"))

    kinds = _contract_kinds(output)
    recorded_settings = json.loads(json.dumps(SETTINGS))
    artifacts: dict[str, dict] = {}
    where: dict[str, str] = {}
    for source_name in sources:
        for name, info in sorted(output.get("contracts", {}).get(source_name, {}).items()):
            kind, abstract = kinds.get((source_name, name), ("contract", False))
            bytecode = info["evm"]["bytecode"]["object"]
            if kind == "contract" and (abstract or not bytecode):
                continue  # abstract: nothing to deploy
            if kind == "library" and not info["abi"]:
                continue  # internal-only library: inlined into its users
            if name in where:
                raise CompileError(
                    f"two contracts named {name!r} ({where[name]} and {source_name}); "
                    "artifacts are keyed by contract name, rename one"
                )
            where[name] = source_name
            path = f"{_artifact_dir(source_name)}/{name}.json"
            artifacts[path] = {
                "contractName": name,
                "contractKind": kind,
                "sourceName": source_name,
                "abi": info["abi"],
                "bytecode": _hex(bytecode if kind != "interface" else ""),
                "deployedBytecode": _hex(
                    info["evm"]["deployedBytecode"]["object"] if kind != "interface" else ""
                ),
                "compiler": {"version": version, "settings": recorded_settings},
            }
    _merge_delegated_abis(artifacts)
    return artifacts


def _abi_key(entry: dict) -> tuple:
    return (entry["type"], entry.get("name"), tuple(i["type"] for i in entry.get("inputs", [])))


def _merge_delegated_abis(artifacts: dict[str, dict]) -> None:
    """Add each delegate's functions and errors to its host's ABI (:data:`DELEGATED_ABI`)."""
    by_name = {art["contractName"]: art for art in artifacts.values()}
    for host, delegate in DELEGATED_ABI.items():
        if host not in by_name or delegate not in by_name:
            raise CompileError(f"{host} delegates to {delegate}, but one of them was not compiled")
        abi = by_name[host]["abi"]
        seen = {_abi_key(e) for e in abi}
        for entry in by_name[delegate]["abi"]:
            if entry["type"] in ("function", "error") and _abi_key(entry) not in seen:
                abi.append(entry)
                seen.add(_abi_key(entry))


def render(artifact: dict) -> str:
    """The exact text an artifact file holds."""
    return json.dumps(artifact, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _committed_files(root: Path) -> set[str]:
    out = set()
    for d in (ARTIFACTS_DIR, TEST_ARTIFACTS_DIR):
        out |= {p.relative_to(root).as_posix() for p in (root / d).glob("*.json")}
    return out


def diff_artifacts(root: Path, artifacts: dict[str, dict]) -> list[str]:
    """Differences between ``artifacts`` (from :func:`compile_contracts`) and files on disk."""
    root = Path(root).resolve()
    diffs = []
    on_disk = _committed_files(root)
    for path, art in sorted(artifacts.items()):
        file = root / path
        if path not in on_disk:
            diffs.append(f"missing: {path} (contract {art['contractName']} has no artifact)")
        elif file.read_text(encoding="utf-8") != render(art):
            diffs.append(f"changed: {path} (differs from a fresh compile of {art['sourceName']})")
    for path in sorted(on_disk - set(artifacts)):
        diffs.append(f"extra: {path} (no such contract in {CONTRACTS_DIR}/)")
    return diffs


def check_artifacts(root: Path = REPO_ROOT) -> list[str]:
    """Compile in memory; return one line per artifact that is missing, changed or extra."""
    return diff_artifacts(root, compile_contracts(root))


def write_artifacts(root: Path, artifacts: dict[str, dict]) -> list[str]:
    """Write ``artifacts`` under root, delete stale ones; return the paths changed."""
    root = Path(root).resolve()
    changed = []
    for path, art in sorted(artifacts.items()):
        file = root / path
        text = render(art)
        if not file.exists() or file.read_text(encoding="utf-8") != text:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in sorted(_committed_files(root) - set(artifacts)):
        (root / path).unlink()
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshcompute.chain.compile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile in memory; exit 1 listing artifacts that differ from the committed ones",
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    started = time.monotonic()
    try:
        artifacts = compile_contracts(args.root)
    except CompileError as e:
        print(e, file=sys.stderr)
        return 2
    took = time.monotonic() - started
    if args.check:
        diffs = diff_artifacts(args.root, artifacts)
        for line in diffs:
            print(line)
        if diffs:
            print(
                f"{len(diffs)} artifact(s) out of date; run `python -m meshcompute.chain.compile`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(artifacts)} artifacts up to date (compiled in {took:.1f}s)")
        return 0
    changed = write_artifacts(args.root, artifacts)
    for path in changed:
        print(f"wrote {path}" if path in artifacts else f"removed {path}")
    print(f"{len(artifacts)} artifacts, {len(changed)} changed (compiled in {took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
