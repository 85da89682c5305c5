"""The workers' job checks on the client's side (meshcompute.execution.precheck) and the rewrite
of an ordinary ``torch.export.save`` archive (its pickled example inputs emptied, nothing
unpickled): the stripped program passes the unchanged validator and runs in the sandbox; every
other refusal is still raised, by name."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from meshcompute.errors import BadInput
from meshcompute.execution.archive import (
    example_inputs_member,
    strip_example_inputs,
    validate_program,
)
from meshcompute.execution.precheck import check_job, check_limits, prepare_program
from meshcompute.execution.programs import export_program, load_tensors, save_tensors
from meshcompute.execution.sandbox import run_job
from tests.execution import crafting

EXAMPLE = "archive/data/sample_inputs/model.pt"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _saved(model: nn.Module, args: tuple[torch.Tensor, ...], dynamic_shapes: object = None) -> bytes:
    """What a user gets from the ordinary path: torch.export.export then torch.export.save."""
    program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ordinary() -> bytes:
    """Dynamic (bounded) batch, saved the ordinary way (example inputs pickled)."""
    return _saved(_mlp(), (torch.randn(4, 8),), ({0: torch.export.Dim("batch", max=1024)},))


@pytest.fixture(scope="module")
def static() -> bytes:
    """``torch.export.export(model, args)`` with no dynamic shapes: batch fixed at 4."""
    return _saved(_mlp(), (torch.randn(4, 8),))


def _members(program: bytes) -> list[tuple[str, int]]:
    with zipfile.ZipFile(io.BytesIO(program)) as archive:
        return [(info.filename, info.file_size) for info in archive.infolist()]


def test_torch_export_save_pickles_example_inputs_and_workers_still_refuse_it(
        ordinary: bytes) -> None:
    members = dict(_members(ordinary))
    assert members[EXAMPLE] > 0
    assert example_inputs_member(ordinary) == EXAMPLE
    with zipfile.ZipFile(io.BytesIO(ordinary)) as archive:
        assert archive.read(EXAMPLE)[:1] == b"\x80" or archive.read(EXAMPLE)[:2] == b"PK"
    with pytest.raises(BadInput, match="sample_inputs/model.pt.*pickled example inputs"):
        validate_program(ordinary)


def test_strip_empties_that_member_only(ordinary: bytes) -> None:
    stripped = strip_example_inputs(ordinary)
    before, after = _members(ordinary), _members(stripped)
    assert [n for n, _ in before] == [n for n, _ in after]  # same members, same order
    assert dict(after)[EXAMPLE] == 0
    assert crafting.members(stripped) == {**crafting.members(ordinary), EXAMPLE: b""}
    assert example_inputs_member(stripped) is None
    validated = validate_program(stripped)
    assert validated.root == "archive" and validated.weights
    assert strip_example_inputs(stripped) == stripped  # nothing left to strip
    assert strip_example_inputs(export_program(_mlp(), (torch.randn(4, 8),))) \
        == export_program(_mlp(), (torch.randn(4, 8),))


def test_strip_never_unpickles(ordinary: bytes, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "ran"
    hostile = crafting.replace_member(ordinary, "sample_inputs/model.pt",
                                      crafting.code_pickle(marker))

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    prepared = prepare_program(hostile)
    assert prepared.stripped == EXAMPLE
    validate_program(prepared.program)
    assert not marker.exists()


def test_stripped_program_runs_in_the_sandbox_like_the_model(requires_sandbox: None,
                                                              ordinary: bytes) -> None:
    prepared = prepare_program(ordinary)
    assert prepared.stripped == EXAMPLE
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _mlp()(x)
    outcome = run_job(prepared.program, save_tensors([x]), threads=1, time_limit_s=120.0,
                      memory_limit_mb=1024, max_output_bytes=1 << 20)
    assert outcome.ok, outcome.reason
    (got,) = load_tensors(outcome.output, "out")
    torch.testing.assert_close(got, expected)


def test_client_and_worker_agree_on_an_unbounded_dynamic_batch(requires_sandbox: None) -> None:
    """``Dim("batch")`` without a max: whatever the workers' loader makes of it (it loads: an
    unbounded range is read as no upper bound), the client's check says the same."""
    program = prepare_program(_saved(_mlp(), (torch.randn(4, 8),),
                                     ({0: torch.export.Dim("batch")},))).program
    x = torch.randn(5, 8)
    outcome = run_job(program, save_tensors([x]), threads=1, time_limit_s=120.0,
                      memory_limit_mb=1024, max_output_bytes=1 << 20)
    assert outcome.ok, outcome.reason  # sympy's infinity is an unbounded range, not an error
    if outcome.ok:
        check_job(program, [x])
    else:
        with pytest.raises(BadInput, match=r"program failed to load .*no upper bound.*max="):
            check_job(program, [x])


def test_only_the_example_inputs_are_forgiven(ordinary: bytes, tmp_path: Path) -> None:
    def swap(model: dict) -> None:
        crafting.nodes(model)[0]["target"] = "torch.ops.aten.from_file.default"

    with pytest.raises(BadInput, match="aten::from_file is not on the allowlist"):
        prepare_program(crafting.edit_model(ordinary, swap))

    def mark(config: dict) -> None:
        next(iter(config["config"].values()))["use_pickle"] = True

    with pytest.raises(BadInput, match="stored with pickle"):
        prepare_program(crafting.edit_json(ordinary, "model_weights_config.json", mark))

    weight = crafting.replace_member(ordinary, "data/weights/weight_0",
                                     crafting.code_pickle(tmp_path / "marker"))
    with pytest.raises(BadInput, match="weight_0' is a pickle"):
        prepare_program(weight)

    files = crafting.members(ordinary)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(BadInput, match="is compressed"):
        prepare_program(buffer.getvalue())
    with pytest.raises(BadInput, match="no zip header"):
        prepare_program(b"not a zip")


def test_check_job_accepts_the_stripped_program_and_knows_its_output(ordinary: bytes) -> None:
    program = prepare_program(ordinary).program
    checked = check_job(program, [torch.randn(6, 8)])
    assert [s.name for s in checked.inputs] == ["args.0"]
    assert checked.output_bytes == 6 * 3 * 4
    assert check_job(program, save_tensors([torch.randn(2, 8)])).output_bytes == 2 * 3 * 4


@pytest.mark.parametrize(("inputs", "reason"), [
    ([torch.randn(4, 8), torch.randn(4, 8)], "program takes 1 inputs, job gives 2"),
    ([torch.randn(4, 8, dtype=torch.float64)], r"input args.0: expected float32\[.*got float64"),
    ([torch.randn(4, 7)], r"input args.0: expected float32\[.*, 8\], got float32\[4, 7\]"),
    ([torch.randn(4, 8, 1)], r"input args.0: expected float32\[.*got float32\[4, 8, 1\]"),
])
def test_check_job_names_wrong_inputs(ordinary: bytes, inputs: list[torch.Tensor],
                                      reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        check_job(prepare_program(ordinary).program, inputs)


def test_check_job_refuses_a_fixed_batch_of_another_size(static: bytes) -> None:
    program = prepare_program(static).program
    check_job(program, [torch.randn(4, 8)])
    with pytest.raises(BadInput, match=r"expected float32\[4, 8\], got float32\[3, 8\].*batch "
                                       r"dimension is fixed at 4"):
        check_job(program, [torch.randn(3, 8)])


def test_check_job_refuses_badly_named_input_files(ordinary: bytes) -> None:
    from safetensors.torch import save

    program = prepare_program(ordinary).program
    with pytest.raises(BadInput, match="inputs refused: .*args.0"):
        check_job(program, save({"x": torch.randn(4, 8)}))
    with pytest.raises(BadInput, match="inputs refused"):
        check_job(program, b"junk")


def test_check_job_refuses_the_unstripped_archive(ordinary: bytes) -> None:
    with pytest.raises(BadInput, match="pickled example inputs"):
        check_job(ordinary, [torch.randn(4, 8)])


def test_check_job_checks_the_limits(ordinary: bytes) -> None:
    program = prepare_program(ordinary).program
    x = [torch.randn(64, 8)]
    with pytest.raises(BadInput, match="memory_limit_mb"):
        check_job(program, x, memory_limit_mb=1)
    with pytest.raises(BadInput, match="time_limit_s"):
        check_job(program, x, time_limit_s=0)
    with pytest.raises(BadInput, match="device"):
        check_job(program, x, device="tpu")
    with pytest.raises(BadInput, match=r"output is 768 bytes, over the job's limit of 100"):
        check_job(program, x, max_output_bytes=100)
    with pytest.raises(BadInput, match=r"weights and the inputs alone take .* over the job's "
                                       r"memory limit of 16 MB"):
        check_job(export_program(_mlp(), (torch.randn(4, 8),)), [torch.randn(600_000, 8)],
                  memory_limit_mb=16)
    with pytest.raises(BadInput, match="shards"):
        check_limits(shards=10_001)
    check_limits(shards=3, tolerance={"kind": "exact"})
