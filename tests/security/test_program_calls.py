"""Hostile graphs that pass the JSON checks by name but call something else once torch binds
the arguments: the loader judges the rebuilt graph (meshcompute.execution.loader.check_graph_calls)."""

from __future__ import annotations

import pytest
import torch

from meshcompute.errors import BadInput
from meshcompute.execution import oplist
from meshcompute.execution.archive import validate_program
from meshcompute.execution.loader import check_graph_calls, load_program
from meshcompute.execution.programs import export_program
from tests.execution import crafting


class _Attention(torch.nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


class _CpuFlash(torch.nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q)[0]


QUERY = torch.randn(3, 2, 16, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def attention_program() -> bytes:
    return export_program(_Attention(), (QUERY,))


def _attention_nodes(model: dict) -> list[dict]:
    return [n for n in crafting.nodes(model) if "scaled_dot_product" in n["target"]]


def test_honest_attention_program_loads_and_is_deterministic(attention_program: bytes) -> None:
    loaded = load_program(attention_program)
    with torch.no_grad():
        assert torch.equal(loaded.module(QUERY), loaded.module(QUERY))


def test_dropout_shifted_in_by_position_is_refused(attention_program: bytes) -> None:
    """No ``dropout_p`` input (so the JSON check sees the default 0), then positional
    ``is_causal=None`` and ``scale=0.9``: torch binds them to ``attn_mask`` and ``dropout_p``,
    and attention becomes random (an honest worker would then be slashed on audit)."""

    def shift(model: dict) -> None:
        (node,) = _attention_nodes(model)
        node["inputs"] = [dict(i, kind=1) for i in node["inputs"]
                          if i["name"] in ("query", "key", "value")]
        node["inputs"] += [{"name": "is_causal", "arg": {"as_none": True}, "kind": 1},
                           {"name": "scale", "arg": {"as_float": 0.9}, "kind": 1}]

    hostile = crafting.edit_model(attention_program, shift)
    validate_program(hostile)  # the by-name JSON check alone cannot see it
    with pytest.raises(BadInput, match=r"random unless dropout_p=0.0.*dropout_p=0.9"):
        load_program(hostile)


def test_private_attention_with_dropout_is_refused_by_validation() -> None:
    program = export_program(_CpuFlash(), (QUERY,))

    def with_dropout(model: dict) -> None:
        (node,) = _attention_nodes(model)
        node["inputs"] = [i for i in node["inputs"] if i["name"] != "dropout_p"]
        node["inputs"].append({"name": "dropout_p", "arg": {"as_float": 0.5}, "kind": 1})

    with pytest.raises(BadInput, match="random unless dropout_p=0.0"):
        validate_program(crafting.edit_model(program, with_dropout))
    load_program(program)  # dropout_p left at 0 is fine


def test_no_allowed_overload_writes_to_its_arguments() -> None:
    """Every (operator, overload) the allowlist lets through is functional in this torch."""
    writing = []
    for name in sorted(oplist.ATEN):
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            target = f"torch.ops.aten.{name}.{overload}"
            if oplist.check_target(target) is not None:
                continue
            schema = getattr(packet, overload)._schema
            if schema.is_mutable or any(a.alias_info is not None and a.alias_info.is_write
                                        for a in schema.arguments):
                writing.append(target)
    assert writing == []


@pytest.mark.parametrize("target", ["torch.ops.aten.add.__call__", "torch.ops.aten.add._op"])
def test_private_overload_names_are_refused(target: str) -> None:
    assert oplist.check_target(target) is not None


def test_loader_refuses_a_writing_call_in_a_rebuilt_graph(monkeypatch) -> None:
    """The schema check stands even when the name list misses an overload."""
    monkeypatch.setattr(oplist, "WRITING_OVERLOADS", frozenset())
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    values = graph.placeholder("values")
    indices = graph.placeholder("indices")
    out = graph.call_function(torch.ops.aten.max.dim_max, (x, 0),
                              {"max": values, "max_values": indices})
    graph.output(out)
    with pytest.raises(BadInput, match="writes to its arguments"):
        check_graph_calls(graph)


def test_loader_refuses_an_unlisted_python_callable() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(print, (x,)))
    with pytest.raises(BadInput, match="is not allowed"):
        check_graph_calls(graph)
