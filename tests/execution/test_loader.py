"""The pickle-free loader: same results as the original module; a code-carrying pickle inside a
.pt2 runs through ``torch.export.load`` but not through ours (checked in child processes, so
the payload and the pickle ban never touch the test process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from meshcompute.errors import BadInput
from meshcompute.execution.loader import load_program
from meshcompute.mesh.models import FAMILIES, build_model, example_inputs
from tests.execution import crafting

REPO = Path(__file__).resolve().parents[2]


def _pickled_weight_archive(program: bytes, marker: Path) -> bytes:
    """A well-formed .pt2 whose first weight is a code-carrying pickle marked use_pickle."""

    def mark(config: dict) -> None:
        config["config"]["net.0.weight"]["use_pickle"] = True

    with_flag = crafting.edit_json(program, "model_weights_config.json", mark)
    return crafting.replace_member(with_flag, "data/weights/weight_0", crafting.code_pickle(marker))


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_program_matches_module(programs: dict[str, bytes], family: str) -> None:
    loaded = load_program(programs[family])
    assert [spec.name for spec in loaded.inputs] == ["args.0"]
    inputs = example_inputs(family, 5, seed=11)  # another batch size than the export's
    with torch.no_grad():
        expected = build_model(family)(*inputs)
        actual = loaded.module(*inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


class _ScaledFlat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).view(24)  # a view: legal for the layout the exporter saw


def test_a_view_recorded_for_one_memory_layout_runs_on_another() -> None:
    # a kernel on another device may lay its output out otherwise (CUDA's attention does, where
    # the transformer family's views then failed); a transposed input plays that kernel here
    from meshcompute.execution.programs import export_program

    x = torch.randn(6, 4).t()  # shape (4, 6), strides (1, 4): no view to (24,) exists
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        _ScaledFlat()(x)
    program = export_program(_ScaledFlat(), (torch.randn(4, 6),), dynamic_batch=False)
    torch.testing.assert_close(load_program(program).module(x), (x * 2).reshape(24),
                               rtol=0, atol=0)


def test_input_spec_describes_dynamic_batch(mlp_program: bytes) -> None:
    (spec,) = load_program(mlp_program).inputs
    assert spec.describe() == "float32[1..1048576, 256]"
    assert spec.mismatch(torch.zeros(3, 256)) is None
    assert "got float32[3, 255]" in (spec.mismatch(torch.zeros(3, 255)) or "")
    assert "got float64[3, 256]" in (spec.mismatch(torch.zeros(3, 256, dtype=torch.float64)) or "")


def test_torch_export_load_runs_the_payload(mlp_program: bytes, tmp_path: Path) -> None:
    """Control: the crafted archive really carries live code for torch's own loader."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_pickled_weight_archive(mlp_program, marker))
    _python(f"import torch; torch.export.load({str(path)!r})")
    assert marker.exists()


def test_load_program_never_runs_the_payload(mlp_program: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_pickled_weight_archive(mlp_program, marker))
    with pytest.raises(BadInput, match="weight_0' is a pickle; pickles are never loaded"):
        load_program(path)
    assert not marker.exists()


def test_forbid_pickle_stops_torch_fallback(mlp_program: bytes, tmp_path: Path) -> None:
    """Even torch's own loader, in a process that called forbid_pickle, cannot unpickle."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_pickled_weight_archive(mlp_program, marker))
    done = _python(f"""
        import torch
        from meshcompute.execution.loader import forbid_pickle, PickleRefused
        forbid_pickle()
        try:
            torch.export.load({str(path)!r})
        except PickleRefused as exc:
            print("refused:", exc)
    """)
    assert "refused: unpickling is disabled" in done.stdout, done.stderr[-2000:]
    assert not marker.exists()
