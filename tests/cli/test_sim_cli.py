"""`mesh sim` in text and JSON: the worker strategies' table, then the other roles' table
(griefing client, colluding operator, lazy and silent verifiers) and the line saying which
roles lose by deviating. No chain: the simulation is pure arithmetic."""

from __future__ import annotations

import json

from meshcompute.mesh.cli.sim import _roles_summary

SMALL = ("--jobs", "300", "--trials", "10", "--seed", "3")


def test_text_output_has_the_roles_table_and_summary(run_mesh) -> None:
    result = run_mesh("sim", *SMALL)
    assert result.code == 0, result.err
    out = result.out
    assert "always_cheat" in out  # the worker strategies' table is still there
    roles_at = out.index("other roles")
    assert roles_at > out.index("always_cheat")
    roles = out[roles_at:]
    for name in ("griefing_client", "colluding_operator", "lazy_verifier", "silent_verifier"):
        assert name in roles
    for column in ("per", "gain vs honest", "deterred", "note"):
        assert column in roles
    assert "audit" in roles and "job" in roles
    assert "NO" not in roles  # every role is deterred, the lazy verifier by canaries
    assert "canaries" in " ".join(roles.split())  # its note
    assert "all silent:" in roles  # the silent verifier's row: the escalated seat silent too
    last = out.strip().splitlines()[-1]
    assert last == "8 of 8 other roles lose by deviating"


def test_json_output_is_the_report(run_mesh) -> None:
    result = run_mesh("sim", *SMALL, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["jobs_per_strategy"] == 300 and report["seed"] == 3
    assert set(report["roles"]) == {"griefing_client", "colluding_operator", "lazy_verifier",
                                    "silent_verifier", "appeal_seat_spares_cheater",
                                    "appeal_seat_robs_pass", "escalating_cheater",
                                    "escalating_client"}
    assert report["role_strategies_not_losing"] == []


def test_roles_summary_wording() -> None:
    deterred = {"per": "job", "gain_vs_honest": -1.0, "deterred": True}
    every = {"roles": {"a": deterred, "b": deterred}, "role_strategies_losing": 2,
             "role_strategies": 2, "role_strategies_not_losing": []}
    assert _roles_summary(every) == "2 of 2 other roles lose by deviating"
    built = {"per": "audit", "gain_vs_honest": 3.0, "deterred": False, "mechanism_built": True}
    some = {"roles": {"a": deterred, "b": built}, "role_strategies_losing": 1,
            "role_strategies": 2, "role_strategies_not_losing": ["b"]}
    assert _roles_summary(some) == "1 of 2 other roles lose by deviating; not deterred: b"
