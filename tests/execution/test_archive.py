"""Strict .pt2 validation: the exported families pass, every hostile variant is refused by name."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from meshcompute.errors import BadInput
from meshcompute.execution import symexpr
from meshcompute.execution.archive import validate_program
from meshcompute.execution.programs import export_program
from meshcompute.mesh.models import build_model, example_inputs
from tests.execution import crafting


def test_validate_program_accepts_every_family(programs: dict[str, bytes]) -> None:
    for family, program in programs.items():
        validated = validate_program(program)
        assert validated.weights, family
        assert all(op.startswith(("torch.ops.aten.", "_operator.")) for op in validated.operators)


def test_validate_program_accepts_static_batch_and_paths(tmp_path: Path) -> None:
    program = export_program(build_model("convnet"), example_inputs("convnet", 2),
                             dynamic_batch=False)
    path = tmp_path / "any-name.v1.pt2"
    path.write_bytes(program)
    assert validate_program(path).operators == validate_program(program).operators


def test_validate_program_refuses_plain_torch_export_save() -> None:
    program = torch.export.export(build_model("mlp"), example_inputs("mlp", 4))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with pytest.raises(BadInput, match="sample_inputs/model.pt.*pickled example inputs"):
        validate_program(buffer.getvalue())


def test_validate_program_refuses_pickle_renamed_pt2(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a pickle, not a .pt2"):
        validate_program(crafting.code_pickle(tmp_path / "marker"))


def test_validate_program_refuses_truncated_file(mlp_program: bytes) -> None:
    for cut in (10, len(mlp_program) // 2, len(mlp_program) - 10):
        with pytest.raises(BadInput, match="truncated or corrupt|no zip header"):
            validate_program(mlp_program[:cut])


def test_validate_program_refuses_weight_replaced_by_pickle(mlp_program: bytes,
                                                            tmp_path: Path) -> None:
    bad = crafting.replace_member(mlp_program, "data/weights/weight_0",
                                  crafting.code_pickle(tmp_path / "marker"))
    with pytest.raises(BadInput, match="weight_0' is a pickle"):
        validate_program(bad)


def test_validate_program_refuses_use_pickle_entries(mlp_program: bytes, tmp_path: Path) -> None:
    def mark(config: dict) -> None:
        config["config"]["net.0.weight"]["use_pickle"] = True

    bad = crafting.edit_json(mlp_program, "model_weights_config.json", mark)
    with pytest.raises(BadInput, match="net.0.weight.*stored with pickle"):
        validate_program(bad)


def test_validate_program_refuses_nested_torch_save(mlp_program: bytes) -> None:
    buffer = io.BytesIO()
    torch.save(torch.zeros(512, 256), buffer)
    bad = crafting.replace_member(mlp_program, "data/weights/weight_0", buffer.getvalue())
    with pytest.raises(BadInput, match="nested zip"):
        validate_program(bad)


def test_validate_program_refuses_json_member_replaced_by_pickle(mlp_program: bytes,
                                                                 tmp_path: Path) -> None:
    bad = crafting.replace_member(mlp_program, "models/model.json",
                                  crafting.code_pickle(tmp_path / "marker"))
    with pytest.raises(BadInput, match="model.json' is not JSON"):
        validate_program(bad)


def test_validate_program_refuses_unexpected_member(mlp_program: bytes) -> None:
    files = crafting.members(mlp_program)
    files["archive/data.pkl"] = pickle.dumps({"a": 1})
    with pytest.raises(BadInput, match="unexpected member 'archive/data.pkl'"):
        validate_program(crafting.rebuild(files))


def test_validate_program_refuses_compressed_members(mlp_program: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in crafting.members(mlp_program).items():
            archive.writestr(name, data)
    with pytest.raises(BadInput, match="is compressed"):
        validate_program(buffer.getvalue())


@pytest.mark.parametrize(("target", "reason"), [
    ("torch.ops.aten.from_file.default", "aten::from_file is not on the allowlist"),
    ("torch.ops.aten._print.default", "aten::_print is not on the allowlist"),
    ("torch.ops.aten.bernoulli.default", "aten::bernoulli is not on the allowlist"),
    ("torch.ops.aten.linear.out", "out= overload"),
    ("torch.ops.higher_order.cond", "higher-order operator"),
    ("builtins.eval", "not on the allowlist"),
    ("os.system", "not on the allowlist"),
])
def test_validate_program_refuses_operators_off_the_allowlist(
    mlp_program: bytes, target: str, reason: str
) -> None:
    def swap(model: dict) -> None:
        crafting.nodes(model)[0]["target"] = target

    with pytest.raises(BadInput, match=reason):
        validate_program(crafting.edit_model(mlp_program, swap))


def test_validate_program_refuses_random_dropout(mlp_program: bytes) -> None:
    def dropout(model: dict) -> None:
        node = crafting.nodes(model)[1]  # gelu(linear) -> dropout(linear, 0.5, True)
        node["target"] = "torch.ops.aten.dropout.default"
        node["inputs"] = [node["inputs"][0],
                          {"name": "p", "arg": {"as_float": 0.5}, "kind": 1},
                          {"name": "train", "arg": {"as_bool": True}, "kind": 1}]

    with pytest.raises(BadInput, match="aten::dropout is random unless train=False"):
        validate_program(crafting.edit_model(mlp_program, dropout))


def test_validate_program_refuses_subgraph_arguments(mlp_program: bytes) -> None:
    def subgraph(model: dict) -> None:
        crafting.nodes(model)[0]["inputs"][0]["arg"] = {"as_graph": {"name": "g", "graph": {}}}

    with pytest.raises(BadInput, match="argument kind 'as_graph' is not allowed"):
        validate_program(crafting.edit_model(mlp_program, subgraph))


def test_validate_program_refuses_guard_with_code(mlp_program: bytes) -> None:
    def guard(model: dict) -> None:
        model["guards_code"] = ["L['x'].size()[1] == 256",
                                "__import__('os').system('touch /tmp/pwned') == 0"]

    with pytest.raises(BadInput, match=r"guards_code\[1\].*refused"):
        validate_program(crafting.edit_model(mlp_program, guard))


def test_validate_program_accepts_plain_guards(mlp_program: bytes) -> None:
    def guard(model: dict) -> None:
        model["guards_code"] = ["L['x'].size()[1] == 256", "2 <= L['x'].size()[0] <= 1048576"]

    validate_program(crafting.edit_model(mlp_program, guard))


def test_validate_program_refuses_symbolic_shape_with_code(programs: dict[str, bytes]) -> None:
    def shape(model: dict) -> None:
        values = model["graph_module"]["graph"]["tensor_values"]
        values["x"]["sizes"][0] = {"as_expr": {
            "expr_str": "Symbol('s77', positive=True).__class__.__base__", "hint": None}}

    with pytest.raises(BadInput, match=r"tensor_values\[x\].*symbolic shape expression.*refused"):
        validate_program(crafting.edit_model(programs["mlp"], shape))


def test_validate_program_refuses_code_in_names(mlp_program: bytes) -> None:
    def name(model: dict) -> None:
        crafting.nodes(model)[0]["name"] = "x; import os"

    with pytest.raises(BadInput, match="not a plain identifier"):
        validate_program(crafting.edit_model(mlp_program, name))


@pytest.mark.parametrize("text", [
    "Symbol('s77', positive=True, integer=True)",
    "Mul(Integer(4), Symbol('s77', positive=True, integer=True))",
    "FloorDiv(s0 + 3, 2) * s1 - Mod(s0, 8)",
    "Eq(Max(s0, 2), Min(u1, 16))",
    "s0 >= 2 and s0 <= 1048576",
    "-s3 // 4",
])
def test_check_sym_expr_accepts_grammar(text: str) -> None:
    symexpr.check_sym_expr(text, "t")


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')",
    "s0.__class__",
    "Symbol('s0').func",
    "Symbol('os')",
    "Symbol('s0', evaluate=exec)",
    "(lambda: 1)()",
    "eval('1')",
    "[s0 for s0 in ()]",
    "'s0' * 3",
    "s0[0]",
    "Integer('1')",
    "Integer(2**80)",
    "s0 ** 2",
    "1 if s0 else 2",
    "(" * 500 + "s0" + ")" * 500,
])
def test_check_sym_expr_refuses_code(text: str) -> None:
    with pytest.raises(BadInput, match="t:"):
        symexpr.check_sym_expr(text, "t")
