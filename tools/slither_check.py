#!/usr/bin/env python3
"""Run slither over contracts/ through tools/solc-shim; fail on unexplained high/medium findings.

    tools/slither.sh                 # or: .venv/bin/python tools/slither_check.py
    tools/slither.sh --all           # also show informational/optimization findings
    tools/slither.sh --json out.json # also save slither's raw JSON

How: the sources under contracts/ (minus contracts/test/) are compiled in one Standard-JSON
run with the same pinned settings as meshcompute.chain.compile, fed to slither's `solc-json`
platform. crytic-compile runs a bare `solc` from PATH in that mode (it ignores --solc), so a
temp dir holding `solc -> tools/solc-shim` goes first on PATH. Findings in node_modules/ and
contracts/test/ are filtered out.

Exit status: 0 when no high/medium finding remains unexplained, 1 when some do, 2 when
slither could not run (compile error, slither missing, ...).

Accepted findings live in contracts/slither.triage.json:

    {"accepted": [
      {"check": "incorrect-equality", "where": "MeshCredit.nextFaucetTime",
       "reason": "why this is safe"}
    ]}

An entry accepts a finding when `check` equals the detector name and `where` is a substring of
the finding's description (or `id` equals slither's finding id). `reason` is required.
Entries that match nothing are reported as stale (warning only). Inline
`// slither-disable-next-line <check>` comments in the sources work as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from meshcompute.chain.compile import (
    TEST_CONTRACTS_DIR,
    solc_binary,
    source_files,
    standard_json_input,
)

TRIAGE_FILE = "contracts/slither.triage.json"
FILTER_PATHS = "node_modules/|contracts/test/"
FAILING_IMPACTS = ("High", "Medium")
IMPACT_ORDER = {"High": 0, "Medium": 1, "Low": 2, "Informational": 3, "Optimization": 4}
# What crytic-compile asks solc for by default (it needs source maps and the AST).
SLITHER_OUTPUT_SELECTION = {
    "*": {
        "*": ["abi", "metadata", "devdoc", "userdoc", "evm.bytecode", "evm.deployedBytecode"],
        "": ["ast"],
    }
}


@dataclass
class Finding:
    check: str
    impact: str
    confidence: str
    description: str
    id: str
    location: str
    accepted_reason: str | None = None

    @property
    def failing(self) -> bool:
        return self.impact in FAILING_IMPACTS and self.accepted_reason is None


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    stale_triage: list[dict] = field(default_factory=list)
    error: str | None = None
    raw: dict | None = None

    @property
    def unexplained(self) -> list[Finding]:
        return [f for f in self.findings if f.failing]


class TriageError(ValueError):
    pass


def load_triage(root: Path) -> list[dict]:
    path = root / TRIAGE_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TriageError(f"{TRIAGE_FILE}: not valid JSON: {e}") from e
    entries = data.get("accepted", []) if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TriageError(f'{TRIAGE_FILE}: expected {{"accepted": [...]}}')
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not str(e.get("reason", "")).strip():
            raise TriageError(f"{TRIAGE_FILE}: accepted[{i}] needs a non-empty 'reason'")
        if not e.get("id") and not (e.get("check") and e.get("where")):
            raise TriageError(f"{TRIAGE_FILE}: accepted[{i}] needs 'id', or 'check' and 'where'")
    return entries


def _matches(entry: dict, f: Finding) -> bool:
    if entry.get("id"):
        return entry["id"] == f.id
    return entry["check"] == f.check and entry["where"] in f.description


def run_slither(root: Path = REPO_ROOT, include_all: bool = False) -> Report:
    """Run slither over root/contracts (minus contracts/test); classify the findings."""
    root = Path(root).resolve()
    try:
        triage = load_triage(root)
    except TriageError as e:
        return Report(error=str(e))
    sources = [s for s in source_files(root) if not s.startswith(TEST_CONTRACTS_DIR + "/")]
    if not sources:
        return Report(error=f"no contracts under {root}/contracts")
    shim = solc_binary(root).resolve()

    with tempfile.TemporaryDirectory(prefix="slither-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "bin").mkdir()
        (tmpdir / "bin" / "solc").symlink_to(shim)
        input_file = tmpdir / "input.json"
        input_file.write_text(
            json.dumps(standard_json_input(root, sources, SLITHER_OUTPUT_SELECTION)),
            encoding="utf-8",
        )
        out_file = tmpdir / "slither.json"
        cmd = [
            sys.executable,
            "-m",
            "slither",
            str(input_file),
            "--compile-force-framework",
            "solc-json",
            "--solc",
            str(shim),
            "--solc-working-dir",
            str(root),
            "--filter-paths",
            FILTER_PATHS,
            "--json",
            str(out_file),
            "--fail-none",
            "--disable-color",
        ]
        if not include_all:
            cmd += ["--exclude-informational", "--exclude-optimization"]
        env = dict(os.environ, PATH=f"{tmpdir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
        raw = None
        if out_file.exists() and out_file.stat().st_size:
            raw = json.loads(out_file.read_text(encoding="utf-8"))

    if raw is None or not raw.get("success"):
        detail = (raw or {}).get("error") or ""
        return Report(
            error=f"slither failed (exit {proc.returncode}): {detail}\n"
            f"--- stderr ---\n{proc.stderr[-6000:]}",
            raw=raw,
        )

    report = Report(raw=raw)
    used: set[int] = set()
    for d in (raw.get("results") or {}).get("detectors", []):
        f = Finding(
            check=d["check"],
            impact=d["impact"],
            confidence=d["confidence"],
            description=d["description"].strip(),
            id=d.get("id", ""),
            location=d.get("first_markdown_element", ""),
        )
        for i, entry in enumerate(triage):
            if _matches(entry, f):
                f.accepted_reason = entry["reason"]
                used.add(i)
                break
        report.findings.append(f)
    report.findings.sort(key=lambda f: (IMPACT_ORDER.get(f.impact, 9), f.check, f.location))
    report.stale_triage = [e for i, e in enumerate(triage) if i not in used]
    return report


def format_report(report: Report) -> str:
    if report.error:
        return f"ERROR: {report.error}"
    lines = []
    for f in report.findings:
        tag = "ACCEPTED" if f.accepted_reason else ("FAIL" if f.failing else "note")
        lines.append(f"[{tag}] {f.impact}/{f.confidence} {f.check} at {f.location}")
        lines += ["    " + ln for ln in f.description.splitlines()]
        if f.accepted_reason:
            lines.append(f"    accepted: {f.accepted_reason}")
    for e in report.stale_triage:
        lines.append(f"[stale] {TRIAGE_FILE} entry matches no finding: {json.dumps(e)}")
    n_bad = len(report.unexplained)
    lines.append(
        f"slither: {len(report.findings)} finding(s), {n_bad} unexplained high/medium"
        + (f" -> FAIL (accept in {TRIAGE_FILE} with a reason, or fix)" if n_bad else " -> OK")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="include informational/optimization")
    parser.add_argument("--json", type=Path, help="also write slither's raw JSON here")
    parser.add_argument("--root", type=Path, default=REPO_ROOT)
    args = parser.parse_args(argv)
    try:
        import slither  # noqa: F401
    except ImportError:
        print("slither-analyzer is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    report = run_slither(args.root, include_all=args.all)
    if args.json and report.raw is not None:
        args.json.write_text(json.dumps(report.raw, indent=1) + "\n", encoding="utf-8")
    print(format_report(report))
    if report.error:
        return 2
    return 1 if report.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
