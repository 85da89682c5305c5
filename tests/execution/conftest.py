"""Fixtures for the worker's job-execution tests: exported model families and the sandbox."""

from __future__ import annotations

import os

import pytest
import torch

from meshcompute.execution.programs import export_program
from meshcompute.execution.sandbox import sandbox_available
from meshcompute.mesh.models import FAMILIES, build_model, example_inputs


@pytest.fixture(scope="session")
def programs() -> dict[str, bytes]:
    """Each model family exported with a dynamic batch dimension."""
    return {f: export_program(build_model(f), example_inputs(f, 4)) for f in FAMILIES}


@pytest.fixture(scope="session")
def mlp_program(programs: dict[str, bytes]) -> bytes:
    return programs["mlp"]


@pytest.fixture
def requires_sandbox() -> None:
    """Bubblewrap must work: tests that need it fail (never skip) unless explicitly allowed."""
    if not sandbox_available():
        if os.environ.get("MESH_ALLOW_NO_SANDBOX_TESTS") == "1":
            pytest.skip("bubblewrap unavailable and MESH_ALLOW_NO_SANDBOX_TESTS=1")
        pytest.fail("bubblewrap (bwrap) is missing or not functional: run `make setup` "
                    "(installs the 'bubblewrap' package) or set MESH_ALLOW_NO_SANDBOX_TESTS=1")


def reference(family: str, batch: int, seed: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    inputs = example_inputs(family, batch, seed)
    with torch.no_grad():
        return inputs, build_model(family)(*inputs)
