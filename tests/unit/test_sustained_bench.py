"""``mesh bench sustained`` (mesh/bench/sustained.py) refuses, before it starts a stack, a run
whose first audits would near their window's end (then late verdicts, not load, would decide
what it measures)."""

from __future__ import annotations

import pytest

from meshcompute.mesh.bench.sustained import run_sustained_bench


def test_a_run_longer_than_most_of_the_audit_window_is_refused() -> None:
    with pytest.raises(ValueError, match="outlast 80 % of the 600 s audit window"):
        run_sustained_bench(windows=20, window_s=25)
