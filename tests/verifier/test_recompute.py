"""The verifier's recomputation (verifier/recompute.py): with the job's client named, its
sandboxed process is kept for that client's next job of the same program, as a worker keeps
it, and never given another client's job (one process kept at most); without, every job gets
a fresh process. Real
sandboxed processes; the outputs are the model's own."""

from __future__ import annotations

from pathlib import Path

import torch

from meshcompute.core.spec import JobSpec, sha256_hex
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.mesh.models import MLP
from meshcompute.verifier.recompute import Recomputer

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20


def _job(seed: int) -> tuple[JobSpec, bytes, bytes, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = MLP(d_in=8, d_hidden=8, d_out=2, depth=2).eval()
    program = export_program(model, (torch.randn(2, 8),))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed))
    inputs = save_tensors([x])
    spec = JobSpec(program=sha256_hex(program), inputs=sha256_hex(inputs))
    return spec, program, inputs, model, x


def _output(recompute: Recomputer, seed: int, **kwargs) -> None:
    spec, program, inputs, model, x = _job(seed)
    (out,) = load_tensors(recompute(spec, program, inputs, **kwargs), "out")
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


def test_a_clients_jobs_share_a_kept_process_and_no_other_client_gets_it(
        tmp_path: Path) -> None:
    recompute = Recomputer(threads=1, scratch_root=tmp_path,
                           allow_unsandboxed=not sandbox_available(), warm=False)
    try:
        _output(recompute, 1, client=ALICE)
        runner = recompute._runner("cpu")
        kept = runner._bound
        assert kept is not None and runner.bound_clients() == {ALICE.lower()}
        _output(recompute, 2, client=ALICE)
        assert runner._bound is kept and kept.jobs_run == 2  # the same process, reused
        _output(recompute, 3, client=BOB)
        assert runner._bound is not kept  # another client's job: another process
        assert kept.jobs_run == 2
        # one kept at most: what it holds must not starve the next client's recomputation
        assert runner.bound_clients() == {BOB.lower()} and not kept.alive()
        _output(recompute, 4)  # no client named: a fresh process, kept for nobody
        assert runner.bound_clients() == {BOB.lower()}
    finally:
        recompute.close()
