"""`mesh demo` runs end to end and reconciles (it raises DemoFailed otherwise)."""

from __future__ import annotations

import io

from rich.console import Console

from meshcompute.mesh.demo import run_demo


def test_demo_reconciles(anvil) -> None:  # anvil fixture: skips/fails the same way when absent
    out = io.StringIO()
    run_demo(Console(file=out, width=120))
    assert "cheater caught" in out.getvalue()
