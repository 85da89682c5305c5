"""mesh.adversary: the test-only cheating output policy, refused outside the dev chain."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from meshcompute.errors import ConfigError
from meshcompute.mesh.adversary import Adversary, adversary_from_env, safetensors_header
from meshcompute.worker.policy import HONEST


def test_only_on_dev_chain_and_only_when_asked():
    assert adversary_from_env(31337, {}) is None
    assert adversary_from_env(1, {}) is None
    with pytest.raises(ConfigError, match="only on the development chain 31337"):
        adversary_from_env(11155111, {"MESH_TEST_CHEAT_FRACTION": "0.5"})
    adversary = adversary_from_env(31337, {"MESH_TEST_CHEAT_FRACTION": "0.25",
                                           "MESH_TEST_CHEAT_SEED": "3"})
    assert adversary is not None and (adversary.fraction, adversary.seed) == (0.25, 3)
    for bad in ({"MESH_TEST_CHEAT_FRACTION": "0"}, {"MESH_TEST_CHEAT_FRACTION": "x"},
                {"MESH_TEST_CHEAT_FRACTION": "1", "MESH_TEST_CHEAT_MODE": "nap"}):
        with pytest.raises(ConfigError):
            adversary_from_env(31337, bad)


def test_cheats_on_about_the_given_fraction_deterministically():
    a, b = Adversary(0.3, seed=1), Adversary(0.3, seed=1)
    picks = [a.should_cheat(i) for i in range(2000)]
    assert picks == [b.should_cheat(i) for i in range(2000)]
    assert 0.25 < sum(picks) / len(picks) < 0.35
    assert picks != [Adversary(0.3, seed=2).should_cheat(i) for i in range(2000)]
    assert all(Adversary(1.0).should_cheat(i) for i in range(100))


def test_zeros_keep_layout_and_are_wrong():
    honest = save({"out.0": torch.randn(4, 3), "out.1": torch.arange(5)})
    adversary = Adversary(1.0)
    fake = adversary.corrupt(honest)
    assert safetensors_header(fake) == safetensors_header(honest) and fake != honest
    tensors = load(fake)
    assert torch.count_nonzero(tensors["out.0"]) == 0 and tensors["out.1"].dtype == torch.int64


def test_scaled_output_keeps_dtype_and_scales_floats():
    true = {"out.0": torch.randn(4, 3), "out.1": torch.arange(5)}
    fake = load(Adversary(1.0, mode="scale", scale=1.01).corrupt(save(true)))
    torch.testing.assert_close(fake["out.0"], true["out.0"] * 1.01)
    assert torch.equal(fake["out.1"], true["out.1"])


def test_cheap_output_only_after_seeing_the_layout():
    adversary = Adversary(1.0)
    inputs = save({"args.0": torch.ones(2, 8)})
    assert adversary.cheap_output("ab" * 32, inputs) is None
    honest = save({"out.0": torch.randn(2, 10)})
    adversary.remember("ab" * 32, inputs, honest)
    fake = adversary.cheap_output("ab" * 32, save({"args.0": torch.zeros(2, 8)}))
    assert fake is not None and safetensors_header(fake) == safetensors_header(honest)
    assert adversary.cheap_output("ab" * 32, save({"args.0": torch.ones(3, 8)})) is None
    assert adversary.cheap_output("cd" * 32, inputs) is None


def test_output_policy_hooks_cheat_only_on_chosen_jobs_and_say_so():
    events: list[tuple[str, dict]] = []

    def emit(name: str, **fields: object) -> None:
        events.append((name, fields))

    adversary = Adversary(0.5, seed=1)
    honest_job = next(i for i in range(100) if not adversary.should_cheat(i))
    cheat_job = next(i for i in range(100) if adversary.should_cheat(i))
    program, inputs = "ab" * 32, save({"args.0": torch.ones(2, 8)})
    honest = save({"out.0": torch.randn(2, 3)})
    assert adversary.before_run(cheat_job, program, inputs, emit) is None  # layout unknown
    assert adversary.after_run(honest_job, program, inputs, honest, emit) == honest
    assert events == []
    zeros = save({"out.0": torch.zeros(2, 3)})
    assert adversary.before_run(honest_job, program, inputs, emit) is None
    assert adversary.before_run(cheat_job, program, inputs, emit) == zeros
    assert adversary.after_run(cheat_job, program, inputs, honest, emit) == zeros
    assert [(name, fields["job_id"], fields["how"]) for name, fields in events] == [
        ("cheated", cheat_job, "zeros without computing"),
        ("cheated", cheat_job, "zeros of output"),
    ]
    assert (adversary.name, adversary.appeals) == ("cheater", False)
    assert (HONEST.name, HONEST.appeals) == ("honest", True)
    assert HONEST.before_run(cheat_job, program, inputs, emit) is None
    assert HONEST.after_run(cheat_job, program, inputs, honest, emit) == honest
