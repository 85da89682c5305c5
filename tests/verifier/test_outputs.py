"""The default tolerance policy on real torch computations, and the one tolerance adapter over
output bytes (:mod:`meshcompute.verifier.outputs`, what audits, appeals and `mesh verify` use)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from meshcompute.core.spec import DEFAULT_TOLERANCE
from meshcompute.errors import BadInput
from meshcompute.execution.programs import save_tensors
from meshcompute.mesh.bench.verify import CHEATS, run_verify_bench
from meshcompute.mesh.models import build_model, example_inputs
from meshcompute.verifier.outputs import compare_outputs, to_numpy


@pytest.fixture(scope="module")
def reduced_bench() -> dict:
    return run_verify_bench(cases=4, include_cuda=False, grief=0)


def test_default_policy_never_accuses_an_honest_recomputation(reduced_bench: dict) -> None:
    assert reduced_bench["policy"] == DEFAULT_TOLERANCE
    assert reduced_bench["model_input_cases"] == 4
    assert set(reduced_bench["families"]) == {"mlp", "mlp_large", "convnet", "transformer"}
    assert reduced_bench["honest_cases"] >= 4 * 6
    assert reduced_bench["false_positives"] == 0, reduced_bench["false_positive_examples"]
    assert reduced_bench["worst_honest"]["allclose_ratio"] < 1


def test_default_policy_catches_every_cheat_at_every_audit(reduced_bench: dict) -> None:
    assert reduced_bench["cheat_cases"] == len(CHEATS) * reduced_bench["model_input_cases"] * len(
        reduced_bench["honest_variants"])
    assert reduced_bench["cheats_detected"] == reduced_bench["cheat_cases"], (
        reduced_bench["undetected_examples"])
    assert reduced_bench["detection_rate_by_cheat"] == {cheat: 1.0 for cheat in CHEATS}
    assert reduced_bench["mildest_cheat"]["allclose_ratio"] > 1
    assert reduced_bench["margin_factor"] > 1


def test_the_rounding_floor_keeps_honest_audits_passing_and_cheats_caught(
    reduced_bench: dict,
) -> None:
    """The same audits through the floors audits apply: `exact` becomes allclose at the floor,
    which every honest variant passes with margin and every cheat still fails."""
    for name in ("policy", "exact"):
        row = reduced_bench["floored"][name]
        assert row["false_positives"] == 0
        assert row["cheats_detected"] == reduced_bench["cheat_cases"], row["missed_by_type"]
        assert row["worst_honest_tolerance_used"] < 1 / reduced_bench["stability_margin"]
        assert row["mildest_cheat_tolerance_used"] > 1
    assert "grief_cases" not in reduced_bench  # grief=0


def test_sweep_shows_the_policy_choice_matters(reduced_bench: dict) -> None:
    rows = {json.dumps(r["policy"], sort_keys=True): r for r in reduced_bench["policy_sweep"]}
    loose = rows[json.dumps({"kind": "allclose", "rtol": 0.01, "atol": 0.001}, sort_keys=True)]
    assert loose["missed_by_type"].get("float16_cast_back", 0) > 0
    exact = rows[json.dumps({"kind": "exact"}, sort_keys=True)]
    assert exact["false_positives"] > 0  # batch splits change float32 bits


def _outputs(batch: int = 6) -> torch.Tensor:
    model = build_model("mlp", 3)
    with torch.inference_mode():
        return model(*example_inputs("mlp", batch, 4))


def test_compare_outputs_on_safetensors_files() -> None:
    out = _outputs()
    reference = save_tensors([out], "out")
    assert compare_outputs(reference, save_tensors([out.clone()], "out"), DEFAULT_TOLERANCE).agree
    scaled = compare_outputs(reference, save_tensors([out * 1.01], "out"), DEFAULT_TOLERANCE)
    assert not scaled.agree and "outside" in scaled.reason
    half = compare_outputs(reference, save_tensors([out.half()], "out"), DEFAULT_TOLERANCE)
    assert not half.agree and "dtype float16 differs from expected float32" in half.reason
    two = compare_outputs(reference, save_tensors([out, out.clone()], "out"), DEFAULT_TOLERANCE)
    assert not two.agree and "count" in two.reason


def test_unreadable_worker_output_is_a_failed_audit_but_a_bad_reference_is_an_error() -> None:
    reference = save_tensors([_outputs()], "out")
    misnamed = st_save({"result": _outputs()})
    verdict = compare_outputs(reference, misnamed, DEFAULT_TOLERANCE)
    assert not verdict.agree and verdict.reason.startswith("the compared output")
    garbage = compare_outputs(reference, b"\x00" * 40, {"kind": "argmax", "min_agreement": 1.0})
    assert not garbage.agree and "not a valid safetensors file" in garbage.reason
    with pytest.raises(BadInput):
        compare_outputs(b"not safetensors", reference, DEFAULT_TOLERANCE)


def test_bfloat16_outputs_compare_by_stored_dtype() -> None:
    out = _outputs().to(torch.bfloat16)
    reference = save_tensors([out], "out")
    assert compare_outputs(reference, save_tensors([out.clone()], "out"), {"kind": "exact"}).agree
    mismatch = compare_outputs(reference, save_tensors([out.float()], "out"), DEFAULT_TOLERANCE)
    assert not mismatch.agree and "dtype float32 differs from expected bfloat16" in mismatch.reason


def test_to_numpy_widens_exactly_what_numpy_lacks() -> None:
    out = _outputs()
    assert to_numpy(out.to(torch.bfloat16)).dtype == "float32"
    assert to_numpy(out.to(torch.float8_e4m3fn)).dtype == "float32"
    assert (to_numpy(out.to(torch.bfloat16)) == out.to(torch.bfloat16).float().numpy()).all()
    assert to_numpy(torch.zeros(2, dtype=torch.complex32)).dtype == "complex64"
    assert to_numpy(out).dtype == "float32"


def test_bench_verify_cli_runs_with_a_chosen_policy() -> None:
    from meshcompute.mesh.cli.main import app

    result = CliRunner().invoke(
        app, ["bench", "verify", "--json", "--cases", "1", "--policy", "allclose:rtol=1e-3"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["policy"]["rtol"] == 1e-3 and report["model_input_cases"] == 1
