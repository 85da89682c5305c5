"""Hostile programs (issue 4's "bad jobs"): refused with a readable reason, and no code from
the file runs, whether the worker's own checks or the job process's checks stop them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meshcompute.errors import SandboxUnavailable
from meshcompute.execution import sandbox
from meshcompute.execution.programs import save_tensors
from meshcompute.execution.sandbox import JobOutcome, run_job
from tests.execution import crafting

LIMITS = {"time_limit_s": 120.0, "memory_limit_mb": 1024, "max_output_bytes": 1 << 20}


def _run(program: bytes, inputs: bytes) -> JobOutcome:
    return run_job(program, inputs, threads=1, **LIMITS)  # type: ignore[arg-type]


def _mlp_inputs() -> bytes:
    return save_tensors([torch.randn(3, 256)])


def _assert_failed(outcome: JobOutcome, reason: str) -> None:
    assert not outcome.ok
    assert outcome.output is None and outcome.output_sha256 is None
    assert outcome.reason is not None and reason in outcome.reason, outcome.reason


def _hostile(kind: str, program: bytes, marker: Path) -> bytes:
    payload = f"__import__('os').system('touch {marker}')"
    if kind == "pickle renamed .pt2":
        return crafting.code_pickle(marker)
    if kind == "member replaced by pickle":
        return crafting.replace_member(program, "data/weights/weight_0",
                                       crafting.code_pickle(marker))
    if kind == "use_pickle weight":
        def mark(config: dict) -> None:
            config["config"]["net.0.weight"]["use_pickle"] = True
        flagged = crafting.edit_json(program, "model_weights_config.json", mark)
        return crafting.replace_member(flagged, "data/weights/weight_0",
                                       crafting.code_pickle(marker))
    if kind == "truncated":
        return program[: len(program) // 3]
    if kind == "aten::from_file":
        def read_file(model: dict) -> None:
            node = crafting.nodes(model)[0]
            node["target"] = "torch.ops.aten.from_file.default"
            node["inputs"] = [{"name": "filename", "arg": {"as_string": "/etc/passwd"}, "kind": 1}]
        return crafting.edit_model(program, read_file)
    if kind == "guard code":
        def guard(model: dict) -> None:
            model["guards_code"] = [f"{payload} == 0"]
        return crafting.edit_model(program, guard)
    if kind == "symbolic shape code":
        def shape(model: dict) -> None:
            sizes = model["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
            sizes[0] = {"as_expr": {"expr_str": payload, "hint": None}}
        return crafting.edit_model(program, shape)
    raise AssertionError(kind)


HOSTILE = ["pickle renamed .pt2", "member replaced by pickle", "use_pickle weight", "truncated",
           "aten::from_file", "guard code", "symbolic shape code"]
LOAD_TIME_CODE = ["use_pickle weight", "aten::from_file", "guard code", "symbolic shape code"]
"""The variants whose code torch itself would run while loading or calling the program."""


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_program_is_refused(requires_sandbox: None, mlp_program: bytes, tmp_path: Path,
                                    kind: str) -> None:
    marker = tmp_path / "code-ran"
    outcome = _run(_hostile(kind, mlp_program, marker), _mlp_inputs())
    _assert_failed(outcome, "program refused")
    assert not marker.exists()


@pytest.mark.parametrize("kind", LOAD_TIME_CODE)
def test_job_process_refuses_even_without_parent_checks(
    mlp_program: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Defence in depth: with the parent's validation switched off and no sandbox (so the
    marker would be reachable), the job process's own checks still stop every payload."""
    monkeypatch.setattr(sandbox, "validate_program", lambda _data: None)
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: False)
    marker = tmp_path / "code-ran"
    outcome = run_job(_hostile(kind, mlp_program, marker), _mlp_inputs(), threads=1,
                      allow_unsandboxed=True, scratch_root=tmp_path / "jobs", **LIMITS)
    _assert_failed(outcome, "program refused")
    assert not marker.exists()


def test_no_sandbox_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                              mlp_program: bytes) -> None:
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: False)
    with pytest.raises(SandboxUnavailable, match="allow_unsandboxed=True"):
        run_job(mlp_program, _mlp_inputs(), threads=1, **LIMITS)
