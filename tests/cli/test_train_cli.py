"""``mesh train`` refuses bad input with one line naming it, before any wallet, market or
chain is used (the run itself: tests/unit/test_rounds.py around a stand-in market, and
``mesh bench train`` on the process stack)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import assert_one_line_error


def test_train_refuses_a_missing_file_and_an_optimizer_that_is_not_json(
        run_mesh, tmp_path: Path) -> None:
    data = tmp_path / "data.safetensors"
    data.write_bytes(b"x")
    missing = run_mesh("train", str(tmp_path / "none.pt2"), "--data", str(data),
                       "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(missing, "none.pt2: no such file")
    bad = run_mesh("train", str(data), "--data", str(data), "--run-dir", str(tmp_path / "run"),
                   "--optimizer", "{adamw")
    assert_one_line_error(bad, "--optimizer: not JSON")
