"""One-ulp perturbation of job inputs on the safetensors bytes (no torch in the function, no
pickle), and the runner's oneDNN instruction-set option the verifier's second setup uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from meshcompute.errors import BadInput
from meshcompute.execution.perturb import _BITWISE, FLOATING_DTYPES, next_up_bits, perturb_inputs
from meshcompute.execution.programs import load_tensors, save_tensors
from meshcompute.execution.sandbox import ONEDNN_ISAS, JobRunner, _job_env, build_command

_TORCH = {
    "BF16": torch.bfloat16, "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
}


@pytest.mark.parametrize("name", sorted(_BITWISE))
def test_bit_level_next_up_is_the_next_representable_value_for_every_pattern(name: str) -> None:
    bits, exp_bits, kind = _BITWISE[name]
    utype = np.uint16 if bits == 16 else np.uint8
    patterns = np.arange(1 << bits, dtype=np.int64).astype(utype)
    stepped = next_up_bits(patterns, bits, exp_bits, kind)
    signed = np.int16 if bits == 16 else np.uint8

    def values(u: np.ndarray) -> np.ndarray:
        return torch.from_numpy(u.view(signed)).view(_TORCH[name]).double().numpy()

    before, after = values(patterns), values(stepped)
    finite = np.unique(before[np.isfinite(before)])
    has_inf = bool(np.isinf(before).any())
    for x, y in zip(before, after, strict=True):
        if np.isnan(x):
            assert np.isnan(y)
        elif x == np.inf:
            assert y == np.inf
        else:
            above = finite[finite > x]
            expected = above[0] if len(above) else (np.inf if has_inf else x)
            assert y == expected, (name, x, y, expected)


def test_ieee_tensors_move_like_numpy_nextafter_and_the_rest_stays() -> None:
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 3e38])
    tensors = [x, torch.arange(4), x.double(), x.half(), torch.complex(x, -x),
               torch.tensor([True, False]), x.to(torch.bfloat16), x[:3].to(torch.float8_e4m3fn)]
    data = save_tensors(tensors)
    moved = perturb_inputs(data)
    assert len(moved) == len(data) and moved != data
    header = int.from_bytes(data[:8], "little") + 8
    assert moved[:header] == data[:header]  # header, names and offsets untouched
    out = load_tensors(moved, "args")
    for original, got in ((x, out[0]), (x.double(), out[2]), (x.half(), out[3])):
        want = np.nextafter(original.numpy(), np.inf)
        np.testing.assert_array_equal(got.numpy(), want)
    assert torch.equal(out[1], torch.arange(4))
    assert torch.equal(out[5], torch.tensor([True, False]))
    complex_want = np.nextafter(torch.view_as_real(tensors[4]).numpy(), np.inf)
    np.testing.assert_array_equal(torch.view_as_real(out[4]).numpy(), complex_want)
    assert float(out[6][2]) > 1.0 and float(out[7][2]) > 1.0
    assert perturb_inputs(data) == moved  # deterministic


def test_a_file_without_floating_tensors_comes_back_identical() -> None:
    data = save_tensors([torch.arange(6), torch.tensor([True])])
    assert perturb_inputs(data) == data
    assert {"F32", "BF16", "F8_E4M3"} <= FLOATING_DTYPES


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(BadInput):
        perturb_inputs(b"\x00" * 4)
    with pytest.raises(BadInput):
        perturb_inputs(st_save({"x": torch.zeros(2)}))  # not args.N


def test_the_runner_can_limit_onednn_to_an_older_instruction_set(tmp_path) -> None:
    env = _job_env(2, "/job", "default", "SSE41")
    assert env["ONEDNN_MAX_CPU_ISA"] == "SSE41" and env["ATEN_CPU_CAPABILITY"] == "default"
    assert "ONEDNN_MAX_CPU_ISA" not in _job_env(1, "/job")
    assert "SSE41" in ONEDNN_ISAS
    with pytest.raises(BadInput, match="onednn_max_isa"):
        JobRunner(onednn_max_isa="SSE2", scratch_root=tmp_path, allow_unsandboxed=True)


def test_the_sandbox_command_sets_the_onednn_limit(requires_sandbox: None, tmp_path) -> None:
    command = build_command(tmp_path, ["true"], onednn_max_isa="SSE41")
    at = command.index("ONEDNN_MAX_CPU_ISA")
    assert command[at - 1:at + 2] == ["--setenv", "ONEDNN_MAX_CPU_ISA", "SSE41"]
    assert "ONEDNN_MAX_CPU_ISA" not in build_command(tmp_path, ["true"])
