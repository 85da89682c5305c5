"""`mesh job submit|status|result|list` and `mesh earnings` as a client and provider would run
them, against the process stack."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.mesh.devstack import FAST_PARAMS, WALLET_PASSWORD, DevStack, StackConfig
from meshcompute.mesh.models import MLP
from meshcompute.wallet import import_wallet

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


def _mesh(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshcompute.mesh.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_job_cli_round_trip(tmp_path: Path) -> None:
    config = StackConfig(workers=2, cheaters=0, verifier=False,
                         params=replace(FAST_PARAMS, min_audit_bps=0))
    with DevStack(config) as stack:
        client_dir = tmp_path / "client"
        import_wallet(client_dir / "wallet.json", stack.client_account.key, WALLET_PASSWORD,
                      scrypt_n=1024)
        env = stack._base_env() | {"MESH_DATA_DIR": str(client_dir)}
        torch.manual_seed(5)
        model = MLP(d_in=16, d_hidden=32, d_out=4, depth=2).eval()
        x = torch.randn(12, 16)
        (tmp_path / "model.pt2").write_bytes(export_program(model, (x,)))
        (tmp_path / "inputs.safetensors").write_bytes(save_tensors([x]))
        out = tmp_path / "out.safetensors"

        submitted = _mesh(env, "job", "submit", str(tmp_path / "model.pt2"),
                          "--inputs", str(tmp_path / "inputs.safetensors"), "--shards", "3",
                          "--pay", "3", "--out", str(out), "--json")
        assert submitted.returncode == 0, submitted.stderr
        result = json.loads(submitted.stdout)
        assert len(result["job_ids"]) == 3 and result["group"]
        (y,) = load_tensors(out.read_bytes(), prefix="out")
        with torch.no_grad():
            assert torch.allclose(y, model(x), rtol=3e-5, atol=3e-6)

        status = _mesh(env, "job", "status", result["group"], "--json")
        assert status.returncode == 0, status.stderr
        shards = json.loads(status.stdout)["shards"]
        assert {s["state"] for s in shards} == {"finalized"}
        # no audits in this stack (rate 0, no verifier): the client is told so, shard by shard
        assert {s["verification"] for s in shards} == {"undrawn"}

        listing = _mesh(env, "job", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert [row["name"] for row in json.loads(listing.stdout)] == [result["group"]]

        again = tmp_path / "again.safetensors"
        fetched = _mesh(env, "job", "result", result["group"], "--out", str(again))
        assert fetched.returncode == 0, fetched.stderr
        assert again.read_bytes() == out.read_bytes()
        assert "accepted undrawn (not recomputed): shards 0, 1, 2" in fetched.stderr
        assert "audited and passed: none" in fetched.stderr

        worker = stack.worker_accounts()[0].address
        earnings = _mesh(env, "earnings", worker, "--json")
        assert earnings.returncode == 0, earnings.stderr
        report = json.loads(earnings.stdout)
        paid = [row for row in report["rows"] if row["status"] == "final"]
        assert all(row["job_id"] in result["job_ids"] for row in paid)

        missing = _mesh(env, "job", "status", "f" * 64)
        assert missing.returncode == 1
        assert "no submission" in missing.stderr and "Traceback" not in missing.stderr
