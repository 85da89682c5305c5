"""A slice of the grief set of ``mesh bench verify`` (the verification game): honest workers
of chaotic programs and of tolerances below rounding are never failed, and a cheater on an
ordinary program under a tight tolerance still is. Real sandboxed runs, real Auditor."""

from __future__ import annotations

from meshcompute.mesh.bench.verify import grief_cases, run_grief_bench


def test_no_honest_worker_is_slashed_and_a_cheater_on_a_stable_program_still_is() -> None:
    wanted = {"frac_gelu/exact/onednn_sse41", "mlp/exact/onednn_sse41",
              "mlp/allclose:rtol=1e-09,atol=0/onednn_sse41"}
    cases = [c for c in grief_cases() if c.name in wanted]
    assert len(cases) == 3
    report = run_grief_bench(cases)
    assert report["grief_cases"] == 3
    assert report["honest_workers_slashed"] == 0, report["grief_rows"]
    outcomes = {row["case"]: row["outcome"] for row in report["grief_rows"]}
    assert outcomes["mlp/exact/onednn_sse41"] == "pass"
    assert outcomes["mlp/allclose:rtol=1e-09,atol=0/onednn_sse41"] == "pass"
    # the chaotic program cannot be judged: void, with the reason, never a fail
    assert outcomes["frac_gelu/exact/onednn_sse41"] in ("pass", "void")
    controls = {row["case"]: row for row in report["grief_cheat_controls"]}
    for name in ("mlp/exact/cheater", "mlp/allclose:rtol=1e-09,atol=0/cheater"):
        assert controls[name]["outcome"] == "fail", controls[name]
        assert "rounding floor" in controls[name]["reason"]
    assert controls["frac_gelu/exact/cheater"]["outcome"] in ("void", "fail")
    assert report["grief_sandboxed_processes"] <= 6


def test_the_grief_set_is_large_and_covers_every_honest_variant() -> None:
    cases = grief_cases()
    assert len(cases) >= 20
    assert {c.worker for c in cases} == {"threads_2", "threads_4", "cpu_capability_default",
                                         "onednn_sse41", "batch_split"}
    assert {c.program for c in cases} >= {"frac_gelu", "cancellation", "tie_residual", "mlp"}
    kinds = {c.tolerance["kind"] for c in cases}
    assert kinds == {"exact", "allclose", "argmax", "topk"}
