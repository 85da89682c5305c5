"""``mesh verify JOB_ID`` on anvil + the real market: it recomputes the job from the blob store
and agrees with a correct verdict (exit 0) and disagrees with a wrong one (exit 3)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meshcompute.core.spec import sha256_hex
from meshcompute.settings import get_settings
from tests.verifier import test_service_chain as chain
from tests.verifier.test_service_chain import (
    _unsandboxed,
    fail_wrongly,
    make_service,
    post_and_commit,
)

# the anvil world, the market and the job kit are the service tests' fixtures
world_module = chain.world_module
world = chain.world
market = chain.market
kit = chain.kit


@pytest.fixture
def mesh(market, monkeypatch, tmp_path):
    from meshcompute.mesh.cli.main import app

    for key, value in market.settings_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "checker"))
    get_settings.cache_clear()
    runner = CliRunner()
    extra = ["--allow-unsandboxed"] if _unsandboxed() else []

    def invoke(*args: str):
        return runner.invoke(app, [*args, *extra], catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def test_verify_agrees_with_a_correct_verdict(world, market, kit, mesh, tmp_path) -> None:
    job_id = post_and_commit(world, market, kit, kit.honest)
    service, client = make_service(world, market, world.verifier_for(job_id), tmp_path)
    assert service.poll_once().posted == [(job_id, "audit", True)]
    client.close()

    result = mesh("verify", str(job_id), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["agrees"] is True
    assert report["worker_acceptable"] is True
    (check,) = report["verdicts"]
    assert check["kind"] == "audit" and check["verdict"] is True and check["evidence_ok"]
    assert check["output_hashes"][0] == sha256_hex(kit.honest)
    assert check["verifier_outputs_vs_ours"][0]["agrees_with_ours"] is True


def test_verify_disagrees_with_a_wrong_verdict(world, market, kit, mesh) -> None:
    job_id = post_and_commit(world, market, kit, kit.honest)
    fail_wrongly(market, kit, world.verifier_for(job_id), job_id, factor=2.0)

    result = mesh("verify", str(job_id))
    assert result.exit_code == 3, result.output
    assert "DISAGREES" in result.output
    assert "failed" in result.output
    assert "agrees with ours = False" in result.output  # the faulty verifier's output
