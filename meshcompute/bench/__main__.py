"""``python -m meshcompute.bench`` (``make bench``): run every benchmark and rewrite
BENCHMARKS.md with the machine, the date and each figure."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from meshcompute.bench.gas import run_gas_bench

TARGETS = {
    "per_job_gas_single": 200_000,
    "per_job_gas_batched_100": 60_000,
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def render(gas: dict) -> str:
    today = dt.date.today().isoformat()
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}. Date: {today}. Regenerate with `make bench`.",
        "",
        "## Gas per job (`mesh bench gas --json`, anvil 1.7.1, solc 0.8.37, cancun, optimizer 200)",
        "",
        "Full lifecycle = post + assign + commit + finalize. Steady state: the accounts already",
        "hold balances, as in a running market. Single uses `postJob`, `assignAndCommit` (one",
        "ticket, one id) and `finalize`; batched uses `postJobs`, one `assignAndCommit` ticket for",
        "all shards and `finalizeBatch`, divided by the shard count.",
        "",
        "| figure | gas | target |",
        "|---|---:|---:|",
    ]
    for key, value in gas.items():
        if isinstance(value, int):
            target = TARGETS.get(key)
            verdict = "" if target is None else f"<= {target:,} ({'met' if value <= target else 'missed'})"
            lines.append(f"| `{key}` | {value:,} | {verdict} |")
    lines += ["", "Breakdown (gas per transaction):", "", "```json",
              json.dumps({k: v for k, v in gas.items() if isinstance(v, dict)}, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> int:
    gas = run_gas_bench()
    Path("BENCHMARKS.md").write_text(render(gas))
    print(json.dumps({"gas": gas}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
