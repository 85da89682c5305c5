"""The training-verification bench on its smaller family (a real MLP trained on the digits
images): honest workers that compute differently are never accused, every cheat is caught by
a default audit (the last segment and one drawn), the audit costs at most a quarter of the
training, and every honest step passes the step-by-step judgement of an appeal."""

from __future__ import annotations

from meshcompute.mesh.bench.train_verify import CHEATS, HONEST_VARIANTS, run_train_verify_bench


def test_honest_training_passes_every_cheat_is_caught_and_the_audit_is_cheap() -> None:
    report = run_train_verify_bench(("digits_mlp",))
    assert report["honest_cases"] == len(HONEST_VARIANTS) * report["per_family"]["digits_mlp"][
        "segments"]
    assert report["false_positives"] == 0
    assert report["cheat_cases"] == len(CHEATS)
    missed = [r["cheat"] for r in report["cheats"] if not r["detected"]]
    assert missed == []
    assert report["worst_honest_tolerance_used"] < 1 < report["mildest_cheat_tolerance_used"]
    assert 0 < report["verify_cost_ratio"] <= 0.25
    # every honest step judged as an appeal judges it, from the worker's own state: none fails
    assert report["honest_steps"] == len(HONEST_VARIANTS) * report["per_family"]["digits_mlp"][
        "steps"]
    assert report["step_false_positives"] == 0
    assert report["per_family"]["digits_mlp"]["final_loss"] < report["per_family"][
        "digits_mlp"]["first_loss"] / 4  # it really trains
